"""A discrete-choice env for trainers that cannot emit text (e.g. stable-baselines3).

A candidate provider (`task -> list[str]`, e.g. the compiler policy's programs for K launch
configurations or fusion choices) offers K programs per task; the action picks one, the real
evaluator judges it. The observation is a fixed-size feature vector of the task.

Verdicts are cached by (task hash, candidate hash): each pair is judged once, with the seed of its
first evaluation, so that hundreds of PPO steps over a few tasks cost a few evaluations.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from kernelgym.envs.single import KernelEnv
from kernelgym.evaluation import Verdict
from kernelgym.ops.catalog import CATALOG
from kernelgym.task import Task

CandidateProvider = Callable[[Task], list[str]]
CATEGORIES = tuple(sorted({spec.category for spec in CATALOG.values()}))
FEATURES = ("difficulty", "n_ops", *(f"ops:{c}" for c in CATEGORIES), "log2_flops", "log2_bytes", "n_inputs",
            "n_outputs", "log2_max_input_numel", "log2_max_output_numel")
FEATURE_MAX = 64.0


def task_features(task: Task) -> np.ndarray:
    """Fixed-size float32 features: difficulty, op counts by category, log2 FLOPs/bytes, sizes."""
    meta = task.meta or {}
    counts = {c: 0 for c in CATEGORIES}
    for op in task.ops:
        if op in CATALOG:
            counts[CATALOG[op].category] += 1
    ins, outs = meta.get("input_shapes") or [], meta.get("output_shapes") or []

    def numel(shapes: list) -> float:
        return max((math.prod(s) for s in shapes), default=0)

    values = [task.difficulty or 0, len(task.ops), *counts.values(), math.log2(1 + meta.get("flops", 0)),
              math.log2(1 + meta.get("bytes", 0)), len(ins), len(outs), math.log2(1 + numel(ins)),
              math.log2(1 + numel(outs))]
    return np.clip(np.asarray(values, dtype=np.float32), 0.0, FEATURE_MAX)


def _key(task: Task, source: str) -> tuple[str, str]:
    """The verdict cache key: (task hash, candidate hash)."""
    return task.hash, hashlib.sha256(source.encode()).hexdigest()[:16]


class DiscreteChoiceEnv(gym.Env):
    """Action Discrete(k): which of the provider's candidates to submit; observation: task features.

    `env` is a KernelGym env (Synthetic or Suite) that supplies tasks and rewards; a provider
    returning fewer than k candidates is padded with empty programs (judged format_error).
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(self, env: gym.Env, provider: CandidateProvider, k: int = 4) -> None:
        base = env.unwrapped
        if not isinstance(base, KernelEnv):
            raise TypeError(f"env must be a KernelGym env, got {type(base).__name__}")
        if not callable(provider):
            raise TypeError("provider must be a callable task -> list[str]")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        self.env, self.base, self.provider, self.k = env, base, provider, k
        self.action_space = spaces.Discrete(k)
        self.observation_space = spaces.Box(0.0, FEATURE_MAX, shape=(len(FEATURES),), dtype=np.float32)
        self.candidates: list[str] = []
        self.cache: dict[tuple[str, str], Verdict] = {}
        self.evaluations = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        _, info = self.env.reset(seed=seed, options=options)
        task = self.base.task
        self.candidates = self._candidates(task)
        return task_features(task), info

    def _candidates(self, task: Task) -> list[str]:
        """The provider's first k programs for `task`, padded with empty ones to exactly k."""
        cands = list(self.provider(task))[: self.k]
        if not all(isinstance(c, str) for c in cands):
            raise TypeError("provider must return a list of source strings")
        return cands + [""] * (self.k - len(cands))

    def step(self, action: Any):
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an int in [0, {self.k}), got {action!r}")
        source = self.candidates[int(action)]
        key = _key(self.base.task, source)
        if key not in self.cache:
            _, _, seed = self.base.prepare(source)
            self.cache[key] = self.base.evaluate(source, seed)
            self.evaluations += 1
        self.base._pending = self.cache[key]
        _, reward, terminated, truncated, info = self.env.step(source)
        return task_features(self.base.task), reward, terminated, truncated, {**info, "choice": int(action)}

    def prefetch(self, tasks: list[Task], seed: int = 0) -> int:
        """Judge every (task, candidate) pair not cached yet in one parallel batch, so that the
        steps that later choose them are lookups (serial steps would judge one pair at a time).
        Returns the number of pairs judged."""
        base = self.base
        todo: dict[tuple[str, str], tuple[Task, str]] = {}
        for task in tasks:
            for source in self._candidates(task):
                key = _key(task, source)
                if key not in self.cache:
                    todo.setdefault(key, (task, source))
        if not todo:
            return 0
        verdicts = base.evaluator.evaluate_batch(list(todo.values()), base.backend, base.mode, seed=seed,
                                                 timeout=base.timeout)
        for (key, (task, _)), verdict in zip(todo.items(), verdicts):
            verdict.task_id = verdict.task_id or task.id
            self.cache[key] = verdict
        self.evaluations += len(todo)
        return len(todo)

    def render(self) -> str | None:
        return self.base.render()
