"""Curriculum: moves up and down as designed, logs the schedule, works as wrapper and plain object."""

from __future__ import annotations

import gymnasium as gym
import pytest

import kernelgym  # noqa: F401
from kernelgym.envs.curriculum import Curriculum, CurriculumWrapper
from kernelgym.evaluation import Verdict
from tests._kernels import RELU, WRONG_RELU


def test_moves_up_and_down():
    c = Curriculum(start=2, window=4, promote=0.75, demote=0.25, max_difficulty=3)
    for _ in range(4):
        c.update(True)
    assert c.difficulty == 3 and c.schedule == [{"step": 4, "from": 2, "to": 3, "success_rate": 1.0}]
    for _ in range(4):
        c.update(True)
    assert c.difficulty == 3  # capped at max
    for r in (False, False, False):  # moving window [T, F, F, F]: 0.25 <= demote
        c.update(r)
    assert c.difficulty == 2 and c.schedule[-1] == {"step": 11, "from": 3, "to": 2, "success_rate": 0.25}
    for r in (True, False, True, False):  # 0.5: stays
        c.update(r)
    assert c.difficulty == 2
    c.update(Verdict("ok", correct=True, compiled=True))
    c.update({"status": "incorrect"})
    assert c.steps == 17 and c.state()["moves"] == 2


def test_bad_params():
    with pytest.raises(ValueError):
        Curriculum(promote=0.2, demote=0.5)
    with pytest.raises(ValueError):
        Curriculum(start=0)
    with pytest.raises(ValueError):
        Curriculum(window=0)
    with pytest.raises(TypeError):
        Curriculum().update("yes")


def test_wrapper_sets_difficulty_and_reports(evaluator):
    env = gym.make("KernelGym/Synthetic-v0", evaluator=evaluator, backend="interpret", ops=["relu"])
    env = CurriculumWrapper(env, window=2, promote=1.0, demote=0.0, max_difficulty=2)
    _, info = env.reset(seed=0)
    assert info["curriculum"]["difficulty"] == 1 and info["difficulty"] == 1
    for _ in range(2):
        env.reset()
        _, _, _, _, info = env.step(RELU)
    assert info["curriculum"]["difficulty"] == 2 and env.schedule[0]["to"] == 2
    env.unwrapped.ops = None  # the forced op list fits difficulty 1 only
    _, info = env.reset()
    assert env.unwrapped.difficulty == 2 and info["difficulty"] == 2
    c = Curriculum(start=2, window=2, promote=1.0, demote=0.0)
    env2 = CurriculumWrapper(gym.make("KernelGym/Synthetic-v0", evaluator=evaluator, backend="interpret",
                                      difficulty=2), c)
    for _ in range(2):
        env2.reset(seed=1)
        env2.step(WRONG_RELU)
    assert c.difficulty == 1 and c.schedule[-1]["from"] == 2
