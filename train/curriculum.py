"""Difficulty curriculum for trainers: which tasks to draw next, from `kernelgym.envs.curriculum.Curriculum`.

Two hooks, both driven by a `Curriculum` (moving success rate -> difficulty) and updated from verdicts:
- `CurriculumSampler`: a torch `Sampler` over the rows of a built dataset (each row's difficulty
  known), drawing each index at the curriculum's current difficulty, and `update(batch)` after
  every training step. verl uses it through `train.verl.register.KernelGymCurriculumDataset`
  (``data.custom_cls``; verl >= 0.9 calls its ``on_batch_end``) or, on older verl,
  `KernelGymCurriculumSampler` (``data.sampler.class_path``).
- `CurriculumTaskStream`: fresh sampler tasks at the current difficulty (for loops that sample
  tasks live, such as `train.smoke_gpu`).

Groups of rollouts count once: `update` reduces each prompt's rollouts to one result (solved when
at least `group_threshold` of them are correct), so the curriculum's window counts prompts, not
samples, whatever the rollout group size.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from kernelgym.envs.curriculum import Curriculum
from kernelgym.evaluation import Verdict
from kernelgym.sampler import TaskSampler, default_sampler
from kernelgym.task import Task


def _success(result: Verdict | Mapping[str, Any] | bool | float) -> bool:
    if isinstance(result, Verdict):
        return result.ok
    if isinstance(result, Mapping):
        return result.get("status") == "ok" if "status" in result else float(result.get("correct", 0)) > 0
    return bool(result > 0) if isinstance(result, (int, float, np.floating, np.integer)) else bool(result)


def group_results(results: Sequence[Any], groups: Sequence[Hashable] | None, threshold: float = 0.5) -> list[bool]:
    """One success per group (prompt): the share of its correct rollouts is >= `threshold`."""
    flags = [_success(r) for r in results]
    if groups is None:
        return flags
    if len(groups) != len(flags):
        raise ValueError("results and groups must have the same length")
    by: dict[Hashable, list[bool]] = defaultdict(list)
    for g, ok in zip(groups, flags):
        by[g].append(ok)
    return [sum(v) / len(v) >= threshold for v in by.values()]


class CurriculumSampler(Sampler[int]):
    """Indices of dataset rows drawn at the curriculum's current difficulty (seeded).

    difficulties: each row's difficulty (None rows, e.g. suite tasks without one, are never
    drawn). When no row has the current difficulty the nearest one (lower on ties) is used.
    One pass yields `num_samples` indices (default: the number of rows), each drawn when the
    data loader asks for it, so a curriculum update between batches changes the next batch.
    """

    def __init__(self, difficulties: Sequence[int | None], curriculum: Curriculum | None = None, *, seed: int = 0,
                 num_samples: int | None = None, group_threshold: float = 0.5, **curriculum_params: Any) -> None:
        self.by_difficulty: dict[int, list[int]] = defaultdict(list)
        for i, d in enumerate(difficulties):
            if d is not None and not (isinstance(d, float) and np.isnan(d)):
                self.by_difficulty[int(d)].append(i)
        if not self.by_difficulty:
            raise ValueError("no row has a difficulty: a curriculum needs rows tagged with extra_info.difficulty")
        self.levels = sorted(self.by_difficulty)
        if curriculum is None:
            params = {"start": self.levels[0], "min_difficulty": self.levels[0],
                      "max_difficulty": self.levels[-1], **curriculum_params}
            curriculum = Curriculum(**params)
        elif curriculum_params:
            raise ValueError("give either a Curriculum or its parameters, not both")
        self.curriculum = curriculum
        self.num_samples = int(num_samples) if num_samples is not None else len(difficulties)
        if self.num_samples < 1:
            raise ValueError("num_samples must be >= 1")
        if not 0.0 < group_threshold <= 1.0:
            raise ValueError("group_threshold must be in (0, 1]")
        self.group_threshold = group_threshold
        self.rng = random.Random(seed)
        self.drawn: dict[int, int] = defaultdict(int)

    def level(self) -> int:
        """The difficulty whose rows are drawn now (the curriculum's, or the nearest available)."""
        d = self.curriculum.difficulty
        return min(self.levels, key=lambda x: (abs(x - d), x))

    def __len__(self) -> int:
        return self.num_samples

    def draw(self) -> int:
        """One row index at the current difficulty."""
        level = self.level()
        self.drawn[level] += 1
        return self.rng.choice(self.by_difficulty[level])

    def __iter__(self) -> Iterator[int]:
        for _ in range(self.num_samples):
            yield self.draw()

    def update_results(self, results: Sequence[Any], groups: Sequence[Hashable] | None = None) -> int:
        """Feed results (verdicts, verdict dicts, bools or scores > 0 = correct), reduced to one per
        group when `groups` is given; return the new difficulty."""
        for ok in group_results(results, groups, self.group_threshold):
            self.curriculum.update(bool(ok))
        return self.curriculum.difficulty

    def update(self, batch: Any) -> int:
        """Update from a verl `DataProto` after a step: `correct` from the reward extras when present,
        else the summed token-level scores > 0; grouped by the batch's `uid`."""
        ntb = getattr(batch, "non_tensor_batch", None) or {}
        if "correct" in ntb:
            results = [float(x) for x in np.asarray(ntb["correct"]).reshape(-1)]
        else:
            tb = getattr(batch, "batch", None)
            if tb is None or "token_level_scores" not in tb.keys():  # noqa: SIM118 - TensorDict has no __contains__
                raise ValueError("batch has neither a 'correct' reward extra nor token_level_scores")
            results = [float(x) for x in tb["token_level_scores"].sum(-1).tolist()]
        groups = list(np.asarray(ntb["uid"]).reshape(-1)) if "uid" in ntb else None
        return self.update_results(results, groups)

    def state(self) -> dict[str, Any]:
        return {**self.curriculum.state(), "level": self.level(), "drawn": dict(self.drawn)}


class CurriculumTaskStream:
    """Fresh tasks from the sampler at the curriculum's current difficulty; seeds seed, seed+1, ..."""

    def __init__(self, curriculum: Curriculum | None = None, *, sizes: str = "tiny", dtype: str = "float32",
                 seed: int = 0, sampler: TaskSampler | None = None, ops: list[str] | None = None) -> None:
        self.curriculum = curriculum or Curriculum()
        self.sampler = sampler or default_sampler(sizes, dtype)
        self.seed, self.count, self.ops = seed, 0, ops

    def next(self) -> Task:
        task = self.sampler.sample(self.curriculum.difficulty, self.seed + self.count, self.ops)
        self.count += 1
        return task

    def __iter__(self) -> Iterator[Task]:
        while True:
            yield self.next()

    def update(self, results: Iterable[Any], groups: Sequence[Hashable] | None = None,
               threshold: float = 0.5) -> int:
        for ok in group_results(list(results), groups, threshold):
            self.curriculum.update(bool(ok))
        return self.curriculum.difficulty


__all__ = ["CurriculumSampler", "CurriculumTaskStream", "group_results"]
