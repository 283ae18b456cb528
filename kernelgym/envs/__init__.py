"""Gymnasium environments (ids registered by envs_registry.py on `import kernelgym`)."""

from __future__ import annotations

from kernelgym.envs.multi_turn import MultiTurnEnv
from kernelgym.envs.single import KernelEnv, SuiteEnv, SyntheticEnv
from kernelgym.envs.vector import BatchedSyncVectorEnv, evaluate_actions, make_vec, step_batch

__all__ = ["BatchedSyncVectorEnv", "KernelEnv", "MultiTurnEnv", "SuiteEnv", "SyntheticEnv", "evaluate_actions",
           "make_vec", "step_batch"]
