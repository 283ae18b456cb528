"""`kernelgym sample`: write sampled tasks as KernelBench-format files plus index.jsonl."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kernelgym.sampler import TaskSampler


def main_sample(args: argparse.Namespace) -> int:
    if args.n < 1:
        print("kernelgym sample: -n must be >= 1", file=sys.stderr)
        return 2
    if args.seed < 0:
        print("kernelgym sample: --seed must be >= 0", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"kernelgym sample: --out {out} exists and is not a directory", file=sys.stderr)
        return 2
    sampler = TaskSampler(args.sizes, args.dtype)
    planned = [(d, args.seed + i) for d in args.difficulty for i in range(args.n)]
    ids = [f"d{d}_{sampler.sizes}_s{seed}" for d, seed in planned]
    clashes = [i for i in ids if (out / f"{i}.py").exists()]
    if clashes and not args.force:
        print(f"kernelgym sample: {len(clashes)} task file(s) already exist in {out} (e.g. {clashes[0]}.py); "
              "use --force to overwrite", file=sys.stderr)
        return 2
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    index_path = out / "index.jsonl"
    index = _read_index(index_path)
    for d, seed in tqdm(planned, desc="sampling", unit="task", disable=not sys.stderr.isatty()):
        task = sampler.sample(d, seed)
        task.write(out)
        index[task.id] = {"id": task.id, "name": task.name, "difficulty": d, "ops": list(task.ops), "seed": seed,
                          "sizes": sampler.sizes, "dtype": sampler.dtype, "flops": task.meta["flops"],
                          "bytes": task.meta["bytes"], "file": f"{task.id}.py"}
    tmp = index_path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in index.values()))
    tmp.replace(index_path)
    print(f"wrote {len(planned)} task(s) to {out} (rejections: {dict(sampler.rejections) or 'none'})")
    return 0


def _read_index(path: Path) -> dict[str, dict]:
    """Existing index rows by id, so a second run adds to the index instead of replacing it."""
    rows: dict[str, dict] = {}
    if path.exists():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                rows[row["id"]] = row
            except (ValueError, KeyError, TypeError):
                raise SystemExit(f"kernelgym sample: {path}:{n} is not a valid index row; fix or remove it") from None
    return rows
