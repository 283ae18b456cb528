"""Reductions over one or more dims (`dim` counts from the right, 1 = the last dim; "all"
reduces every dim), argmax / argmin, and softmax / log_softmax along one dim."""

from __future__ import annotations

from typing import Any

import z3

from kernelgym.ops.registry import per_out, register
from kernelgym.ops.spec import (
    MAX_RANK,
    NONNEG,
    POSITIVE,
    REAL,
    OpSpec,
    Param,
    RuleCtx,
    SymTensor,
    drop_slot,
    keep_except,
    numel,
    same_shape,
)

# ---- reductions over one dim ---------------------------------------------------------------------


def reduced_slots(dim: Any) -> tuple[int, ...] | None:
    """Right-aligned slots a reduction's ``dim`` parameter reduces: one dim counted from the right
    (1 = last), a tuple of them, or None for ``"all"`` (every dim)."""
    if dim == "all":
        return None
    if isinstance(dim, (tuple, list)):
        return tuple(sorted(int(d) - 1 for d in dim))
    return (int(dim) - 1,)


def _reduce_shape(min_size: int = 1):
    def rule(a: list[SymTensor], o: SymTensor, p: dict[str, Any], c: RuleCtx) -> list[z3.BoolRef]:
        x = a[0]
        slots = reduced_slots(p["dim"])
        if slots is None:  # every dim: a 0-d result, or all ones with keepdim
            cs = [o.rank == (x.rank if p["keepdim"] else 0), *[o.dims[m] == 1 for m in range(MAX_RANK)]]
            if min_size > 1:
                cs.append(z3.Or(*[x.dims[m] >= min_size for m in range(MAX_RANK)]))
            return cs
        cs = [x.rank >= max(slots) + 1]
        if min_size > 1:
            cs.append(z3.Or(*[x.dims[k] >= min_size for k in slots]))
        if p["keepdim"]:
            return cs + keep_except(x, o, list(slots)) + [o.dims[k] == 1 for k in slots]
        if len(slots) == 1:
            return cs + drop_slot(x, o, slots[0])
        rest = [m for m in range(MAX_RANK) if m not in slots]
        cs.append(o.rank == x.rank - len(slots))
        cs += [o.dims[m] == (x.dims[rest[m]] if m < len(rest) else 1) for m in range(MAX_RANK)]
        return cs

    return rule


def _dim_arg(p: dict[str, Any]) -> str:
    """torch's ``dim=`` argument for a reduction's ``dim`` parameter (negative dims)."""
    slots = reduced_slots(p["dim"])
    if slots is None:
        slots = tuple(range(len(p["_in"][0])))
    if len(slots) == 1 and not isinstance(p["dim"], (tuple, list)) and p["dim"] != "all":
        return str(-(slots[0] + 1))
    return repr(tuple(sorted(-(k + 1) for k in slots)))


# Reduced dims a reduction may draw: the last, second or third from the right, the last two, all.
_REDUCE_DIMS = (1, 2, 3, (1, 2), "all")


def _reduction(name: str, fn: str, flops: int = 1, out: int | str = "first", min_size: int = 1,
               dims: tuple[Any, ...] = _REDUCE_DIMS, index_out: bool = False) -> None:
    register(OpSpec(
        name=name, category="reduction", arity=1,
        call=lambda a, p: f"{fn}({a[0]}, dim={_dim_arg(p)}, keepdim={p['keepdim']})",
        shape=_reduce_shape(min_size),
        flops=lambda ins, o, p: flops * numel(ins[0]),
        params=(Param("dim", dims), Param("keepdim", (False, True))),
        out_range=out, index_out=index_out, scalar_out=True,
        doc=f"{fn}(x, dim, keepdim)" + (" (int64 indices)" if index_out else ""),
    ))


_reduction("sum", "torch.sum")
_reduction("mean", "torch.mean")
_reduction("amax", "torch.amax")
_reduction("amin", "torch.amin")
_reduction("logsumexp", "torch.logsumexp", 4, out=REAL)
_reduction("var", "torch.var", 3, out=NONNEG, min_size=2)
_reduction("std", "torch.std", 3, out=NONNEG, min_size=2)
_reduction("norm", "torch.linalg.vector_norm", 2, out=NONNEG)
# torch.prod takes one dim only
_reduction("prod", "torch.prod", 1, dims=(1, 2, 3))
# argmax / argmin: int64 indices of the first extreme value along one dim (torch's tie rule).
# The output is never fed to another op by the sampler (`OpSpec.index_out`): it is a program
# output, which the evaluator compares exactly.
_reduction("argmax", "torch.argmax", 1, out=NONNEG, dims=(1, 2, 3), index_out=True)
_reduction("argmin", "torch.argmin", 1, out=NONNEG, dims=(1, 2, 3), index_out=True)


# ---- softmax -------------------------------------------------------------------------------------


def _softmax(name: str, fn: str, out: int) -> None:
    register(OpSpec(
        name=name, category="softmax", arity=1,
        call=lambda a, p: f"{fn}({a[0]}, dim={-p['dim']})",
        shape=lambda a, o, p, c: same_shape(a[0], o) + [a[0].rank >= p["dim"], a[0].dims[p["dim"] - 1] >= 2],
        flops=per_out(5), params=(Param("dim", (1, 2)),), out_range=out, doc=f"{fn}(x, dim)",
    ))


_softmax("softmax", "torch.softmax", POSITIVE)
_softmax("log_softmax", "torch.log_softmax", REAL)
