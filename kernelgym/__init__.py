"""KernelGym: Gymnasium environments for turning PyTorch programs into fast Triton kernels."""

from __future__ import annotations

import envs_registry as _envs_registry  # registers the env ids (docs/ARCHITECTURE.md)
from kernelgym.task import Task, load_suite
from kernelgym.version import __version__

_envs_registry.register()

__all__ = ["Task", "load_suite", "__version__"]
