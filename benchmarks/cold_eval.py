"""Cold `kernelgym eval`: wall and CPU time of one evaluation from a fresh process, and where it goes.

    python -m benchmarks.cold_eval [--repeats 5] [--tree before=/path/to/old/checkout] [--backend interpret]
        [--reference F --candidate F] [--json out.json]

Each repeat runs ``python -m kernelgym eval REFERENCE CANDIDATE --json`` in a new process (so the
parent's imports and every worker's start-up count, as for a user's first command), once per tree,
the trees interleaved so that a busy machine slows them alike. `--tree NAME=PATH` adds a checkout
to compare with (its code on PYTHONPATH); the current checkout is `this`. Reported per tree: median
and min wall seconds, CPU seconds of the command and all its workers (user + sys; steadier than
wall on a shared machine), the verdict's own duration (the evaluation, from the Evaluator's call
to its verdict), the worker start-up phases inside it, and the rest: the parent's start (Python,
imports, reading files) and its exit. Ratios against the first tree are printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "eval_data"


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_once(tree: Path, reference: Path, candidate: Path, backend: str) -> dict:
    """One cold `kernelgym eval` with `tree`'s code: wall, CPU, the verdict's duration and phases."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cpu0, t0 = _children_cpu(), time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "kernelgym", "eval", str(reference), str(candidate), "--json",
                          "--seed", "0", "--backend", backend], capture_output=True, text=True, env=env,
                         cwd=tree, timeout=600)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if out.returncode != 0:
        raise SystemExit(f"cold_eval: kernelgym eval failed in {tree} (exit {out.returncode}):\n{out.stderr[-2000:]}")
    verdict = json.loads(out.stdout.strip().splitlines()[-1])
    phases = (verdict.get("timings") or {}).get("phases_s", {})
    starts = {k: v for k, v in phases.items() if k.endswith("_worker_start")}
    return {"wall_s": wall, "cpu_s": cpu, "status": verdict["status"], "verdict_s": verdict.get("duration_s") or 0.0,
            "worker_start_s": max(starts.values(), default=0.0), "phases": phases}


def _tree(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not (Path(path) / "kernelgym" / "__init__.py").is_file():
        raise argparse.ArgumentTypeError(f"expected NAME=PATH to a kernelgym checkout, got {text!r}")
    return name, Path(path).resolve()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tree", type=_tree, action="append", default=[],
                    help="NAME=PATH: another checkout to time the same way (e.g. before=/work/main)")
    ap.add_argument("--backend", choices=["auto", "cuda", "interpret"], default="interpret")
    ap.add_argument("--reference", type=Path, default=DATA / "ref_add.py")
    ap.add_argument("--candidate", type=Path, default=DATA / "cand_add_ok.py")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    trees = [*args.tree, ("this", ROOT)]
    runs: dict[str, list[dict]] = {name: [] for name, _ in trees}
    for i in range(args.repeats):
        for name, path in (trees if i % 2 == 0 else trees[::-1]):   # interleaved, alternating order
            runs[name].append(run_once(path, args.reference.resolve(), args.candidate.resolve(), args.backend))
    med = statistics.median
    table = Table(title=f"cold kernelgym eval ({args.backend}, {args.repeats} repeats, {os.cpu_count()} cores, "
                        f"load {os.getloadavg()[0]:.1f})")
    for col in ("tree", "status", "wall s (median)", "wall s (min)", "CPU s", "verdict s", "worker start s",
                "parent start+exit s"):
        table.add_column(col, justify="right")
    summary = {}
    for name, rs in runs.items():
        s = {"wall_s": med(r["wall_s"] for r in rs), "wall_min_s": min(r["wall_s"] for r in rs),
             "cpu_s": med(r["cpu_s"] for r in rs), "verdict_s": med(r["verdict_s"] for r in rs),
             "worker_start_s": med(r["worker_start_s"] for r in rs),
             "outside_s": med(r["wall_s"] - r["verdict_s"] for r in rs), "statuses": sorted({r["status"] for r in rs})}
        summary[name] = s
        table.add_row(name, ",".join(s["statuses"]), f"{s['wall_s']:.2f}", f"{s['wall_min_s']:.2f}", f"{s['cpu_s']:.2f}",
                      f"{s['verdict_s']:.2f}", f"{s['worker_start_s']:.2f}", f"{s['outside_s']:.2f}")
    console = Console()
    console.print(table)
    base = trees[0][0]
    for name in summary:
        if name != base:
            console.print(f"{name} / {base}: wall {summary[name]['wall_s'] / summary[base]['wall_s']:.2f}x, "
                          f"CPU {summary[name]['cpu_s'] / summary[base]['cpu_s']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                                               "backend": args.backend, "summary": summary, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
