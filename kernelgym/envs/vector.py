"""The batched path for trainers: judge many envs' actions in one `evaluate_batch` call.

`evaluate_actions(envs, actions)` evaluates in parallel over the worker pool and leaves each verdict
pending on its env, so the following `env.step(action)` returns at once with the right transition;
`step_batch` does both. `BatchedSyncVectorEnv` is a gymnasium `SyncVectorEnv` whose `step` goes
through that path, keeping gymnasium's autoreset semantics. (AsyncVectorEnv also works, with a
small evaluator pool per subprocess, but a sync vector env over one shared pool is cheaper.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
from gymnasium.vector import SyncVectorEnv
from gymnasium.vector.utils import iterate

from kernelgym.envs.single import KernelEnv


def kernel_env(env: gym.Env) -> KernelEnv:
    """The KernelEnv under any gymnasium wrappers."""
    base = env.unwrapped
    if not isinstance(base, KernelEnv):
        raise TypeError(f"expected a KernelGym env, got {type(base).__name__}")
    return base


def evaluate_actions(envs: Sequence[gym.Env], actions: Sequence[Any]) -> None:
    """Judge `actions[i]` for `envs[i]`'s current task, one `evaluate_batch` call per evaluator
    configuration (one call when the envs share evaluator, backend and mode)."""
    if len(envs) != len(actions):
        raise ValueError(f"{len(envs)} envs but {len(actions)} actions")
    groups: dict[tuple, list[tuple[int, KernelEnv, Any, str, int]]] = {}
    for i, (env, action) in enumerate(zip(envs, actions)):
        base = kernel_env(env)
        state = base.np_random.bit_generator.state
        task, source, seed = base.prepare(action)
        # Undo prepare's RNG draw: step() draws the same seed again when it consumes the verdict.
        base.np_random.bit_generator.state = state
        groups.setdefault((id(base.evaluator), base.backend, base.mode, base.timeout), []).append(
            (i, base, task, source, seed))
    for (_, backend, mode, timeout), items in groups.items():
        # One batch seed from the envs' own draws keeps a seeded batch reproducible.
        batch_seed = int.from_bytes(hashlib.sha256(repr([s for *_, s in items]).encode()).digest()[:7], "big")
        verdicts = items[0][1].evaluator.evaluate_batch([(t, src) for _, _, t, src, _ in items], backend, mode,
                                                       seed=batch_seed, timeout=timeout)
        for (_, base, _, _, _), verdict in zip(items, verdicts):
            base._pending = verdict


def step_batch(envs: Sequence[gym.Env], actions: Sequence[Any]) -> list[tuple]:
    """`env.step(action)` for every env, with all evaluations done in parallel first."""
    evaluate_actions(envs, actions)
    return [env.step(action) for env, action in zip(envs, actions)]


class BatchedSyncVectorEnv(SyncVectorEnv):
    """A SyncVectorEnv of KernelGym envs whose step evaluates every sub-env in one batch."""

    def step(self, actions: Any):
        todo = [i for i in range(self.num_envs) if not self._autoreset_envs[i]]
        acts = list(iterate(self.action_space, actions))
        evaluate_actions([self.envs[i] for i in todo], [acts[i] for i in todo])
        return super().step(actions)


def make_vec(env_id: str, num_envs: int, **kwargs: Any) -> BatchedSyncVectorEnv:
    """`num_envs` copies of `gym.make(env_id, **kwargs)` in a BatchedSyncVectorEnv."""
    return BatchedSyncVectorEnv([lambda: gym.make(env_id, **kwargs) for _ in range(num_envs)])


# The ids' `vector_entry_point`s (envs_registry): gymnasium's own
# `gym.make_vec(id, n, vectorization_mode="vector_entry_point")` (and `gym.make_vec(id, n)`, which
# prefers a vector entry point) calls them with `num_envs` and the env kwargs.
def synthetic_vec(num_envs: int = 1, **kwargs: Any) -> BatchedSyncVectorEnv:
    return make_vec("KernelGym/Synthetic-v0", num_envs, **kwargs)


def suite_vec(num_envs: int = 1, **kwargs: Any) -> BatchedSyncVectorEnv:
    return make_vec("KernelGym/Suite-v0", num_envs, **kwargs)


def multi_turn_vec(num_envs: int = 1, **kwargs: Any) -> BatchedSyncVectorEnv:
    return make_vec("KernelGym/MultiTurn-v0", num_envs, **kwargs)


__all__ = ["BatchedSyncVectorEnv", "evaluate_actions", "kernel_env", "make_vec", "multi_turn_vec", "step_batch",
           "suite_vec", "synthetic_vec"]
