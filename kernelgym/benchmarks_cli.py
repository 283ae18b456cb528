"""`kernelgym bench [NAME] [ARGS...]`: run a script of the repository's benchmarks/ package, as
``python -m benchmarks.NAME ARGS`` with the checkout on PYTHONPATH."""

from __future__ import annotations

import argparse
import os
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
    root = str(BENCH_DIR.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    return subprocess.call([sys.executable, "-m", f"benchmarks.{args.name}", *args.args], env=env)
