"""verl reward functions backed by the KernelGym evaluator (no verl import: plain functions).

verl's reward managers call, per sample (verl >= 0.9: always, from its reward loop's workers,
``reward.num_workers`` of them; older verl: the naive manager)::

    compute_score(data_source, solution_str, ground_truth, extra_info, **reward_kwargs)

and, in the batch manager of verl before 0.9, ``compute_score_batch(data_sources, solution_strs,
ground_truths, extra_infos, **reward_kwargs)`` (verl 0.9 has no batch manager in its reward loop). Both return, per completion, a dict with ``score`` (the scalar
reward) and every reward component (verl logs each key; every dict has the same keys):
``format, compiled, correct, speedup, speedup_vs_compile, hack`` from the verdict, the reward's
parts as ``reward/<part>``, ``speed_valid`` and ``difficulty``.

Point verl (>= 0.9) at them with ``reward.custom_reward_function.path=<this file>``,
``reward.custom_reward_function.name=compute_score`` (verl < 0.9 only: ``compute_score_batch`` with
``reward_model.reward_manager=batch reward_model.use_reward_loop=false``);
``reward.custom_reward_function.reward_kwargs`` sets the options:
backend, mode, reward (+ reward_params), cluster, timeout, trials, workers.

The default reward is the decoupled one with ``speed_min = -0.5`` (kernels more than 1.41x slower
than eager all get the same speed term): then every correct rollout scores above 0 and every
incorrect one at most 0, which lets the DRPO estimator recover correctness and speed from the
scalar score when the trainer hands it nothing else (see `train.verl.drpo.decode_scores`).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from kernelgym.evaluation import Evaluator, Verdict, default_evaluator, evaluate_batch
from kernelgym.rewards import Decoupled, Reward, get_reward, score
from kernelgym.task import Task, TaskFormatError

log = logging.getLogger(__name__)

DATA_SOURCE_PREFIX = "kernelgym"
TRAIN_REWARD_PARAMS = {"decoupled": {"speed_min": -0.5}}
# Keyword arguments verl's reward managers may add on their own; accepted and ignored.
_VERL_KWARGS = frozenset({"reward_router_address", "reward_model_tokenizer"})
_OPTIONS = frozenset({"backend", "mode", "reward", "reward_params", "cluster", "timeout", "trials", "workers",
                      "evaluator"})

_evaluators: dict[tuple, Evaluator] = {}
_lock = threading.Lock()


def _check_options(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(kwargs) - _OPTIONS - _VERL_KWARGS
    if unknown:
        raise TypeError(f"unknown KernelGym reward option(s) {sorted(unknown)}; accepted: {sorted(_OPTIONS)}")
    return {k: v for k, v in kwargs.items() if k in _OPTIONS}


def make_reward(reward: str | Reward = "decoupled", reward_params: Mapping[str, Any] | None = None) -> Reward:
    """The training reward: `reward` by name with `TRAIN_REWARD_PARAMS` overridden by `reward_params`."""
    if isinstance(reward, Reward):
        return reward
    params = {**TRAIN_REWARD_PARAMS.get(reward, {}), **dict(reward_params or {})}
    return get_reward(reward, **params)


def decodable(reward: Reward) -> bool:
    """Whether correct <=> score > 0 holds for every verdict (what DRPO's scalar fallback needs)."""
    return (isinstance(reward, Decoupled) and reward.hack_penalty >= 0
            and 1.0 + reward.speed_weight * reward.speed_min > 0 and reward.speed_weight >= 0)


def get_evaluator(workers: int | None = None, timeout: float | None = None) -> Evaluator:
    """KernelGym's default evaluator, or one per (workers, timeout) kept for the process's life."""
    if workers is None and timeout is None:
        return default_evaluator()
    key = (workers, timeout)
    with _lock:
        if key not in _evaluators or _evaluators[key].closed:
            _evaluators[key] = Evaluator(workers=workers, **({"timeout": timeout} if timeout else {}))
        return _evaluators[key]


def reference_task(ground_truth: Any, extra_info: Mapping[str, Any] | None) -> Task:
    """The reference task of one sample: `ground_truth` is its KernelBench-format source."""
    if isinstance(ground_truth, Mapping):  # some pipelines keep reward_model whole
        ground_truth = ground_truth.get("ground_truth")
    if not isinstance(ground_truth, str):
        raise TypeError(f"ground_truth must be the reference source (str), got {type(ground_truth).__name__}")
    info = dict(extra_info or {})
    task_id = info.get("task_id")
    difficulty = info.get("difficulty")
    try:
        return Task.from_source(ground_truth, id=str(task_id) if task_id else None,
                                difficulty=int(difficulty) if difficulty is not None else None)
    except TaskFormatError as exc:
        raise ValueError(f"ground_truth is not a KernelBench-format reference: {exc}") from None


def _check_source(data_source: Any) -> None:
    if not (isinstance(data_source, str) and data_source.split("/", 1)[0] == DATA_SOURCE_PREFIX):
        raise ValueError(f"data_source {data_source!r} is not a KernelGym one ('{DATA_SOURCE_PREFIX}/...'); "
                         "route other data sets to their own reward function")


_BLOCK = re.compile(r"^[ \t]*(`{3,}|~{3,})[^\n]*\n(.*?)^[ \t]*\1[ \t]*$", re.DOTALL | re.MULTILINE)


def last_candidate(text: str) -> str:
    """The last fenced block defining ModelNew (a multi-turn transcript's final attempt), else `text`."""
    blocks = [m.group(2) for m in _BLOCK.finditer(text) if re.search(r"\bclass\s+ModelNew\b", m.group(2))]
    return f"```python\n{blocks[-1]}```" if blocks else text


def verdict_score(verdict: Verdict, reward: Reward, difficulty: Any = None) -> dict[str, float]:
    """The dict verl receives: `score` plus every component, all floats, the same keys for every verdict."""
    value, comps = score(verdict, reward)
    speed_valid = reward.speed_valid(verdict) if isinstance(reward, Decoupled) else verdict.speedup is not None
    out = {"score": value, **comps, "speed_valid": float(speed_valid),
           "difficulty": float(difficulty) if difficulty is not None else -1.0}
    return out


def _candidate(solution_str: Any, extra_info: Mapping[str, Any] | None) -> str:
    if not isinstance(solution_str, str):
        raise TypeError(f"solution_str must be str, got {type(solution_str).__name__}")
    # A transcript from verl's interaction rollout holds every turn: judge the last attempt.
    if extra_info and extra_info.get("interaction_kwargs"):
        return last_candidate(solution_str)
    return solution_str


def compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info: Mapping[str, Any] | None = None,
                  **kwargs: Any) -> dict[str, float]:
    """Judge one completion with the KernelGym evaluator; verl's per-sample reward function."""
    return compute_score_batch([data_source], [solution_str], [ground_truth], [extra_info], **kwargs)[0]


