"""gymnasium's conventions: no step after the episode ended, make_vec through the vector entry
point, short space reprs, feedback that does not ask for more after a solved episode."""

from __future__ import annotations

import gymnasium as gym
import pytest

import kernelgym  # noqa: F401  (registers the ids)
from kernelgym.envs import BatchedSyncVectorEnv
from kernelgym.envs.prompts import feedback
from tests._kernels import RELU, WRONG_RELU

RELU_KW = dict(difficulty=1, backend="interpret", ops=["relu"])


@pytest.mark.parametrize("env_id", ["KernelGym/Synthetic-v0", "KernelGym/MultiTurn-v0"])
def test_step_after_terminated_raises(evaluator, env_id):
    env = gym.make(env_id, evaluator=evaluator, **RELU_KW)
    env.reset(seed=0)
    *_, terminated, _, _ = env.step(RELU)
    assert terminated
    with pytest.raises(RuntimeError, match=r"episode is over \(terminated\); call reset\(\)"):
        env.step(RELU)
    env.reset(seed=0)
    assert env.step(WRONG_RELU)[4]["status"] == "incorrect"   # a reset starts a fresh episode


def test_solved_feedback_asks_for_nothing_more(evaluator):
    env = gym.make("KernelGym/MultiTurn-v0", evaluator=evaluator, max_turns=3, **RELU_KW)
    env.reset(seed=1)
    obs, _, terminated, _, info = env.step(RELU)
    assert terminated and info["success"]
    assert "Fix the problem" not in obs["feedback"] and "solved" in obs["feedback"]
    unsolved = feedback({"status": "incorrect", "reasons": ["check:mismatch"]}, 1, 3, 1.0)
    assert "Fix the problem" in unsolved


def test_make_vec_uses_the_batched_vector_entry_point(evaluator):
    for mode in ("vector_entry_point", None):
        kw = {} if mode is None else {"vectorization_mode": mode}
        vec = gym.make_vec("KernelGym/Synthetic-v0", 2, evaluator=evaluator, **RELU_KW, **kw)
        assert isinstance(vec, BatchedSyncVectorEnv) and vec.num_envs == 2
        vec.close()
    vec = gym.make_vec("KernelGym/Synthetic-v0", 2, vectorization_mode="vector_entry_point", evaluator=evaluator,
                       **RELU_KW)
    vec.reset(seed=0)
    _, rewards, terms, _, infos = vec.step((RELU, WRONG_RELU))
    assert list(infos["status"]) == ["ok", "incorrect"] and terms.all() and rewards[0] > 0
    vec.close()
    sync = gym.make_vec("KernelGym/Synthetic-v0", 2, vectorization_mode="sync", evaluator=evaluator, **RELU_KW)
    assert not isinstance(sync, BatchedSyncVectorEnv)
    sync.close()


def test_space_repr_is_short(evaluator):
    env = gym.make("KernelGym/MultiTurn-v0", evaluator=evaluator, **RELU_KW)
    text = repr(env.observation_space)
    assert len(text) < 600 and "characters>" in text and "prompt" in text, text
    assert len(repr(env.action_space)) < 100
