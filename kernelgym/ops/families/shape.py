"""Data movement and masks: transpose, permute, flatten, merge_last, reshape, concat (no FLOPs, the
input's values), tril, and masked_fill with a comparison; the helpers other view-like families
register with."""

from __future__ import annotations

from typing import Any

import z3

from kernelgym.ops.registry import per_out, register
from kernelgym.ops.spec import (
    MAX_RANK,
    REAL,
    OpSpec,
    Param,
    broadcast,
    keep_except,
    pad_ones,
    ranks,
    same_shape,
)

# ---- shape ops (data movement) -------------------------------------------------------------------


def view_op(name: str, call: Any, shape: Any, params: tuple[Param, ...], doc: str, min_rank: int = 1,
             category: str = "shape") -> None:
    """Register a data-movement op of one input: no FLOPs, its output values are the input's."""
    register(OpSpec(name=name, category=category, arity=1, call=call, shape=shape, flops=lambda ins, o, p: 0,
                    params=params, min_rank=min_rank, out_range="first", doc=doc))


def _transpose_shape(a, o, p, c):
    x = a[0]
    return [x.rank >= 2, *keep_except(x, o, [0, 1]), o.dims[0] == x.dims[1], o.dims[1] == x.dims[0]]


view_op("transpose", lambda a, p: f"{a[0]}.transpose(-1, -2).contiguous()", _transpose_shape, (),
         "x.transpose(-1, -2).contiguous()", min_rank=2)


def _permute_shape(a, o, p, c):
    # Move dim 1 (from the left) to the end: (N, C, *S) -> (N, *S, C).
    x = a[0]
    cs = [ranks(x, 3), o.rank == x.rank, o.dims[0] == x.left(1)]
    for r in range(3, MAX_RANK + 1):
        # out slots 1..r-2 are x's slots 0..r-3 (the spatial dims); slot r-1 is N
        cs.append(z3.Implies(x.rank == r, z3.And(*[o.dims[m] == x.dims[m - 1] for m in range(1, r - 1)],
                                                  o.dims[r - 1] == x.dims[r - 1],
                                                  *pad_ones(o, r))))
    return cs


view_op("permute", lambda a, p: f"{a[0]}.permute(0, *range(2, {a[0]}.dim()), 1).contiguous()", _permute_shape, (),
         "(N, C, *S) -> (N, *S, C), contiguous", min_rank=3)


def _flatten_shape(a, o, p, c):
    x = a[0]
    cs = [ranks(x, 3), o.rank == 2, o.dims[1] == x.left(0), *pad_ones(o, 2)]
    for r in range(3, MAX_RANK + 1):  # dims 1.. (from the left) are slots r-2 .. 0
        cs.append(z3.Implies(x.rank == r, o.dims[0] == z3.Product(*x.dims[: r - 1])))
    return cs


view_op("flatten", lambda a, p: f"torch.flatten({a[0]}, 1)", _flatten_shape, (), "torch.flatten(x, 1)", min_rank=3)


def _merge_last_shape(a, o, p, c):
    x = a[0]
    return [x.rank >= 2, o.rank == x.rank - 1, o.dims[0] == x.dims[0] * x.dims[1],
            *[o.dims[m] == x.dims[m + 1] for m in range(1, MAX_RANK - 1)], *pad_ones(o, MAX_RANK - 1)]


register(OpSpec(
    name="merge_last", category="shape", arity=1,
    call=lambda a, p: f"{a[0]}.reshape(*{a[0]}.shape[:-2], -1)",
    shape=_merge_last_shape, flops=lambda ins, o, p: 0, min_rank=2, out_range="first",
    doc="x.reshape(*x.shape[:-2], -1): merge the last two dims",
))


def _reshape_shape(a, o, p, c):
    # The sampler's form of a general reshape: the last dim split into (size / factor, factor).
    # Traced reshapes take any target shape (the node's shape; `call` reads p["_out"]).
    x, f = a[0], p["factor"]
    return [x.rank <= MAX_RANK - 1, o.rank == x.rank + 1, o.dims[0] == f, o.dims[1] * f == x.dims[0],
            o.dims[1] >= 2, *[o.dims[m] == x.dims[m - 1] for m in range(2, MAX_RANK)]]


register(OpSpec(
    name="reshape", category="shape", arity=1,
    call=lambda a, p: f"{a[0]}.reshape({', '.join(map(str, p['_out']))})",
    shape=_reshape_shape, flops=lambda ins, o, p: 0, params=(Param("factor", (2, 4)),), out_range="first",
    doc="x.reshape(*shape): same elements, row-major order, a new shape (drawn: the last dim split in two)",
))


def _cat_shape(a, o, p, c):
    x, y = a
    k = p["dim"] - 1
    return [x.rank == y.rank, x.rank >= p["dim"], *keep_except(x, o, [k]),
            *[x.dims[m] == y.dims[m] for m in range(MAX_RANK) if m != k], o.dims[k] == x.dims[k] + y.dims[k]]


register(OpSpec(
    name="concat", category="shape", arity=2,
    call=lambda a, p: f"torch.cat([{a[0]}, {a[1]}], dim={-p['dim']})",
    shape=_cat_shape, flops=lambda ins, o, p: 0, params=(Param("dim", (1, 2)),), out_range="min",
    doc="torch.cat([a, b], dim)",
))


def triangle(name: str, masked: str) -> OpSpec:
    """torch.tril / torch.triu: zero the elements on one side of the (last two dims') diagonal."""
    return OpSpec(
        name=name, category="where", arity=1,
        call=lambda a, p: f"torch.{name}({a[0]})",
        shape=lambda a, o, p, c: same_shape(a[0], o) + [a[0].rank >= 2, a[0].dims[0] >= 2, a[0].dims[1] >= 2],
        flops=per_out(1), min_rank=2, out_range=REAL, doc=f"torch.{name}(x): mask {masked} the diagonal",
    )


register(triangle("tril", "above"))


# x.masked_fill(mask <cmp> c, value): attention masks (``att.masked_fill(self.bias[:, :, :T, :T] == 0,
# float("-inf"))``); the mask broadcasts to x. The tracer maps any comparison and fill value (an
# infinite one included); the sampler draws finite fills.
MASK_CMPS = {"eq": "==", "ne": "!=", "lt": "<", "gt": ">", "le": "<=", "ge": ">="}


def number_literal(v: Any) -> str:
    """A Python literal of a number, infinities and NaN included."""
    f = float(v)
    return f"float({str(f)!r})" if f != f or f in (float("inf"), float("-inf")) else repr(v)


register(OpSpec(
    name="masked_fill_cmp", category="where", arity=2,
    call=lambda a, p: f"{a[0]}.masked_fill({a[1]} {MASK_CMPS[p['cmp']]} {number_literal(p['c'])}, {number_literal(p['value'])})",
    shape=lambda a, o, p, c: broadcast(a[0], a[1], o) + same_shape(a[0], o),
    flops=per_out(2), out_range=REAL,
    # not "lt" with c 0 and value 0: that is the catalog's masked_fill, which the tracer maps it to
    params=(Param("cmp", ("eq", "gt", "le")), Param("c", (0.0, 0.5)), Param("value", (0.0, -10000.0))),
    doc="x.masked_fill(mask <cmp> c, value), mask broadcast to x",
))
