"""`kernelgym sample`: write sampled tasks as KernelBench-format files plus index.jsonl; with
``--pairs``, also each task's solution from a policy (default the compiler) that the evaluator
accepted, as ``solutions/<id>.py`` (a sub-directory, so the task directory stays a task suite)."""

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

    index_path = out / "index.jsonl"
    index = _read_index(index_path)   # before anything is written: a broken index stops the run
    tasks = [sampler.sample(d, seed) for d, seed in
             tqdm(planned, desc="sampling", unit="task", disable=not sys.stderr.isatty())]
    pairs = None
    if getattr(args, "pairs", False):
        from kernelgym.runner import PolicyNotFound, RunError

        try:
            pairs = _solve(tasks, args)
        except (RunError, PolicyNotFound, ValueError) as exc:   # bad --policy; --backend cuda without a GPU
            print(f"kernelgym sample: {exc}", file=sys.stderr)
            return 2
    out.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        task.write(out)
        row = {"id": task.id, "name": task.name, "dag": task.meta.get("dag"),
               "difficulty": task.difficulty, "ops": list(task.ops),
               "seed": task.seed, "sizes": sampler.sizes, "dtype": sampler.dtype, "flops": task.meta["flops"],
               "bytes": task.meta["bytes"], "file": f"{task.id}.py"}
        if pairs is not None:
            row.update(_write_solution(out, task.id, *pairs[task.id]))
        index[task.id] = row
    tmp = index_path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in index.values()))
    tmp.replace(index_path)
    msg = f"wrote {len(planned)} task(s) to {out} (rejections: {dict(sampler.rejections) or 'none'})"
    if pairs is not None:
        accepted = sum(1 for src, _ in pairs.values() if src is not None)
        msg += f"; {accepted}/{len(pairs)} solution(s) accepted by the evaluator in {out / SOLUTIONS}"
    print(msg)
    return 0


SOLUTIONS = "solutions"


def _solve(tasks: list, args: argparse.Namespace) -> dict[str, tuple[str | None, object]]:
    """Each task's solution source (None when not accepted) and its verdict, by task id."""
    from kernelgym.evaluation import Evaluator
    from kernelgym.evaluation.evaluator import resolve_backend
    from kernelgym.evaluation.protocol import MODE_STRICT
    from kernelgym.runner import build_policy, run_tasks

    backend = resolve_backend(args.backend)
    with Evaluator() as evaluator:
        # The policy is resolved at run time (entry points or MODULE:ATTR), so kernelgym does not
        # import policies/ itself.
        policy = build_policy(args.policy, "compiler", mode=MODE_STRICT, backend=backend, evaluator=evaluator,
                              seed=args.seed)
        results = run_tasks(tasks, policy, evaluator, backend, MODE_STRICT, jobs=max(2, evaluator.workers),
                            seed=args.seed)
    return {r.task.id: (r.source if r.verdict.status == "ok" else None, r.verdict) for r in results}


def _write_solution(out: Path, task_id: str, source: str | None, verdict) -> dict:
    """Write (or, when not accepted, remove a stale) solutions/<id>.py; the index fields."""
    path = out / SOLUTIONS / f"{task_id}.py"
    fields = {"solution": None, "solution_status": verdict.status, "solution_backend": verdict.backend}
    if source is None:
        path.unlink(missing_ok=True)
        fields["solution_reasons"] = list(verdict.reasons)
        fields["solution_error"] = (verdict.error or "")[:300]
        return fields
    path.parent.mkdir(exist_ok=True)
    path.write_text(source if source.endswith("\n") else source + "\n", encoding="utf-8")
    fields["solution"] = f"{SOLUTIONS}/{task_id}.py"
    return fields


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
