"""Registers KernelGym's environment ids with gymnasium; `import kernelgym` runs it."""

from __future__ import annotations

import gymnasium

ENV_IDS = {
    "KernelGym/Synthetic-v0": "kernelgym.envs.single:SyntheticEnv",
    "KernelGym/Suite-v0": "kernelgym.envs.single:SuiteEnv",
    "KernelGym/MultiTurn-v0": "kernelgym.envs.multi_turn:MultiTurnEnv",
}
# gymnasium.make_vec(id, n) builds these: one pool-batched BatchedSyncVectorEnv (kernelgym.envs.vector).
VECTOR_ENTRY_POINTS = {
    "KernelGym/Synthetic-v0": "kernelgym.envs.vector:synthetic_vec",
    "KernelGym/Suite-v0": "kernelgym.envs.vector:suite_vec",
    "KernelGym/MultiTurn-v0": "kernelgym.envs.vector:multi_turn_vec",
}


def register() -> None:
    """Register every id once (idempotent: a second `import` or reload does not warn).

    Tasks and evaluation seeds follow the env seed, but a verdict's timings (and on a GPU its
    speedup) are measurements, so the ids are marked nondeterministic for gymnasium's checker.
    """
    for env_id, entry_point in ENV_IDS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=entry_point, nondeterministic=True,
                               vector_entry_point=VECTOR_ENTRY_POINTS[env_id])
