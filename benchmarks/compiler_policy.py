"""Compiler policy: share of its outputs judged ok on sampled tiny tasks, and strict-mode op coverage.

Samples `--n` tiny tasks per difficulty (default 100 at difficulties 1-3, seeds seed..seed+n-1),
compiles each with `policies.compiler.CompilerPolicy` (strict: every op in Triton) and judges all
of them under the Triton interpreter through one `Evaluator` pool in parallel
(`evaluate_batch`, one batch per difficulty, evaluation seeds derived from `--seed`). Also (unless
`--no-catalog`) compiles and judges one
single-op task per catalog op, strict, for the coverage figure. Per difficulty it prints tasks,
compiled, ok, share ok and the failures by status and first reason; then the coverage: catalog
ops seen in the sampled tasks, ops the compiler would compute in torch (its lenient fallback),
ops in failing tasks, and catalog ops whose single-op task is ok.

Exit status 1 when a difficulty's share ok is below `--target` (default 0.99) or a catalog op is
not covered in strict mode. Usage:
    python -m benchmarks.compiler_policy [--difficulties 1-3] [--n 100] [--seed 0] [--workers W]
        [--mode strict|lenient] [--target 0.99] [--no-catalog] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def single_op_task(sampler: Any, op: str, seed: int = 0) -> Any:
    """A tiny task whose graph is the one catalog op (views after a relu: they need a producer)."""
    if op in ("flatten", "merge_last"):
        return sampler.sample(2, seed, ops=["relu", op])
    return sampler.sample(1, seed, ops=[op])


def compile_all(policy: Any, tasks: list[Any]) -> tuple[list[str | None], list[str]]:
    """(source or None, error text or "") per task; a policy error is a result here, not a crash."""
    srcs: list[str | None] = []
    errors: list[str] = []
    for t in tasks:
        try:
            srcs.append(policy.compile(t))
            errors.append("")
        except Exception as exc:  # noqa: BLE001
            srcs.append(None)
            errors.append(f"{type(exc).__name__}: {exc}")
    return srcs, errors


def judge(ev: Any, tasks: list[Any], srcs: list[str | None], mode: str, seed: int) -> list[Any]:
    """Verdicts for the compiled tasks (None where the policy raised), in task order."""
    idx = [i for i, s in enumerate(srcs) if s is not None]
    verdicts = ev.evaluate_batch([(tasks[i], srcs[i]) for i in idx], "interpret", mode, "local", seed=seed)
    out: list[Any] = [None] * len(tasks)
    for i, v in zip(idx, verdicts):
        out[i] = v
    return out


def kernel_count(src: str) -> int:
    """Kernels the module launches (jit helpers such as ``_tanh`` are not kernels)."""
    return len(re.findall(r"^\s+k\d+_\w+\[grid\]\(", src, re.MULTILINE))


def row(task: Any, src: str | None, error: str, v: Any) -> dict[str, Any]:
    status = "policy_error" if v is None else v.status
    reason = error.split(":")[0] if v is None else (v.reasons[0] if v.reasons else "")
    return {"task_id": task.id, "difficulty": task.difficulty, "ops": list(task.ops), "compiled": src is not None,
            "kernels": None if src is None else kernel_count(src), "status": status, "reason": reason,
            "error": error if v is None else (v.error or "")[:500], "eval_s": None if v is None else v.duration_s}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    ok = sum(r["status"] == "ok" for r in rows)
    fails = Counter(f"{r['status']}" + (f" ({r['reason']})" if r["reason"] else "") for r in rows
                    if r["status"] != "ok")
    return {"tasks": n, "compiled": sum(r["compiled"] for r in rows), "ok": ok, "share_ok": ok / n if n else None,
            "failures": dict(fails.most_common())}


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    from kernelgym.evaluation import Evaluator
    from kernelgym.ops import CATALOG
    from kernelgym.runner import difficulty_list
    from kernelgym.sampler import TaskSampler
    from policies.compiler import TORCH_FALLBACK, CompilerPolicy

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--difficulties", "-d", type=difficulty_list, default=[1, 2, 3])
    ap.add_argument("--n", "-n", type=int, default=100, help="tasks per difficulty (default 100)")
    ap.add_argument("--seed", type=int, default=0, help="first task seed and the evaluation seed")
    ap.add_argument("--sizes", choices=["tiny", "bench"], default="tiny")
    ap.add_argument("--mode", choices=["strict", "lenient"], default="strict")
    ap.add_argument("--workers", type=int, default=None, help="candidate workers (default: CPU count)")
    ap.add_argument("--target", type=float, default=0.99, help="share ok required at every difficulty")
    ap.add_argument("--no-catalog", action="store_true", help="skip the single-op task per catalog op")
    ap.add_argument("--json", default=None, help="write results here")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error("--n must be >= 1")

    import torch
    import triton

    console = Console(width=120)
    policy = CompilerPolicy(mode=args.mode)
    sampler = TaskSampler(args.sizes)
    t0 = time.perf_counter()
    tasks = sampler.sample_many(args.difficulties, args.n, seed=args.seed, workers=min(2, os.cpu_count() or 1))
    t_sample = time.perf_counter() - t0
    t0 = time.perf_counter()
    srcs, errors = compile_all(policy, tasks)
    t_compile = time.perf_counter() - t0
    cat_ops = [] if args.no_catalog else sorted(CATALOG)
    cat_tasks = [single_op_task(sampler, op, args.seed) for op in cat_ops]
    cat_srcs, cat_errors = compile_all(policy, cat_tasks)
    print(f"{len(tasks)} tasks ({args.sizes}) sampled in {t_sample:.1f} s, compiled in {t_compile:.2f} s; "
          f"judging them and {len(cat_tasks)} single-op tasks under the interpreter", flush=True)

    t0 = time.perf_counter()
    with Evaluator(workers=args.workers, memory_limit_mb=4096, timeout=120) as ev:
        ev.warm("interpret")
        t_warm = time.perf_counter() - t0
        t1 = time.perf_counter()
        verdicts: list[Any] = []
        for d in args.difficulties:  # one batch per difficulty, for progress lines
            part = [i for i, t in enumerate(tasks) if t.difficulty == d]
            verdicts += judge(ev, [tasks[i] for i in part], [srcs[i] for i in part], args.mode, args.seed + d)
            ok = sum(v is not None and v.ok for v in verdicts[-len(part):])
            print(f"  difficulty {d}: {ok} / {len(part)} ok ({time.perf_counter() - t1:.0f} s)", flush=True)
        t_eval = time.perf_counter() - t1
        cat_verdicts = judge(ev, cat_tasks, cat_srcs, args.mode, args.seed) if cat_tasks else []
        workers = ev.workers
    rows = [row(t, s, e, v) for t, s, e, v in zip(tasks, srcs, errors, verdicts)]
    cat_rows = [{"op": op, **row(t, s, e, v)}
                for op, t, s, e, v in zip(cat_ops, cat_tasks, cat_srcs, cat_errors, cat_verdicts)]

    by_d = {d: summarize([r for r in rows if r["difficulty"] == d]) for d in args.difficulties}
    total = summarize(rows)
    table = Table(title=f"Compiler policy ({args.mode}) on sampled {args.sizes} tasks, interpreter")
    for col in ("difficulty", "tasks", "compiled", "ok", "share ok", "failures (status, first reason)"):
        table.add_column(col, justify="left" if col.startswith("failures") else "right")
    for name, s in [*by_d.items(), ("all", total)]:
        fails = ", ".join(f"{k}: {v}" for k, v in s["failures"].items()) or "-"
        table.add_row(str(name), str(s["tasks"]), str(s["compiled"]), str(s["ok"]), f"{100 * s['share_ok']:.1f}%",
                      fails)
    console.print(table)

    seen = sorted({op for t in tasks for op in t.ops})
    fallback = sorted({op for t in tasks for op in policy.unsupported(t)} | (set(TORCH_FALLBACK) & set(seen)))
    failing_ops = Counter(op for r in rows if r["status"] != "ok" for op in set(r["ops"]))
    cat_ok = sorted(r["op"] for r in cat_rows if r["status"] == "ok")
    cat_bad = {r["op"]: f"{r['status']} ({r['reason']})" for r in cat_rows if r["status"] != "ok"}
    cov = Table(title="Strict-mode op coverage")
    cov.add_column("metric")
    cov.add_column("value")
    cov.add_row("catalog ops", str(len(CATALOG)))
    cov.add_row("ops seen in the sampled tasks", str(len(seen)))
    cov.add_row("ops computed in torch (lenient fallback)", ", ".join(fallback) or "none")
    cov.add_row("ops in failing tasks (tasks)", ", ".join(f"{k} ({v})" for k, v in failing_ops.most_common()) or "none")
    if cat_rows:
        cov.add_row("single-op tasks ok", f"{len(cat_ok)} / {len(cat_rows)}")
        cov.add_row("single-op tasks not ok", ", ".join(f"{k}: {v}" for k, v in cat_bad.items()) or "none")
    console.print(cov)
    for r in rows:
        if r["status"] != "ok":
            console.print(f"  {r['task_id']}: {r['status']} {r['reason']} ops={r['ops']} {r['error'][:200]}",
                          markup=False)
    for d in args.difficulties:
        part = [r for r in rows if r["difficulty"] == d and r["kernels"] is not None]
        by_d[d]["kernels_per_task"] = sum(r["kernels"] for r in part) / max(1, len(part))
        by_d[d]["ops_per_task"] = sum(len(r["ops"]) for r in part) / max(1, len(part))
    print("kernels per task (ops per task): " + ", ".join(
        f"d{d} {s['kernels_per_task']:.2f} ({s['ops_per_task']:.2f})" for d, s in by_d.items()))
    print(f"wall: sampling {t_sample:.1f} s, compiling {t_compile:.2f} s, pool start {t_warm:.1f} s, "
          f"judging {len(tasks)} tasks {t_eval:.1f} s ({workers} candidate workers)")

    failed_target = [d for d, s in by_d.items() if s["share_ok"] < args.target]
    passed = not failed_target and not cat_bad
    if args.json:
        results = {
            "settings": {**vars(args), "difficulties": args.difficulties},
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                        "triton": triton.__version__, "platform": platform.platform()},
            "by_difficulty": {str(d): s for d, s in by_d.items()}, "all": total,
            "coverage": {"catalog": len(CATALOG), "seen": seen, "fallback": fallback,
                         "failing_ops": dict(failing_ops), "single_op_ok": cat_ok, "single_op_not_ok": cat_bad},
            "wall_s": {"sample": t_sample, "compile": t_compile, "pool_start": t_warm, "judge": t_eval},
            "target": args.target, "passed": passed, "tasks": rows, "single_op": cat_rows,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1, default=str) + "\n")
        print(f"wrote {args.json}")
    if failed_target:
        print(f"below the {100 * args.target:.0f}% target at difficulty {', '.join(map(str, failed_target))}")
    if cat_bad:
        print(f"catalog ops not covered in {args.mode} mode: {', '.join(cat_bad)}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
