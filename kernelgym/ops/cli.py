"""`kernelgym ops`: list the operator catalog."""

from __future__ import annotations

import argparse
import json
import sys

from kernelgym.ops import CATALOG, CATEGORIES, ops_in


def main_ops(args: argparse.Namespace) -> int:
    if args.category and args.category not in CATEGORIES:
        print(f"kernelgym ops: unknown --category {args.category!r}; categories are {', '.join(CATEGORIES)}",
              file=sys.stderr)
        return 2
    ops = ops_in(args.category) if args.category else list(CATALOG.values())
    if args.json:
        print(json.dumps([op.describe() for op in ops]))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"KernelGym operator catalog ({len(ops)} ops)")
    for col in ("op", "category", "arity", "params", "domain", "dtypes", "torch"):
        table.add_column(col)
    for op in ops:
        d = op.describe()
        params = " ".join(f"{k}={'|'.join(map(str, v))}" for k, v in d["params"].items())
        table.add_row(op.name, op.category, str(op.arity), params, ",".join(d["domain"]),
                      ",".join(d["dtypes"]), d["doc"])
    Console(width=200).print(table)
    return 0
