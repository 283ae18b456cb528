"""KernelGym: Gymnasium environments for turning PyTorch programs into fast Triton kernels."""

from __future__ import annotations

__version__ = "0.1.0"

# Order matters: kernelgym.task first, then the registry that points gymnasium at our envs.
from kernelgym.task import Task, load_suite  # noqa: E402, I001

import envs_registry as _envs_registry  # noqa: E402  (registers the env ids)

_envs_registry.register()

__all__ = ["Task", "load_suite", "__version__"]
