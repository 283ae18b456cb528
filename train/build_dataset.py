"""Training data for verl from KernelGym tasks: RL prompts (parquet), evaluation suites, warm-up SFT.

    python -m train.build_dataset --difficulties 1-5 --n 200 --out data/kg [--val-n 8]
    python -m train.build_dataset --suite path/to/kernelbench_level1 --out data/kg
    python -m train.build_dataset --difficulties 1-3 --n 50 --sft --out data/kg     # + sft_train.parquet

RL rows follow verl's RLHFDataset format: ``prompt`` (chat messages), ``data_source``
(``kernelgym/synthetic/d<D>`` or ``kernelgym/suite/<name>``, so verl's validation metrics come out per
difficulty or per suite), ``ability``, ``reward_model`` (``style``, ``ground_truth`` = the reference
source, ``task_id``) and ``extra_info`` (split, index, task_id, difficulty, seed, ops, sizes, dtype,
and ``task_json``: the task's graph and metadata, so `task_from_row` rebuilds the whole Task).
SFT rows (verl >= 0.9's SFT trainer: ``data.messages_key=messages``, as in ``sft_7b.yaml``; older
verl: ``data.prompt_key=prompt data.response_key=response`` or ``data.multiturn.messages_key=messages``) pair a prompt with a kernel that a policy wrote and the
evaluator accepted (status ok); the default policy is `policies.compiler.CompilerPolicy`.
``--hf`` also saves each split as a HF `datasets` dataset (``DIR/hf/<split>``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kernelgym.envs.prompts import build_prompt
from kernelgym.evaluation import Evaluator, evaluate_batch
from kernelgym.evaluation.protocol import BACKEND_CUDA, BACKEND_INTERPRET, BACKENDS, MODES
from kernelgym.sampler import TaskSampler
from kernelgym.task import Task, load_suite

log = logging.getLogger(__name__)

ABILITY = "triton_kernel"
VAL_SEED_OFFSET = 1_000_000  # validation seeds never collide with training seeds of any run size
INTERACTION_NAME = "kernelgym"


def parse_difficulties(text: str) -> list[int]:
    """'3' -> [3]; '1-5' -> [1..5]; '1,4' -> [1, 4] (the CLI's --difficulties)."""
    out: list[int] = []
    try:
        for part in str(text).split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if lo > hi:
                    raise ValueError
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise ValueError(f"bad difficulties {text!r}: use D, LO-HI or a comma list (e.g. 1-5, 1,4)") from None
    if not out or any(not 1 <= d <= 16 for d in out):
        raise ValueError(f"difficulties must lie in 1..16, got {text!r}")
    return sorted(dict.fromkeys(out))


def prompt_messages(task: Task, target_backend: str = "cuda", mode: str = "strict") -> list[dict[str, str]]:
    """The chat the model sees: `policies.prompts.build_messages` (what the LLM policies send, built on
    the environments' prompt) when present, else the environments' prompt as one user turn."""
    try:
        from policies.prompts import PromptOptions, build_messages
    except ImportError:
        return [{"role": "user", "content": build_prompt(task, target_backend, mode)}]
    return [dict(m) for m in build_messages(task, (), PromptOptions(backend=target_backend, mode=mode))]


def prompt_text(task: Task, target_backend: str = "cuda", mode: str = "strict") -> str:
    """The instruction alone (the last user turn of `prompt_messages`)."""
    return prompt_messages(task, target_backend, mode)[-1]["content"]


def data_source(task: Task, suite: str | None = None) -> str:
    if suite is not None:
        return f"kernelgym/suite/{suite}"
    return f"kernelgym/synthetic/d{task.difficulty}" if task.difficulty else "kernelgym/synthetic"


def task_row(task: Task, index: int, split: str, *, suite: str | None = None, target_backend: str = "cuda",
             mode: str = "strict", multi_turn: bool = False, agent_name: str | None = None) -> dict[str, Any]:
    """One verl RL row for `task` (see the module docstring for the fields)."""
    meta = task.to_dict(with_source=False)
    meta["meta"] = {k: v for k, v in meta["meta"].items() if k != "path"}
    extra: dict[str, Any] = {
        "split": split, "index": index, "task_id": task.id, "difficulty": task.difficulty, "seed": task.seed,
        "ops": list(task.ops), "sizes": task.meta.get("sizes"), "dtype": task.meta.get("dtype"), "mode": mode,
        "task_json": json.dumps(meta, sort_keys=True),
    }
    if multi_turn:
        # verl's tool agent loop passes these to KernelGymInteraction.start_interaction.
        extra["interaction_kwargs"] = {"name": INTERACTION_NAME, "ground_truth": task.source, "task_id": task.id}
    row = {
        "data_source": data_source(task, suite),
        "prompt": prompt_messages(task, target_backend, mode),
        "ability": ABILITY,
        "reward_model": {"style": "rule", "ground_truth": task.source, "task_id": task.id},
        "extra_info": extra,
    }
    if agent_name:
        row["agent_name"] = agent_name
    return row


def _plain(value: Any) -> Any:
    """numpy scalars/arrays (what parquet readers return) -> Python values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def task_from_row(row: Mapping[str, Any]) -> Task:
    """Rebuild the Task of an RL row (as written, or as read back from parquet)."""
    rm, extra = _plain(row["reward_model"]), _plain(row.get("extra_info") or {})
    data = json.loads(extra["task_json"]) if extra.get("task_json") else {"id": rm.get("task_id")}
    return Task.from_dict({**data, "source": rm["ground_truth"]})


def sampled_tasks(difficulties: Iterable[int], n: int, seed: int = 0, sizes: str = "tiny", dtype: str = "float32",
                  workers: int = 1) -> list[Task]:
    """n sampler tasks per difficulty with seeds seed..seed+n-1 (the `kernelgym sample` tasks)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return TaskSampler(sizes, dtype).sample_many(list(difficulties), n, seed, workers=workers)


def write_parquet(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write rows with pandas/pyarrow (nested prompt / reward_model / extra_info columns)."""
    import pandas as pd

    if not rows:
        raise ValueError(f"no rows to write to {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(list(rows)).to_parquet(path, index=False)
    return path


def to_hf_dataset(rows: Sequence[Mapping[str, Any]]):
    """The rows as a HF `datasets.Dataset` (needs the `datasets` package: the `train` extra)."""
    try:
        import datasets
    except ImportError as exc:
        raise ImportError("HF export needs the `datasets` package: pip install -e '.[train]'") from exc
    return datasets.Dataset.from_list([dict(r) for r in rows])


# -- warm-up SFT --------------------------------------------------------------------------------

def load_policy(spec: str = "compiler", **kwargs: Any):
    """A `policies.base.Policy`: 'compiler' (policies.compiler.CompilerPolicy) or 'module:attr'."""
    if spec == "compiler":
        try:
            from policies.compiler import CompilerPolicy  # lazy: written alongside this module
        except ImportError as exc:
            raise ImportError("policies.compiler.CompilerPolicy is not available in this checkout; pass "
                              "--policy module:attr for another policy") from exc
        return CompilerPolicy(**kwargs)
    module, sep, attr = spec.partition(":")
    if not sep:
        raise ValueError(f"policy must be 'compiler' or 'module:attr', got {spec!r}")
    obj = getattr(importlib.import_module(module), attr)
    return obj(**kwargs) if isinstance(obj, type) else obj


def solution_text(source: str) -> str:
    """An accepted kernel as the model should answer: one fenced python block."""
    return f"```python\n{source.strip()}\n```"


def sft_rows(tasks: Sequence[Task], policy: Any, *, n: int = 1, keep: int = 1, backend: str = "auto",
             mode: str = "strict", target_backend: str = "cuda", evaluator: Evaluator | None = None,
             timeout: float | None = None) -> tuple[list[dict[str, Any]], Counter]:
    """(rows, verdict statuses): up to `keep` evaluator-accepted kernels per task from `policy`.

    Each task gets `n` proposals (`policy.propose(task, n)`); all are judged in one batch and only
    distinct candidates with status ok become rows. Rows: prompt (str), response (fenced kernel),
    messages (user + assistant), data_source, extra_info (task id, difficulty, seed, speedup).
    """
    if not hasattr(policy, "propose"):
        raise TypeError(f"policy must implement propose(task, n) (policies.base.Policy), got {type(policy).__name__}")
    pairs: list[tuple[Task, str]] = []
    failed: Counter = Counter()
    for task in tasks:
        try:
            cands = policy.propose(task, n)
        except Exception as exc:  # noqa: BLE001 - e.g. the compiler has no lowering for an op: skip the task
            log.info("%s: no proposal for %s: %s: %s", getattr(policy, "name", "policy"), task.id,
                     type(exc).__name__, exc)
            failed[f"policy_error:{type(exc).__name__}"] += 1
            continue
        if not isinstance(cands, (list, tuple)) or not all(isinstance(c, str) for c in cands):
            raise TypeError(f"{type(policy).__name__}.propose must return a list of source strings")
        pairs.extend((task, c) for c in dict.fromkeys(cands))
    verdicts = evaluate_batch(pairs, backend=backend, mode=mode, evaluator=evaluator, timeout=timeout) if pairs else []
    stats: Counter = Counter(v.status for v in verdicts) + failed
    kept: Counter = Counter()
    rows: list[dict[str, Any]] = []
    for (task, cand), v in zip(pairs, verdicts):
        if not v.ok or kept[task.id] >= keep:
            continue
        kept[task.id] += 1
        messages = prompt_messages(task, target_backend, mode)
        response = solution_text(cand)
        rows.append({
            "data_source": data_source(task), "prompt": messages[-1]["content"], "response": response,
            "messages": [*messages, {"role": "assistant", "content": response}],
            "extra_info": {"task_id": task.id, "difficulty": task.difficulty, "seed": task.seed,
                           "policy": getattr(policy, "name", type(policy).__name__),
                           "speedup": v.speedup if v.speedup is not None else float("nan"), "backend": v.backend},
        })
    stats["tasks_with_solution"] = len(kept)
    return rows, stats


# -- CLI ----------------------------------------------------------------------------------------

def build(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Any] = {}
    splits: dict[str, list[dict[str, Any]]] = {}
    rl = {"target_backend": args.target_backend, "mode": args.mode, "multi_turn": args.multi_turn,
          "agent_name": args.agent}
    train_tasks: list[Task] = []
    if args.difficulties:
        diffs = parse_difficulties(args.difficulties)
        train_tasks = sampled_tasks(diffs, args.n, args.seed, args.sizes, args.dtype, args.workers)
        splits["train"] = [task_row(t, i, "train", **rl) for i, t in enumerate(train_tasks)]
        if args.val_n:
            val = sampled_tasks(diffs, args.val_n, args.seed + VAL_SEED_OFFSET, args.sizes, args.dtype, args.workers)
            splits["val"] = [task_row(t, i, "val", **rl) for i, t in enumerate(val)]
    if args.suite:
        suite = load_suite(args.suite)
        for err in suite.errors:
            log.warning("skipped: %s", err)
        if not suite.tasks:
            raise ValueError(f"no loadable tasks in {args.suite}")
        name = Path(args.suite).resolve().name
        splits[f"suite_{name}"] = [task_row(t, i, "test", suite=name, **rl) for i, t in enumerate(suite.tasks)]
        written["suite_errors"] = [str(e) for e in suite.errors]
    if args.sft:
        if not train_tasks:
            raise ValueError("--sft needs sampled tasks (--difficulties)")
        policy = load_policy(args.policy)
        rows, stats = sft_rows(train_tasks, policy, n=args.sft_candidates, keep=args.sft_keep,
                               backend=args.backend, mode=args.mode, target_backend=args.target_backend)
        written["sft_stats"] = dict(stats)
        if rows:
            splits["sft_train"] = rows
        else:
            log.warning("no accepted SFT solution among %d tasks: %s", len(train_tasks), dict(stats))
    if not splits:
        raise ValueError("nothing to build: give --difficulties and/or --suite")
    for split, rows in splits.items():
        written[split] = {"rows": len(rows), "path": str(write_parquet(rows, out / f"{split}.parquet"))}
        if args.hf:
            to_hf_dataset(rows).save_to_disk(str(out / "hf" / split))
    (out / "manifest.json").write_text(json.dumps({"args": vars(args), "written": written}, indent=1, default=str))
    return written


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.build_dataset", description=__doc__.split("\n\n")[0])
    p.add_argument("--difficulties", "-d", help="sampled tasks at these difficulties: 3, 1-5 or 1,4")
    p.add_argument("--n", "-n", type=int, default=100, help="training tasks per difficulty (seeds seed..seed+n-1)")
    p.add_argument("--val-n", type=int, default=0, help="validation tasks per difficulty (disjoint seeds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sizes", default="tiny", choices=["tiny", "bench"])
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--workers", type=int, default=1, help="sampler processes")
    p.add_argument("--suite", help="a KernelBench-format directory (an evaluation set)")
    p.add_argument("--out", "-o", required=True, help="output directory")
    p.add_argument("--mode", default="strict", choices=MODES)
    p.add_argument("--target-backend", default="cuda", choices=[BACKEND_CUDA, BACKEND_INTERPRET],
                   help="the backend named in prompts (the GPU the policy writes for)")
    p.add_argument("--multi-turn", action="store_true",
                   help="add interaction_kwargs for KernelGymInteraction (verl's multi-turn rollout)")
    p.add_argument("--agent", help="agent_name column, e.g. kernelgym_multiturn (train.verl.register)")
    p.add_argument("--sft", action="store_true", help="also write sft_train.parquet from accepted policy kernels")
    p.add_argument("--policy", default="compiler", help="SFT policy: compiler or module:attr")
    p.add_argument("--sft-candidates", type=int, default=1, help="proposals per task")
    p.add_argument("--sft-keep", type=int, default=1, help="accepted solutions kept per task")
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="SFT judging backend")
    p.add_argument("--hf", action="store_true", help="also save HF datasets under OUT/hf/<split>")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parser().parse_args(argv)
    try:
        written = build(args)
    except (ValueError, ImportError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for split, info in written.items():
        if isinstance(info, dict) and "rows" in info:
            print(f"{split}: {info['rows']} rows -> {info['path']}")
    if "sft_stats" in written:
        print("sft verdicts:", written["sft_stats"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
