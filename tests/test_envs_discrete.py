"""The discrete-choice env: check_env, features, verdict cache, and a short SB3 PPO run."""

from __future__ import annotations

import time

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import kernelgym  # noqa: F401
from kernelgym.envs.discrete import FEATURES, DiscreteChoiceEnv, task_features
from tests._kernels import relu_variants


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory):
    from kernelgym.sampler import TaskSampler

    d = tmp_path_factory.mktemp("relu_suite")
    for s in range(3):
        TaskSampler("tiny").sample(1, s, ops=["relu"]).write(d)
    return d


def make(evaluator, suite_dir):
    inner = gym.make("KernelGym/Suite-v0", path=str(suite_dir), shuffle=True, backend="interpret",
                     evaluator=evaluator)
    return DiscreteChoiceEnv(inner, relu_variants, k=4)


def test_check_env_and_rewards(evaluator, suite_dir):
    env = make(evaluator, suite_dir)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (len(FEATURES),) and obs[0] == 1
    rewards = []
    for a in range(4):
        env.reset(seed=0)
        rewards.append(env.step(a)[1])
    assert rewards[0] > 0 and rewards[2] > 0 and rewards[1] <= 0 and rewards[3] <= 0
    n = env.evaluations
    env.reset(seed=0)
    env.step(0)
    assert env.evaluations == n  # cached
    with pytest.raises(ValueError):
        env.step(7)


def test_features_fixed_size():
    from kernelgym.sampler import sample_task

    a, b = task_features(sample_task(1, 0)), task_features(sample_task(3, 0))
    assert a.shape == b.shape == (len(FEATURES),) and a.dtype == np.float32 and b[0] == 3


def test_sb3_ppo_trains(evaluator, suite_dir):
    sb3 = pytest.importorskip("stable_baselines3")
    env = make(evaluator, suite_dir)
    env.reset(seed=0)
    t0 = time.perf_counter()
    model = sb3.PPO("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=2, seed=0, device="cpu", verbose=0)
    model.learn(total_timesteps=256)
    print(f"PPO 256 steps: {time.perf_counter() - t0:.1f}s, {env.evaluations} evaluations")
    assert env.evaluations <= 12  # 3 tasks x 4 candidates, each judged once
    action, _ = model.predict(env.reset(seed=1)[0], deterministic=True)
    assert 0 <= int(action) < 4


def test_prefetch_judges_every_pair_once_in_one_batch(evaluator, suite_dir):
    from kernelgym.task import load_suite

    env = make(evaluator, suite_dir)
    tasks = list(load_suite(suite_dir))
    assert env.prefetch(tasks, seed=3) == 3 * 4 and env.evaluations == 12
    assert env.prefetch(tasks, seed=3) == 0   # all cached
    statuses = {}
    for task in tasks:
        env.reset(options={"task": task})
        for a in range(4):
            env.reset(options={"task": task})
            _, reward, *_ = env.step(a)
            statuses.setdefault(a, set()).add(env.base.last_verdict["status"])
    assert env.evaluations == 12   # the steps were lookups
    assert statuses[0] == statuses[2] == {"ok"} and "ok" not in statuses[1] | statuses[3]
