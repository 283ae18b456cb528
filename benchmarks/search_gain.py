"""Search gain: the compiler policy alone vs the same policy wrapped by the test-time search.

For each sampled task (difficulties 1-3 by default): the base policy's default candidate is judged
once; the search (`policies.search.SearchPolicy`, budget in evaluations) runs on the same task and
its winner is judged once more with fresh inputs when timed, because the best of several noisy
timings overstates its speedup; both reported verdicts are single fresh evaluations.

Per difficulty: share ok for each, tasks the search rescued (base not ok, search ok), and when
timed (GPU) the median speedups, the median / geometric-mean gain (search speedup / base
speedup over tasks where both are ok) and, for each, the share of all tasks that are correct and
faster than eager and than torch.compile (KernelBench's fast_1). Under the interpreter nothing is timed: the share ok is
the figure. Prints a table and writes JSON. Usage:
    python -m benchmarks.search_gain [--difficulty 1-3] [-n 10] [--seed 0] [--sizes tiny|bench]
        [--backend auto|interpret|cuda] [--budget-evals 8] [--budget-s S] [--workers W] [--jobs J]
        [--base compiler|module:attr] [--out runs/bench/search_gain.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _geomean(xs: list[float]) -> float | None:
    return math.exp(statistics.fmean(math.log(x) for x in xs)) if xs else None


def one_task(task: Any, base: Any, search: Any, evaluator: Any, backend: str, mode: str, seed: int) -> dict:
    t0 = time.perf_counter()
    try:
        src = base.propose(task, n=1)
        bv = evaluator.evaluate(task, src[0], backend, mode, seed=seed) if src else None
        base_status = bv.status if bv is not None else "no_candidate"
    except Exception as exc:  # noqa: BLE001 - a base failure is a result here, not a crash
        bv, base_status = None, f"policy_error: {type(exc).__name__}"
    t_base = time.perf_counter() - t0
    t1 = time.perf_counter()
    result = search.search(task)
    sv = result.best_verdict
    if sv is not None and sv.speedup is not None:
        sv = evaluator.evaluate(task, result.best_source, backend, mode, seed=seed + 1)
    t_search = time.perf_counter() - t1
    best = result.log[result.best_index] if result.best_index is not None else {}
    return {"task_id": task.id, "difficulty": task.difficulty, "ops": list(task.ops),
            "base_status": base_status, "base_speedup": bv.speedup if bv is not None and bv.ok else None,
            "search_status": sv.status if sv is not None else "no_candidate",
            "search_speedup": sv.speedup if sv is not None and sv.ok else None,
            "base_vs_compile": bv.speedup_vs_compile if bv is not None and bv.ok else None,
            "search_vs_compile": sv.speedup_vs_compile if sv is not None and sv.ok else None,
            # Why a reported verdict is not ok (the JSON keeps it; the table only counts).
            "base_error": _why(bv), "search_error": _why(sv),
            "search_evaluations": result.evaluations, "search_stopped": result.stopped,
            "search_best_origin": best.get("origin"), "search_best_changes": best.get("changes"),
            "search_log": [{k: e.get(k) for k in ("origin", "changes", "status", "speedup")} for e in result.log],
            # Median ms and method (cuda_graph, or eager when the forward could not be captured).
            "base_timings": _timings(bv), "search_timings": _timings(sv),
            "base_s": round(t_base, 3), "search_s": round(t_search, 3)}


def _timings(v: Any) -> dict[str, Any] | None:
    series = {who: {"median_ms": t.get("median_ms"), "method": t.get("method")}
              for who, t in (v.timings if v is not None else {}).items() if isinstance(t, dict) and "median_ms" in t}
    return series or None


def _why(v: Any) -> str | None:
    if v is None or v.ok:
        return None
    return f"{v.status}: {', '.join(v.reasons)}: {v.error}"[:600]


def summarize(rows: list[dict]) -> dict:
    n = len(rows)
    base_ok = [r for r in rows if r["base_status"] == "ok"]
    search_ok = [r for r in rows if r["search_status"] == "ok"]
    both = [r for r in rows if r["base_speedup"] is not None and r["search_speedup"] is not None]
    gains = [r["search_speedup"] / r["base_speedup"] for r in both if r["base_speedup"] > 0]
    return {
        "tasks": n,
        "base_ok": len(base_ok), "search_ok": len(search_ok),
        "base_ok_share": len(base_ok) / n if n else None, "search_ok_share": len(search_ok) / n if n else None,
        "rescued": sum(r["base_status"] != "ok" and r["search_status"] == "ok" for r in rows),
        "lost": sum(r["base_status"] == "ok" and r["search_status"] != "ok" for r in rows),
        "timed_pairs": len(both),
        "base_median_speedup": _median([r["base_speedup"] for r in base_ok if r["base_speedup"] is not None]),
        "search_median_speedup": _median([r["search_speedup"] for r in search_ok if r["search_speedup"] is not None]),
        "median_gain": _median(gains), "geomean_gain": _geomean(gains),
        # KernelBench's fast_1 against each baseline: correct and faster, over all tasks.
        **{f"{who}_faster_than_{base}": (sum((r[f"{who}_{key}"] or 0) > 1 for r in rows) / n
                                         if any(r[f"{who}_{key}"] is not None for r in rows) else None)
           for who in ("base", "search") for base, key in (("eager", "speedup"), ("compile", "vs_compile"))},
        "mean_search_evaluations": statistics.fmean(r["search_evaluations"] for r in rows) if rows else None,
        "mean_base_s": statistics.fmean(r["base_s"] for r in rows) if rows else None,
        "mean_search_s": statistics.fmean(r["search_s"] for r in rows) if rows else None,
    }


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.0f}%" if pct else (f"{x:.2f}" if isinstance(x, float) else str(x))


def main(argv: list[str] | None = None) -> int:
    from kernelgym.evaluation import Evaluator, resolve_backend
    from kernelgym.runner import build_policy, difficulty_list, load_tasks

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--difficulty", "-d", type=difficulty_list, default=[1, 2, 3])
    ap.add_argument("-n", type=int, default=10, help="tasks per difficulty (default 10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sizes", choices=["tiny", "bench"], default=None, help="default: bench on GPU, else tiny")
    ap.add_argument("--backend", choices=["auto", "interpret", "cuda"], default="auto")
    ap.add_argument("--mode", choices=["strict", "lenient"], default="strict")
    ap.add_argument("--budget-evals", type=int, default=8)
    ap.add_argument("--budget-s", type=float, default=None)
    ap.add_argument("--base", default="compiler", help="base policy: entry-point name or module:attr")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--jobs", type=int, default=None, help="tasks in flight (default: workers)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "search_gain.json"))
    args = ap.parse_args(argv)

    backend = resolve_backend(args.backend)
    sizes = args.sizes or ("bench" if backend == "cuda" else "tiny")
    t0 = time.perf_counter()
    tasks = [t for d in args.difficulty for t in load_tasks("synthetic", [d], args.n, args.seed, sizes)]
    print(f"{len(tasks)} tasks ({sizes}) sampled in {time.perf_counter() - t0:.1f} s; backend {backend}, "
          f"budget {args.budget_evals} evaluations", flush=True)
    rows: list[dict] = []
    with Evaluator(workers=args.workers) as ev:
        base = build_policy(args.base, None, mode=args.mode)
        search = build_policy("search", args.base, mode=args.mode, backend=backend, evaluator=ev,
                              budget_evals=args.budget_evals, budget_s=args.budget_s, seed=args.seed)
        jobs = args.jobs or max(2, ev.workers)
        t1 = time.perf_counter()
        with ThreadPoolExecutor(jobs) as pool:
            futs = [pool.submit(one_task, t, base, search, ev, backend, args.mode, args.seed + 7919 * i)
                    for i, t in enumerate(tasks)]
            for i, f in enumerate(futs, 1):
                rows.append(f.result())
                r = rows[-1]
                print(f"  [{i}/{len(tasks)}] {r['task_id']:<16} base {r['base_status']:<14} "
                      f"search {r['search_status']:<14} evals {r['search_evaluations']}", flush=True)
        wall = time.perf_counter() - t1
    by_d = {str(d): summarize([r for r in rows if r["difficulty"] == d]) for d in args.difficulty}
    total = summarize(rows)
    cols = ["difficulty", "tasks", "base ok", "search ok", "rescued", "lost", "base med x", "search med x",
            "median gain", "geomean gain", "base>eager", "search>eager", "base>compile", "search>compile",
            "evals/task", "search s/task"]
    print()
    print(" | ".join(cols))
    for name, s in [*by_d.items(), ("all", total)]:
        print(" | ".join([name, str(s["tasks"]), _fmt(s["base_ok_share"], True), _fmt(s["search_ok_share"], True),
                          str(s["rescued"]), str(s["lost"]), _fmt(s["base_median_speedup"]),
                          _fmt(s["search_median_speedup"]), _fmt(s["median_gain"]), _fmt(s["geomean_gain"]),
                          *(_fmt(s[f"{w}_faster_than_{b}"], True) for b in ("eager", "compile")
                            for w in ("base", "search")),
                          _fmt(s["mean_search_evaluations"]), _fmt(s["mean_search_s"])]))
    import kernelgym

    report = {"settings": {**vars(args), "backend": backend, "sizes": sizes, "difficulty": args.difficulty},
              "versions": {"kernelgym": kernelgym.__version__}, "wall_s": round(wall, 2),
              "by_difficulty": by_d, "all": total, "tasks": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"\nwall {wall:.1f} s; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
