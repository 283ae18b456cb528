"""Environments: check_env on every id, verdicts and rewards of correct and wrong kernels, seeding,
the batched vector path, multi-turn feedback, bad input."""

from __future__ import annotations

import time

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import kernelgym  # noqa: F401  (registers the ids)
from kernelgym.envs import BatchedSyncVectorEnv, step_batch
from kernelgym.task import Task
from tests._kernels import RELU, WRONG_RELU

RELU_KW = dict(difficulty=1, backend="interpret", ops=["relu"])


@pytest.fixture(scope="session")
def sev(evaluator):
    return evaluator


@pytest.fixture(scope="session")
def suite_dir(tmp_path_factory):
    from kernelgym.sampler import TaskSampler

    d = tmp_path_factory.mktemp("suite")
    sampler = TaskSampler("tiny")
    for s in range(3):
        sampler.sample(1, s, ops=["relu"]).write(d)
    return d


def make(env_id: str, sev, **kw):
    return gym.make(env_id, evaluator=sev, **kw)


@pytest.mark.parametrize("env_id", ["KernelGym/Synthetic-v0", "KernelGym/Suite-v0", "KernelGym/MultiTurn-v0"])
def test_check_env(env_id, sev, suite_dir):
    kw = {"path": str(suite_dir), "backend": "interpret"} if env_id == "KernelGym/Suite-v0" else dict(RELU_KW)
    env = make(env_id, sev, **kw)
    check_env(env.unwrapped)
    env.close()


def test_correct_kernel_is_ok_with_positive_reward(sev):
    env = make("KernelGym/Synthetic-v0", sev, **RELU_KW)
    obs, info = env.reset(seed=0)
    assert "ModelNew" in obs["prompt"] and obs["reference"] in obs["prompt"] and obs["difficulty"] == 1
    assert info["ops"] == ["relu"]
    obs, reward, terminated, truncated, info = env.step(RELU)
    assert info["status"] == "ok" and info["verdict"]["status"] == "ok"
    assert reward > 0 and info["reward_components"]["reward/correctness"] == 1.0
    assert set(info["reward_components"]) >= {"format", "compiled", "correct", "speedup", "speedup_vs_compile", "hack"}
    assert terminated and not truncated
    assert "ok" in env.render()


def test_wrong_kernel_gets_no_reward_and_reasons(sev):
    env = make("KernelGym/Synthetic-v0", sev, **RELU_KW)
    env.reset(seed=0)
    _, reward, _, _, info = env.step(WRONG_RELU)
    assert info["status"] == "incorrect" and "check:mismatch" in info["verdict"]["reasons"]
    assert reward <= 0 and info["reward_components"]["correct"] == 0.0
    env.reset(seed=0)
    _, reward, _, _, info = env.step("this is not python ∑∫ 🚀")
    assert info["status"] == "format_error" and reward <= 0 and info["reward_components"]["format"] == 0.0


def test_seeds_reproduce_tasks(sev):
    a = make("KernelGym/Synthetic-v0", sev, difficulty=2, backend="interpret")
    b = make("KernelGym/Synthetic-v0", sev, difficulty=2, backend="interpret")
    ids_a = [a.reset(seed=s)[0]["reference"] for s in (1, 2, 1)]
    ids_b = [b.reset(seed=s)[0]["reference"] for s in (1, 2, 1)]
    assert ids_a == ids_b and ids_a[0] == ids_a[2] and ids_a[0] != ids_a[1]
    c = make("KernelGym/Synthetic-v0", sev, difficulty=2, backend="interpret", seed=1)
    assert c.reset()[0]["reference"] == ids_a[0]


def test_suite_order_and_shuffle(sev, suite_dir):
    env = make("KernelGym/Suite-v0", sev, path=str(suite_dir), backend="interpret")
    ids = [env.reset(seed=0 if i == 0 else None)[0]["task_id"] for i in range(4)]
    assert ids == ["d1_tiny_s0", "d1_tiny_s1", "d1_tiny_s2", "d1_tiny_s0"]
    sh = make("KernelGym/Suite-v0", sev, path=str(suite_dir), backend="interpret", shuffle=True)

    def order():
        return [sh.reset(seed=7 if i == 0 else None)[0]["task_id"] for i in range(3)]

    first = order()
    assert sorted(first) == sorted(ids[:3]) and order() == first


