"""The `kernelgym` command: tasks, evaluation, the main job and benchmarks. See README.md."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    from kernelgym.evaluation.protocol import BACKEND_AUTO, BACKENDS, MODE_STRICT, MODES
    from kernelgym.runner import add_run_arguments, difficulty_list

    parser = argparse.ArgumentParser(prog="kernelgym", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ops", help="list the operator catalog")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument("--category", help="only ops of this category")

    p = sub.add_parser("sample", help="sample KernelBench-format tasks")
    p.add_argument("--difficulty", "-d", type=difficulty_list, default=[3],
                   help="difficulty (number of ops), a range like 1-3 or a list like 1,4 (default 3)")
    p.add_argument("-n", "--per-difficulty", dest="n", type=int, default=10,
                   help="number of tasks per difficulty (default 10); `run -n` counts in total")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--sizes", choices=["tiny", "bench"], default="tiny", help="size profile (default tiny)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    p.add_argument("--force", action="store_true", help="overwrite task files that already exist in --out")
    p.add_argument("--pairs", action="store_true",
                   help="also write a solution per task (solutions/<id>.py) when the evaluator accepts "
                        "the policy's kernel: supervised warm-up pairs")
    p.add_argument("--policy", default="compiler",
                   help="policy that writes the solutions with --pairs: a name or MODULE:ATTR (default compiler)")
    p.add_argument("--backend", choices=BACKENDS, default=BACKEND_AUTO,
                   help="backend that judges the solutions with --pairs (default auto)")

    p = sub.add_parser("eval", help="judge one candidate against a reference")
    p.add_argument("reference", help="KernelBench-format reference file")
    p.add_argument("candidate", help="candidate source file (defines ModelNew)")
    p.add_argument("--backend", choices=BACKENDS, default=BACKEND_AUTO)
    p.add_argument("--mode", choices=MODES, default=MODE_STRICT)
    p.add_argument("--trials", type=int, default=3, help="correctness trials, at least 3 (default 3)")
    p.add_argument("--seed", type=int, default=None, help="evaluation seed (default: random)")
    p.add_argument("--timeout", type=float, default=None,
                   help="wall-time limit per phase (import, construct, each trial, timing) in seconds, > 0 "
                        "(default 120)")
    p.add_argument("--json", action="store_true", help="last stdout line is the verdict as JSON")

    p = sub.add_parser("run", help="run a policy against tasks and write a report (the main job)")
    add_run_arguments(p)

    p = sub.add_parser("bench", help="run a benchmark (prints a table, writes JSON)")
    p.add_argument("name", nargs="?", default=None, help="benchmark name; omit to list them")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "ops":
        from kernelgym.ops.cli import main_ops

        return main_ops(args)
    if args.command == "sample":
        from kernelgym.sampler.cli import main_sample

        return main_sample(args)
    if args.command == "eval":
        try:
            from kernelgym.evaluation.cli import main_eval
        except KeyboardInterrupt:   # Ctrl-C while torch loads: no traceback (see main_eval)
            print("kernelgym eval: interrupted", file=sys.stderr)
            return 130
        return main_eval(args)
    if args.command == "run":
        from kernelgym.runner import main_run

        return main_run(args)
    if args.command == "bench":
        from kernelgym.benchmarks_cli import main_bench

        return main_bench(args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