def compute_score_batch(data_sources: Sequence[str], solution_strs: Sequence[str], ground_truths: Sequence[str],
                        extra_infos: Sequence[Mapping[str, Any] | None] | None = None,
                        **kwargs: Any) -> list[dict[str, float]]:
    """Judge a batch in one `evaluate_batch` call over the worker pool; verl's batch reward function.

    Options (verl's ``reward_kwargs``): backend ("auto"), mode ("strict"), reward ("decoupled") and
    reward_params, cluster ("local", passed to `evaluate_batch`), timeout, trials (3), workers
    (a pool of this size instead of KernelGym's default one), evaluator (an `Evaluator`, from Python).
    """
    opts = _check_options(kwargs)
    n = len(solution_strs)
    extra_infos = list(extra_infos) if extra_infos is not None else [None] * n
    if not (len(data_sources) == len(ground_truths) == len(extra_infos) == n):
        raise ValueError("data_sources, solution_strs, ground_truths and extra_infos must have the same length")
    reward = make_reward(opts.get("reward", "decoupled"), opts.get("reward_params"))
    evaluator = opts.get("evaluator") or get_evaluator(opts.get("workers"), opts.get("timeout"))
    pairs = []
    for src, sol, gt, info in zip(data_sources, solution_strs, ground_truths, extra_infos):
        _check_source(src)
        pairs.append((reference_task(gt, info), _candidate(sol, info)))
    verdicts = evaluate_batch(pairs, backend=opts.get("backend", "auto"), mode=opts.get("mode", "strict"),
                              cluster=opts.get("cluster", "local"), trials=opts.get("trials", 3),
                              timeout=opts.get("timeout"), evaluator=evaluator)
    return [verdict_score(v, reward, (info or {}).get("difficulty")) for v, info in zip(verdicts, extra_infos)]


__all__ = ["DATA_SOURCE_PREFIX", "TRAIN_REWARD_PARAMS", "compute_score", "compute_score_batch", "decodable",
           "get_evaluator", "last_candidate", "make_reward", "reference_task", "verdict_score"]
