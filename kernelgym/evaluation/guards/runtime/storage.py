"""Tensor storages as the guards see them: an identity key, a byte view, and a change test.

A launch "wrote" a storage when its bytes differ afterwards; inputs and parameters were
"mutated" when theirs differ after forward. Comparisons stay on the device (no host sync) until
the guard reads all of them at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch


def storage_key(t: torch.Tensor) -> tuple | None:
    """(device type, device index, data pointer) of t's storage; None for an empty or opaque one."""
    try:
        st = t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    if st.nbytes() == 0:
        return None
    return (t.device.type, t.device.index, st.data_ptr())


def storage_bytes(t: torch.Tensor) -> torch.Tensor:
    """A uint8 tensor over t's whole storage (no copy)."""
    return torch.empty(0, dtype=torch.uint8, device=t.device).set_(t.untyped_storage())


def bytes_changed(now: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """A 0-dim bool tensor on the tensors' device: do two byte views differ (no host sync)."""
    if now.shape != old.shape:
        return torch.ones((), dtype=torch.bool, device=now.device)
    return torch.ne(now, old).any()


def tensors(v: Any) -> Iterator[torch.Tensor]:
    """The tensors in a launch or forward argument (nested sequences, tensor descriptors)."""
    if isinstance(v, torch.Tensor):
        yield v
    elif isinstance(v, (tuple, list)):
        for x in v:
            yield from tensors(x)
    elif hasattr(v, "base") and isinstance(v.base, torch.Tensor):  # TensorDescriptor
        yield v.base