def test_multi_turn_feedback_and_termination(sev):
    env = make("KernelGym/MultiTurn-v0", sev, max_turns=2, **RELU_KW)
    env.reset(seed=3)
    obs, _, terminated, truncated, info = env.step(WRONG_RELU)
    assert not terminated and not truncated and obs["turn"] == 1
    assert "incorrect" in obs["feedback"] and "check:mismatch" in obs["feedback"] and "max_abs_err" in obs["feedback"]
    obs, reward, terminated, truncated, info = env.step(RELU)
    assert terminated and info["success"] and reward > 0
    env.reset(seed=3)
    env.step("x = (")
    obs, _, terminated, truncated, _ = env.step(WRONG_RELU)
    assert truncated and not terminated
    with pytest.raises(RuntimeError):
        env.step(RELU)


def test_batched_vector_env_one_evaluate_batch_call(sev, evaluator, monkeypatch):
    calls = []
    orig = type(evaluator).evaluate_batch

    def spy(self, pairs, *a, **kw):
        calls.append(len(pairs))
        return orig(self, pairs, *a, **kw)

    monkeypatch.setattr(type(evaluator), "evaluate_batch", spy)
    n = 4
    vec = BatchedSyncVectorEnv([lambda: make("KernelGym/Synthetic-v0", sev, **RELU_KW) for _ in range(n)])
    vec.reset(seed=0)
    t0 = time.perf_counter()
    _, rewards, terms, _, infos = vec.step((RELU, WRONG_RELU, RELU, WRONG_RELU))
    batched = time.perf_counter() - t0
    assert calls == [n]
    assert list(infos["status"]) == ["ok", "incorrect", "ok", "incorrect"]
    assert rewards[0] > 0 and rewards[1] <= 0 and terms.all()
    print(f"batched step of {n} envs: {batched:.2f}s")
    envs = [make("KernelGym/Synthetic-v0", sev, **RELU_KW) for _ in range(2)]
    for e in envs:
        e.reset(seed=5)
    out = step_batch(envs, [RELU, WRONG_RELU])
    assert [o[4]["status"] for o in out] == ["ok", "incorrect"] and calls[-1] == 2


def test_batched_step_matches_sequential_verdict(sev):
    a = make("KernelGym/Synthetic-v0", sev, **RELU_KW)
    a.reset(seed=11)
    (_, r, *_), = step_batch([a], [RELU])
    assert r > 0 and a.unwrapped._pending is None


def test_async_vector_env(evaluator):
    def fn():
        from kernelgym.evaluation import Evaluator

        return gym.make("KernelGym/Synthetic-v0", evaluator=Evaluator(workers=1, reference_workers=1, ptx_workers=1,
                                                                   memory_limit_mb=2048), **RELU_KW)

    vec = gym.vector.AsyncVectorEnv([fn, fn], shared_memory=False)
    try:
        vec.reset(seed=0)
        _, rewards, _, _, infos = vec.step((RELU, WRONG_RELU))
        assert list(infos["status"]) == ["ok", "incorrect"] and rewards[0] > 0
    finally:
        vec.close()


def test_forced_task_option(sev):
    env = make("KernelGym/Synthetic-v0", sev, **RELU_KW)
    t = Task.from_file("tests/redteam/tasks/relu_add.py")
    obs, _ = env.reset(seed=0, options={"task": t})
    assert obs["task_id"] == "relu_add" and obs["difficulty"] == 0


def test_bad_input(sev, tmp_path):
    with pytest.raises(ValueError, match="unknown reward"):
        make("KernelGym/Synthetic-v0", sev, reward="nope")
    with pytest.raises(ValueError, match="difficulty"):
        make("KernelGym/Synthetic-v0", sev, difficulty=0)
    with pytest.raises(ValueError, match="difficulty"):
        make("KernelGym/Synthetic-v0", sev, difficulty="3")
    with pytest.raises(ValueError, match="path"):
        make("KernelGym/Suite-v0", sev)
    with pytest.raises(FileNotFoundError):
        make("KernelGym/Suite-v0", sev, path=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no loadable"):
        make("KernelGym/Suite-v0", sev, path=str(tmp_path))
    with pytest.raises(ValueError, match="max_turns"):
        make("KernelGym/MultiTurn-v0", sev, max_turns=0)
    env = make("KernelGym/Synthetic-v0", sev, **RELU_KW)
    env.reset(seed=0)
    with pytest.raises(TypeError, match="action must be"):
        env.unwrapped.step(123)


def test_evaluator_copies_to_itself(evaluator):
    """gymnasium deep-copies env kwargs; the worker pool must be shared, not copied."""
    import copy

    assert copy.deepcopy(evaluator) is evaluator and copy.copy(evaluator) is evaluator
    assert copy.deepcopy({"evaluator": evaluator})["evaluator"] is evaluator
