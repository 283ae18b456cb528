"""Dispatch recording: which aten ops a forward ran in torch, and poisoned fresh allocations.

A TorchDispatchMode counts the *compute* ops (allocation, view, metadata and fill ops are not
compute) and, for the candidate, fills every fresh allocation with NaN (or an extreme integer) so
that elements no kernel wrote fail the comparison. Ops dispatched while a Triton launch runs are
counted apart: under the interpreter they are torch hidden in a kernel body.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_ALLOC = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "empty_permuted",
          "resize_", "resize", "set_"}
_FILL = {"zeros", "zeros_like", "ones", "ones_like", "full", "full_like", "new_zeros", "new_ones", "new_full",
         "fill_", "fill", "zero_", "scalar_tensor", "lift_fresh", "lift_fresh_copy", "arange", "linspace"}
_VIEW = {"view", "_unsafe_view", "_reshape_alias", "reshape", "as_strided", "t", "transpose", "permute",
         "expand", "squeeze", "unsqueeze", "slice", "select", "split", "split_with_sizes", "chunk", "narrow",
         "alias", "detach", "unbind", "diagonal", "view_as_real", "view_as_complex", "unfold", "movedim",
         "t_", "transpose_", "squeeze_", "unsqueeze_", "as_strided_", "_unsafe_split", "unsafe_split",
         "numpy_T", "_conj", "_neg_view", "lift"}
_META = {"_local_scalar_dense", "is_same_size", "sym_size", "sym_stride", "sym_numel", "sym_storage_offset",
         "size", "stride", "dim", "is_contiguous", "_has_compatible_shallow_copy_type", "record_stream",
         "is_pinned", "_nested_tensor_size"}

# Ops whose result is equivalent for the lenient containment check (a candidate that swaps
# torch.mm for torch.bmm has still done the matmul in torch).
_FAMILY = {
    "mm": "matmul", "bmm": "matmul", "addmm": "matmul", "baddbmm": "matmul", "addbmm": "matmul",
    "matmul": "matmul", "linear": "matmul", "einsum": "matmul", "dot": "matmul", "mv": "matmul",
    "addmv": "matmul", "_mm_plus_mm": "matmul", "tensordot": "matmul",
    "convolution": "conv", "_convolution": "conv", "conv2d": "conv", "conv1d": "conv", "conv3d": "conv",
    "sum": "reduce_sum", "mean": "reduce_sum", "amax": "reduce_max", "max": "reduce_max",
    "_softmax": "softmax", "softmax": "softmax", "_log_softmax": "log_softmax",
}


def classify_op(func: Any) -> str:
    """'alloc', 'fill', 'view', 'meta' or 'compute' for an aten OpOverload (copies are compute)."""
    name = func.overloadpacket.__name__ if hasattr(func, "overloadpacket") else str(func)
    if name in _ALLOC:
        return "alloc"
    if name in _FILL:
        return "fill"
    if name in _VIEW:
        return "view"
    if name in _META:
        return "meta"
    return "compute"


def family(op: str) -> str:
    """The equivalence family of an op name such as ``aten.mm.default`` (``matmul``)."""
    parts = op.split(".")
    base = parts[1] if len(parts) > 1 and parts[0] == "aten" else parts[0]
    return _FAMILY.get(base, base)


def format_ops(ops: collections.Counter) -> str:
    """The most frequent ops of a counter, for a finding's detail."""
    return ", ".join(f"{op} x{n}" for op, n in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))[:12])


def _poison(t: torch.Tensor) -> None:
    if t.numel() == 0:
        return
    if t.is_floating_point() or t.is_complex():
        t.fill_(math.nan)
    elif t.dtype == torch.bool:
        t.fill_(True)
    else:
        t.fill_(torch.iinfo(t.dtype).min if t.dtype.is_signed else torch.iinfo(t.dtype).max)


class Recorder(TorchDispatchMode):
    """Counts compute ops; optionally poisons fresh allocations; ops during a launch go apart."""

    def __init__(self, poison: bool = False):
        super().__init__()
        self.poison = poison
        self.ops: collections.Counter[str] = collections.Counter()
        self.launch_ops: collections.Counter[str] = collections.Counter()
        self.in_launch = 0
        self.paused = 0

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch (2.13) wraps a mode's __torch_dispatch__ in torch._disable_dynamo unless this says
        # False, and that wrapper imports torch._dynamo (1.3 s) on its first call. Nothing compiles
        # under this mode (candidate code may not; the reference's ops are recorded eagerly), so
        # there is nothing for dynamo to skip; interpreter workers start without it (`lazy_dynamo`).
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.paused:
            return out
        kind = classify_op(func)
        if self.in_launch:
            # The interpreter copies kernel arguments host<->device with copy_; anything else that
            # computes inside a launch is torch hidden in the kernel body.
            if kind == "compute" and func.overloadpacket.__name__ != "copy_":
                self.launch_ops[str(func)] += 1
            return out
        if kind == "compute":
            self.ops[str(func)] += 1
        elif kind == "alloc" and self.poison and isinstance(out, torch.Tensor) and func.overloadpacket.__name__ != "set_":
            _poison(out)
        return out


def record_torch_ops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, collections.Counter[str]]:
    """Run fn under a TorchDispatchMode; return its result and the multiset of *compute* aten ops
    (allocation/view/metadata/fill ops excluded). Used on the reference for lenient mode."""
    rec = Recorder(poison=False)
    with rec:
        out = fn(*args, **kwargs)
    return out, collections.Counter(rec.ops)
