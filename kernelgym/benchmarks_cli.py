"""`kernelgym bench [NAME] [ARGS...]`: run a script from the repository's benchmarks/ folder."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


def available() -> list[str]:
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if not p.name.startswith("_")) if BENCH_DIR.is_dir() else []


def main_bench(args: argparse.Namespace) -> int:
    names = available()
    if not names:
        print(f"kernelgym bench: no benchmarks/ folder at {BENCH_DIR} (benchmarks live in the source checkout)",
              file=sys.stderr)
        return 2
    if args.name is None:
        print("benchmarks: " + ", ".join(names))
        return 0
    if args.name not in names:
        print(f"kernelgym bench: unknown benchmark {args.name!r}; available: {', '.join(names)}", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, str(BENCH_DIR / f"{args.name}.py"), *args.args])
