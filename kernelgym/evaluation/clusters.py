"""Which pool a batch runs on: ``"local"`` (the evaluator's own worker pools) or a remote cluster.

`Evaluator.evaluate_batch(..., cluster=...)` takes ``"local"``, ``"ray"`` or ``"ray://host:port"``;
None reads the ``KERNELGYM_CLUSTER`` environment variable (default local). The remote pools live a
layer above the evaluator (`kernelgym.cluster` wraps Evaluators in Ray actors), so the evaluator
reaches them by name, as gymnasium reaches envs by entry-point strings, and never imports them:
the layer rule of docs/ARCHITECTURE.md holds and Ray stays an optional extra.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

# kind -> "module:function" running a batch there, with evaluate_batch_on_cluster's signature.
REMOTE: dict[str, str] = {"ray": "kernelgym.cluster:evaluate_batch_on_cluster"}

ENV_VAR = "KERNELGYM_CLUSTER"


def parse_cluster(cluster: str | None) -> tuple[str, str | None]:
    """``(kind, address)`` for a cluster spec; None reads ``KERNELGYM_CLUSTER`` (default local).

    ``"local"`` -> ("local", None); ``"ray"`` -> ("ray", None); ``"ray://host:port"`` -> ("ray", that).
    """
    spec = cluster if cluster is not None else (os.environ.get(ENV_VAR) or "local")
    if not isinstance(spec, str):
        raise TypeError(f"cluster must be a string, got {type(spec).__name__}")
    spec = spec.strip()
    if spec == "local":
        return "local", None
    if spec == "ray":
        return "ray", None
    if spec.startswith("ray://") and len(spec) > len("ray://"):
        return "ray", spec
    origin = f" (from {ENV_VAR})" if cluster is None else ""
    raise ValueError(f"unknown cluster {spec!r}{origin}; expected 'local', 'ray' or 'ray://host:port'")


def remote_batch(kind: str) -> Callable[..., Any]:
    """The function that runs a batch on a remote cluster of this kind (imported on first use)."""
    module, _, name = REMOTE[kind].partition(":")
    return getattr(importlib.import_module(module), name)
