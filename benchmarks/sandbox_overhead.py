"""What the OS sandbox costs: the median evaluation time of the red team's legit kernels with the
candidate workers confined (``os_sandbox="require"``) and not (``"off"``).

Two evaluators with the same small pools run side by side; each round judges every legit kernel
once on each, one evaluation at a time, in alternating order (so drift in the machine's load
falls on both alike), after a warm-up round that is not counted. Every evaluation judges a copy
of the kernel that no earlier one judged (a comment line numbered into each ``@triton.jit``
body), as in training, where each action is new code: otherwise the unconfined workers, whose
Triton cache is shared, load every repeat from it while a confined worker compiles each candidate
in a cache of its own (``--reuse-code`` measures that case). Reported: the median and mean
`Verdict.duration_s` of each, the ratio of the medians, the median of each phase, and the worker
start time (a confined worker sets its rules up once, at start).

Usage: python -m benchmarks.sandbox_overhead [--backend interpret] [--rounds 6] [--reuse-code] [--json OUT]
"""

from __future__ import annotations

import argparse
import ast
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def fresh_copy(source: str, n: int) -> str:
    """`source` with a comment line ``# copy n`` first in each ``@triton.jit`` function's body:
    the kernel's cache key (its source) changes, nothing else does."""
    lines = source.splitlines(keepends=True)
    at = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and any("jit" in ast.unparse(d) for d in node.decorator_list):
            first = node.body[0]
            at.append((first.lineno - 1, " " * first.col_offset))
    for line, indent in sorted(at, reverse=True):
        lines.insert(line, f"{indent}# copy {n}\n")
    return "".join(lines)


def measure(backend: str = "interpret", rounds: int = 6, seed: int = 0, reuse_code: bool = False) -> dict[str, Any]:
    from kernelgym.evaluation import Evaluator
    from tests.redteam.manifest import cases

    legit = [c for c in cases() if c.legit]
    times: dict[str, list[float]] = {"off": [], "require": []}
    statuses: dict[str, list[str]] = {"off": [], "require": []}
    phases: dict[str, dict[str, list[float]]] = {"off": {}, "require": {}}
    copies = 0
    starts: dict[str, float] = {}
    evs: dict[str, Any] = {}
    try:
        for mode in ("off", "require"):
            t = time.perf_counter()
            evs[mode] = Evaluator(workers=1, reference_workers=1, ptx_workers=1, timeout=120, os_sandbox=mode)
            evs[mode].warm(backend)
            starts[mode] = round(time.perf_counter() - t, 2)
        for r in range(rounds + 1):
            order = ("off", "require") if r % 2 == 0 else ("require", "off")
            for c in legit:
                for mode in order:
                    copies += 1
                    source = c.source if reuse_code else fresh_copy(c.source, copies)
                    v = evs[mode].evaluate(c.task_source, source, backend, c.mode, seed=seed + r)
                    if r:   # round 0 warms caches (ptx, compiled kernels) on both
                        times[mode].append(v.duration_s)
                        statuses[mode].append(v.status)
                        for ph, sec in (v.timings.get("phases_s") or {}).items():
                            phases[mode].setdefault(ph, []).append(float(sec))
        probe = {m: evs[m].evaluate(legit[0].task_source, legit[0].source, backend, legit[0].mode, seed=seed)
                 .versions.get("os_sandbox") for m in evs}
    finally:
        for ev in evs.values():
            ev.close()
    med = {m: statistics.median(x) for m, x in times.items()}
    return {
        "backend": backend, "rounds": rounds, "kernels": [c.id for c in legit], "reuse_code": reuse_code,
        "median_s": {m: round(x, 4) for m, x in med.items()},
        "mean_s": {m: round(statistics.fmean(x), 4) for m, x in times.items()},
        "overhead": round(med["require"] / med["off"] - 1, 4),
        "statuses": {m: sorted(set(s)) for m, s in statuses.items()},
        "phase_median_s": {m: {ph: round(statistics.median(x), 4) for ph, x in p.items()} for m, p in phases.items()},
        "os_sandbox_label": probe, "warm_s": starts, "samples": {m: len(x) for m, x in times.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", default="interpret", choices=("interpret", "cuda"))
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reuse-code", action="store_true",
                   help="judge the same code every round (the unconfined workers then load it from their cache)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    rep = measure(args.backend, args.rounds, args.seed, args.reuse_code)
    if args.json:
        Path(args.json).write_text(json.dumps(rep, indent=1))
    print(json.dumps(rep, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
