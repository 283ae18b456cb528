"""Timing reproducibility: one kernel (and the eager baseline) timed in 5 separate evaluations.

Each evaluation is a full `Evaluator.evaluate` on the cuda backend with a new seed (new inputs,
a new CUDA graph); the evaluator's caches are cleared before each, so the eager (and
torch.compile) baseline is timed afresh too. Prints each run's median, and per series the spread
max/min - 1 (target <= 2 %). Several sizes can be given (comma list). Writes JSON.

`--tasks d3_bench_s2,...` does the same for sampled tasks, with the compiler policy's kernel as the
candidate. `--fresh-compile` gives every run a new pool and an empty Inductor cache
(TORCHINDUCTOR_CACHE_DIR), so torch.compile compiles and autotunes afresh each time, as on a new
machine; each run's Inductor autotuning (`timings.compile.autotune`: configs timed, config kept)
is printed, which tells whether a drifting torch.compile baseline comes from Inductor's choices.
GPU only: on a machine without CUDA it says so and exits 0. Usage:
    python -m benchmarks.timing_spread [--runs 5] [--numel 16777216,1048576] [--tasks ID,...]
        [--fresh-compile]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks._output import write_json
from benchmarks.compiler_variants import parse_task_ids, sample_tasks
from benchmarks.eval_throughput import fresh_dir_env
from kernelgym.examples import binary_candidate, relu_mul_add_reference

ROOT = Path(__file__).resolve().parents[1]


def parse_numels(text: str) -> str:
    """`--numel`: a comma list of positive element counts."""
    try:
        ok = all(int(x) > 0 for x in text.split(",")) and bool(text.strip())
    except ValueError:
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"--numel needs positive integers separated by commas, got {text!r}")
    return text


def spread(values: list[float]) -> float:
    return max(values) / min(values) - 1.0 if values and min(values) > 0 else float("nan")


def autotune_summary(compile_timing: dict[str, Any]) -> str:
    """One line per Inductor kernel that autotuned: the config it kept and its time against the others."""
    parts = []
    for rec in compile_timing.get("autotune") or []:
        times = rec.get("configs_ms") or {}
        kept = times.get(rec.get("chosen"))
        others = sorted(t for c, t in times.items() if c != rec.get("chosen"))
        parts.append(f"{rec.get('kernel', '?')}: kept {rec.get('chosen', '?')}"
                     + (f" {kept * 1e3:.2f} us" if kept is not None else "")
                     + (f", next best {others[0] * 1e3:.2f} us of {len(times)} configs" if others else ""))
    return "; ".join(parts)


def spread_runs(label: str, reference: Any, candidate: str, runs: int,
                evaluator: Callable[[], contextlib.AbstractContextManager]) -> dict | None:
    """`runs` separate evaluations of `candidate` against `reference`; the spread of their medians.

    evaluator(): a context manager giving the Evaluator of one run (the same one each time, or a
    fresh pool for --fresh-compile)."""
    series: dict[str, list[float]] = {"candidate": [], "eager": [], "compile": []}
    rows = []
    for r in range(runs):
        with evaluator() as ev:
            ev.clear_caches()  # the baseline is timed again in every evaluation
            v = ev.evaluate(reference, candidate, backend="cuda", seed=100 + r)
        if v.status != "ok":
            print(f"{label}: run {r}: verdict {v.status}: {v.error[:500]}")
            return None
        row = {"run": r, "device": v.device, "speedup": v.speedup}
        for k, xs in series.items():
            if k in v.timings:
                xs.append(v.timings[k]["median_ms"])
                row[k] = v.timings[k]
        rows.append(row)
        c = v.timings["candidate"]
        print(f"{label}: run {r}: candidate {c['median_ms'] * 1e3:9.2f} us  eager "
              f"{v.timings.get('eager', {}).get('median_ms', float('nan')) * 1e3:9.2f} us  compile "
              f"{v.timings.get('compile', {}).get('median_ms', float('nan')) * 1e3:9.2f} us  speedup {v.speedup:.3f}"
              f"  (method {c['method']}, n={c['n']}, {c.get('forwards_per_replay', '-')} per replay)")
        tuned = autotune_summary(v.timings.get("compile", {}))
        if tuned:
            print(f"    compile autotune: {tuned}")
    report = {"benchmark": "timing_spread", "device": rows[0]["device"], "label": label, "runs": rows,
              "spread": {k: spread(x) for k, x in series.items() if x}, "target": 0.02}
    print(f"{'series':<12}{'min us':>10}{'median us':>11}{'max us':>10}{'spread':>9}   ({label})")
    for k, xs in series.items():
        if xs:
            med = sorted(xs)[len(xs) // 2]
            ok = "ok" if spread(xs) <= 0.02 else "OVER 2%"
            print(f"{k:<12}{min(xs) * 1e3:>10.2f}{med * 1e3:>11.2f}{max(xs) * 1e3:>10.2f}"
                  f"{spread(xs) * 100:>8.2f}%  {ok}")
    return report


@contextlib.contextmanager
def fresh_compile_evaluator(bench: dict[str, float]) -> Iterator[Any]:
    """A new pool whose workers see an empty Inductor cache: torch.compile starts from nothing."""
    from kernelgym.evaluation import Evaluator

    with fresh_dir_env("TORCHINDUCTOR_CACHE_DIR", "inductor-"), \
            Evaluator(workers=1, reference_workers=1, bench=bench) as ev:
        yield ev


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--numel", type=parse_numels, default=None, help="elements per input, comma list (default 16M; "
                    "none with --tasks unless given)")
    ap.add_argument("--tasks", type=parse_task_ids, default=None,
                    help="sampled task ids (d3_bench_s2,...): their compiler-policy kernel and baselines")
    ap.add_argument("--fresh-compile", action="store_true",
                    help="a new pool and an empty Inductor cache for every run (torch.compile autotunes afresh)")
    ap.add_argument("--rep-ms", type=float, default=None, help="timing budget (default timing.DEFAULT_BENCH)")
    ap.add_argument("--max-reps", type=int, default=None)
    ap.add_argument("--warmup-ms", type=float, default=None, help="warm-up budget (default timing.DEFAULT_BENCH)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "timing_spread.json"))
    args = ap.parse_args(argv)

    from kernelgym.evaluation import Evaluator
    from kernelgym.evaluation.evaluator import cuda_available

    if not cuda_available():
        print("timing_spread needs a CUDA GPU (timing only happens on a GPU); nothing to do here.")
        return 0
    reports = []
    given = (("rep_ms", args.rep_ms), ("max_reps", args.max_reps), ("warmup_ms", args.warmup_ms))
    bench = {k: v for k, v in given if v is not None}
    numels = args.numel if args.numel is not None else ("" if args.tasks else str(1 << 24))
    jobs: list[tuple[str, Any, str]] = [(f"{n} elements", relu_mul_add_reference(int(n)), binary_candidate())
                                        for n in numels.split(",") if n]
    if args.tasks:
        from policies.compiler import CompilerPolicy

        for task in sample_tasks(args.tasks):
            jobs.append((task.id, task, CompilerPolicy().propose(task, n=1)[0]))
    with contextlib.ExitStack() as stack:
        if args.fresh_compile:
            def evaluator() -> contextlib.AbstractContextManager:
                return fresh_compile_evaluator(bench)
        else:
            shared = stack.enter_context(Evaluator(workers=1, reference_workers=1, bench=bench))
            shared.warm("cuda")

            def evaluator() -> contextlib.AbstractContextManager:
                return contextlib.nullcontext(shared)
        for label, reference, candidate in jobs:
            rep = spread_runs(label, reference, candidate, args.runs, evaluator)
            if rep is None:
                return 1
            reports.append(rep)
    report = reports[0] if len(reports) == 1 else {"benchmark": "timing_spread", "sizes": reports}
    write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
