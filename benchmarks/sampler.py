"""Sampler benchmark: tasks/s per difficulty, rejection rate, op-frequency chi-square, pair coverage.

    python -m benchmarks.sampler [--difficulties 1-5] [--n 200] [--uniformity-n 5000] [--workers 2]
        [--sizes tiny] [--json out.json]

Prints a table; the uniformity run samples `--uniformity-n` tasks at difficulty 3 (the issue's
statistic: chi-square p > 0.01 over 5,000 samples) and reports family-pair coverage against the
pairs z3 says can be adjacent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

from rich.console import Console
from rich.table import Table

from kernelgym.runner import difficulty_list
from kernelgym.sampler import Graph, TaskSampler
from kernelgym.sampler.stats import adjacent_families, chi_square_uniform, family_pairs, op_counts


def _rate(sampler: TaskSampler, d: int, n: int, workers: int) -> tuple[float, list[Graph]]:
    sampler.graph_sampler(d)  # build the z3 model outside the timed region (done once per process)
    start = time.perf_counter()
    if workers > 1 and hasattr(sampler, "sample_many"):
        try:
            tasks = sampler.sample_many([d], n, seed=0, workers=workers)
        except TypeError:  # sample_many without a workers argument
            tasks = sampler.sample_many([d], n, seed=0)
    else:
        tasks = [sampler.sample(d, s) for s in range(n)]
    elapsed = time.perf_counter() - start
    return n / elapsed, [t.graph for t in tasks]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--difficulties", type=difficulty_list, default=[1, 2, 3, 4, 5])
    ap.add_argument("--n", type=int, default=200, help="tasks per difficulty for the rate")
    ap.add_argument("--uniformity-n", type=int, default=5000)
    ap.add_argument("--uniformity-difficulty", type=int, default=3)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--sizes", default="tiny")
    ap.add_argument("--json", default=None, help="write results here")
    args = ap.parse_args()

    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                     "sizes": args.sizes, "workers": args.workers, "rates": {}}
    table = Table(title=f"Sampler throughput ({args.sizes}, {args.workers} worker(s), {os.cpu_count()} cores)")
    for col in ("difficulty", "tasks/s", "rejections / task", "allowed ops"):
        table.add_column(col, justify="right")
    for d in args.difficulties:
        sampler = TaskSampler(args.sizes)
        rate, _ = _rate(sampler, d, args.n, args.workers)
        rej = sum(sampler.rejections.values()) / args.n
        results["rates"][d] = {"tasks_per_s": rate, "rejections_per_task": rej,
                               "rejections": dict(sampler.rejections)}
        table.add_row(str(d), f"{rate:.1f}", f"{rej:.3f}", str(len(sampler.allowed_ops(d))))
    console = Console(width=120)
    console.print(table)

    if args.uniformity_n:
        d = args.uniformity_difficulty
        sampler = TaskSampler(args.sizes)
        _, graphs = _rate(sampler, d, args.uniformity_n, args.workers)
        counts = op_counts(graphs)
        allowed = sampler.allowed_ops(d)
        stat, p = chi_square_uniform(counts, allowed)
        adjacent = adjacent_families(args.sizes)
        seen = set(family_pairs(graphs))
        missing = sorted(adjacent - seen)
        uni = Table(title=f"Uniformity at difficulty {d} over {args.uniformity_n} tasks")
        for col in ("metric", "value"):
            uni.add_column(col)
        uni.add_row("ops allowed / seen", f"{len(allowed)} / {len(counts)}")
        uni.add_row("op count min / mean / max", f"{min(counts.get(o, 0) for o in allowed)} / "
                    f"{sum(counts.values()) / len(allowed):.1f} / {max(counts.values())}")
        uni.add_row("chi-square vs uniform (p)", f"{stat:.1f} (p = {p:.3f})")
        uni.add_row("family pairs adjacent / seen", f"{len(adjacent)} / {len(adjacent & seen)}")
        uni.add_row("rejections", str(dict(sampler.rejections)))
        console.print(uni)
        results["uniformity"] = {"difficulty": d, "n": args.uniformity_n, "chi2": stat, "p": p,
                                 "counts": dict(counts), "pairs_adjacent": len(adjacent),
                                 "pairs_seen": len(adjacent & seen), "pairs_missing": missing,
                                 "rejections": dict(sampler.rejections)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main()
