"""`kernelgym run`: the main job.

Until the policies land (issue 5), this previews the task stream the main job will work on:
it samples the tasks (the same ones the policy run will get for these arguments) and prints a
table. Asking for a policy run says clearly that it is not available yet.
"""

from __future__ import annotations

import argparse
import sys

from kernelgym.sampler import TaskSampler


def main_run(args: argparse.Namespace) -> int:
    if args.suite != "synthetic":
        print("kernelgym run: suites other than 'synthetic' need the policies (not available yet)", file=sys.stderr)
        return 2
    if args.n < 1:
        print("kernelgym run: -n must be >= 1", file=sys.stderr)
        return 2
    sizes = args.sizes or "tiny"
    sampler = TaskSampler(sizes)
    per = -(-args.n // len(args.difficulty))
    tasks = [sampler.sample(d, args.seed + i) for d in args.difficulty for i in range(per)][: args.n]
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"KernelGym tasks (sizes {sizes}, seed {args.seed})")
    for col in ("id", "difficulty", "ops", "output shapes", "MFLOP", "KB moved"):
        table.add_column(col)
    for t in tasks:
        table.add_row(t.id, str(t.difficulty), " -> ".join(t.ops), str(t.meta["output_shapes"]),
                      f"{t.meta['flops'] / 1e6:.3f}", f"{t.meta['bytes'] / 1024:.1f}")
    console = Console(width=160)
    console.print(table)
    console.print(f"{len(tasks)} tasks sampled; rejections: {dict(sampler.rejections) or 'none'}. "
                  "Policy runs (compiler / search / llm) arrive with the policies; this is a preview.")
    return 0
