"""Compiler launch configs side by side: each task compiled with each config, all judged in one batch.

Shows where a kernel template loses (on the GPU: speedup vs eager and vs torch.compile per
config) before a default is changed. Tasks are sampled ids (`d3_bench_s4`: difficulty 3, bench
sizes, seed 4). Every config is `CompilerPolicy.compile(task, config=...)`; "{}" is the default.
Prints a table (rows: tasks, columns: configs) and writes JSON. Usage:
    python -m benchmarks.compiler_variants --tasks d3_bench_s4,d3_bench_s1 \\
        [--configs '[{}, {"dot_precision": "ieee"}]'] [--backend auto] [--workers W] [--out F]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from benchmarks._output import write_json

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_CONFIGS: list[dict[str, Any]] = [
    {},
    {"dot_precision": "ieee"},
    {"BLOCK_K": 16},
    {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 8},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "num_warps": 8},
    {"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 16, "num_warps": 4},
    {"num_stages": 4},
]
_TASK_ID = re.compile(r"^d(\d+)_(tiny|bench)_s(\d+)$")


def parse_task_id(text: str) -> tuple[int, str, int]:
    """`d3_bench_s4` -> (3, "bench", 4); anything else is an error naming the id."""
    m = _TASK_ID.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"task id {text!r} is not of the form d<difficulty>_<tiny|bench>_s<seed>")
    return int(m[1]), m[2], int(m[3])


def parse_task_ids(text: str) -> list[tuple[int, str, int]]:
    """`--tasks`: comma-separated sampled task ids, at least one (see `parse_task_id`)."""
    ids = [parse_task_id(t) for t in text.split(",") if t.strip()]
    if not ids:
        raise argparse.ArgumentTypeError("--tasks names no task id")
    return ids


def sample_tasks(ids: list[tuple[int, str, int]]) -> list[Any]:
    """The sampled tasks of parsed ids (one sampler per sizes)."""
    from kernelgym.sampler import TaskSampler

    samplers: dict[str, TaskSampler] = {}
    return [samplers.setdefault(s, TaskSampler(s)).sample(d, seed) for d, s, seed in ids]


def parse_configs(text: str) -> list[dict[str, Any]]:
    try:
        configs = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--configs is not JSON: {exc}") from None
    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
        raise argparse.ArgumentTypeError("--configs must be a JSON list of objects")
    return configs


def _cell(r: dict[str, Any]) -> str:
    if r["status"] != "ok":
        return r["status"]
    if r["speedup"] is None:
        return "ok"
    vs_c = r["vs_compile"]
    return f"{r['speedup']:.2f}x" + (f" ({vs_c:.2f}c)" if vs_c is not None else "")


def main(argv: list[str] | None = None) -> int:
    from kernelgym.evaluation import Evaluator, resolve_backend
    from policies.compiler import CompileError, CompilerPolicy

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", required=True, type=parse_task_ids,
                    help="comma-separated sampled task ids, e.g. d3_bench_s4")
    ap.add_argument("--configs", type=parse_configs, default=DEFAULT_CONFIGS, help="JSON list of configs")
    ap.add_argument("--backend", choices=["auto", "interpret", "cuda"], default="auto")
    ap.add_argument("--seed", type=int, default=11, help="evaluation seed (inputs)")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "compiler_variants.json"))
    args = ap.parse_args(argv)
    backend = resolve_backend(args.backend)
    tasks = sample_tasks(args.tasks)
    policy = CompilerPolicy()
    n = len(args.configs)
    rows: list[dict[str, Any]] = []
    for task in tasks:
        for cfg in args.configs:
            rows.append({"task_id": task.id, "ops": list(task.ops), "config": cfg, "status": None, "speedup": None,
                         "vs_compile": None, "error": None})

    def judge_task(ti: int, ev: Any) -> None:
        """Every config of one task in one batch (rows ti*n .. ti*n+n-1 filled in place)."""
        task, pairs, where = tasks[ti], [], []
        for ci, cfg in enumerate(args.configs):
            try:
                pairs.append((task, policy.compile(task, config=cfg)))
                where.append(ti * n + ci)
            except CompileError as exc:   # a config that does not apply (e.g. tl.dot block < 16)
                rows[ti * n + ci].update(status="compile_error", error=str(exc))
        for i, v in zip(where, ev.evaluate_batch(pairs, backend=backend, seed=args.seed)):
            rows[i].update(status=v.status, speedup=v.speedup, vs_compile=v.speedup_vs_compile,
                           error=None if v.ok else f"{', '.join(v.reasons)}: {v.error}"[:400])

    print(f"backend {backend}; cell: speedup vs eager (vs torch.compile)")
    for ci, cfg in enumerate(args.configs):
        print(f"  c{ci} = {json.dumps(cfg)}")
    print(" | ".join(["task", "ops", *(f"c{ci}" for ci in range(n))]), flush=True)
    t0 = time.perf_counter()
    # Rows print as tasks finish, so a run cut short by a time limit still shows what it measured.
    with Evaluator(workers=args.workers) as ev, ThreadPoolExecutor(len(tasks)) as pool:
        futs = {pool.submit(judge_task, ti, ev): ti for ti in range(len(tasks))}
        for fut in as_completed(futs):
            fut.result()
            ti = futs[fut]
            print(" | ".join([tasks[ti].id, "+".join(tasks[ti].ops), *(_cell(rows[ti * n + ci]) for ci in range(n))]),
                  flush=True)
    wall = time.perf_counter() - t0
    print(f"{sum(r['status'] != 'compile_error' for r in rows)} evaluations in {wall:.1f} s")
    write_json(args.out, {"backend": backend, "wall_s": round(wall, 2), "configs": args.configs, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
