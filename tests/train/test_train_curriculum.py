"""Curriculum hooks: the dataset sampler draws at the curriculum's difficulty and moves with results."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kernelgym.envs.curriculum import Curriculum
from kernelgym.evaluation import Verdict
from train.curriculum import CurriculumSampler, CurriculumTaskStream, group_results

DIFFS = [1, 1, 2, 2, 3, None, 3, 1]


def rows(sampler, n):
    out: list[int] = []
    while len(out) < n:
        out.extend(sampler)
    return out[:n]


def test_draws_at_current_difficulty_and_promotes():
    s = CurriculumSampler(DIFFS, seed=0, window=4, promote=0.75, demote=0.25)
    assert s.curriculum.difficulty == 1 and s.levels == [1, 2, 3]
    assert {DIFFS[i] for i in rows(s, 20)} == {1}
    assert s.update_results([True, True, True, False]) == 2
    assert {DIFFS[i] for i in rows(s, 20)} == {2}
    assert s.update_results([False] * 4) == 1  # demoted
    assert s.curriculum.schedule[-1]["from"] == 2 and len(s) == len(DIFFS)


def test_update_between_batches_changes_the_next_batch():
    s = CurriculumSampler(DIFFS, seed=1, window=2)
    loader = torch.utils.data.DataLoader(list(range(len(DIFFS))), batch_size=2, sampler=s, num_workers=0)
    it = iter(loader)
    assert {DIFFS[i] for i in next(it).tolist()} == {1}
    s.update_results([1.0, 2.0])  # scores > 0 are successes
    assert {DIFFS[i] for i in next(it).tolist()} == {2}


def test_nearest_level_and_bad_input():
    s = CurriculumSampler([2, 5], curriculum=Curriculum(start=3))
    assert s.level() == 2  # nearest, lower on ties
    s.curriculum.difficulty = 4
    assert s.level() == 5
    with pytest.raises(ValueError, match="no row has a difficulty"):
        CurriculumSampler([None, None])
    with pytest.raises(ValueError, match="not both"):
        CurriculumSampler(DIFFS, curriculum=Curriculum(), window=3)


def test_group_reduction():
    # two prompts, 4 rollouts each: the first solved 3/4, the second 1/4 -> one success, one failure
    res = [1, 1, 1, 0, 0, 0, 1, 0]
    assert group_results(res, ["a"] * 4 + ["b"] * 4) == [True, False]
    assert group_results([Verdict(status="ok", correct=True), {"status": "incorrect"}], None) == [True, False]


def test_update_from_a_verl_like_batch():
    s = CurriculumSampler(DIFFS, window=2, promote=1.0, demote=0.0)
    ntb = {"correct": np.array([1.0, 1.0, 1.0, 1.0]), "uid": np.array(["p", "p", "q", "q"], dtype=object)}
    assert s.update(SimpleNamespace(non_tensor_batch=ntb, batch=None)) == 2  # two solved prompts
    scores = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    batch = SimpleNamespace(non_tensor_batch={"uid": np.array(["r", "s"])},
                            batch={"token_level_scores": scores})
    s.update(batch)
    assert s.curriculum.steps == 4 and s.curriculum.results[-1] is False
    with pytest.raises(ValueError, match="neither"):
        s.update(SimpleNamespace(non_tensor_batch={}, batch={}))


def test_task_stream_follows_the_curriculum():
    stream = CurriculumTaskStream(Curriculum(start=1, window=2), seed=5)
    t1 = stream.next()
    assert t1.difficulty == 1 and t1.seed == 5
    stream.update([True, True])
    t2 = stream.next()
    assert t2.difficulty == 2 and t2.seed == 6
