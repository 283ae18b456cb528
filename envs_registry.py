"""Registers KernelGym's environment ids with gymnasium; `import kernelgym` runs it."""

from __future__ import annotations

import gymnasium

ENV_IDS = {
    "KernelGym/Synthetic-v0": "kernelgym.envs.single:SyntheticEnv",
    "KernelGym/Suite-v0": "kernelgym.envs.single:SuiteEnv",
    "KernelGym/MultiTurn-v0": "kernelgym.envs.multi_turn:MultiTurnEnv",
}


def register() -> None:
    """Register every id once (idempotent: a second `import` or reload does not warn).

    Tasks and evaluation seeds follow the env seed, but a verdict's timings (and on a GPU its
    speedup) are measurements, so the ids are marked nondeterministic for gymnasium's checker.
    """
    for env_id, entry_point in ENV_IDS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=entry_point, nondeterministic=True)
