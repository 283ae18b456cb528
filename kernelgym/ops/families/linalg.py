"""Linear algebra: `linear` (an op-owned weight), matmul of any rank against a matrix, bmm and
addmm, with their FLOP counts and log2 FLOP budgets."""

from __future__ import annotations

from typing import Any

import z3

from kernelgym.ops.registry import register
from kernelgym.ops.spec import MAX_RANK, REAL, OpSpec, Weight, keep_except, numel, pad_ones, ranks

# ---- linear algebra ------------------------------------------------------------------------------


def _product_flops(ins, o, p):
    """A product over the first input's last dim: a multiply and an add per output and term."""
    return 2 * numel(o) * ins[0][-1]


def _product_log_flops(a, o, p, c):
    return sum(o.logs) + a[0].logs[0] + 1


def _linear_shape(a, o, p, c):
    x = a[0]
    n = c.fresh("out_features")
    return keep_except(x, o, [0]) + [x.rank >= 2, o.dims[0] == n, c.log(n) + x.logs[0] <= c.max_log]


register(OpSpec(
    name="linear", category="matmul", arity=1,
    call=lambda a, p: f"F.linear({a[0]}, {p['_w']['weight']}, {p['_w']['bias']})",
    shape=_linear_shape,
    flops=_product_flops,
    weights=lambda ins, o, p: [Weight("weight", (o[-1], ins[0][-1]), "randn_scaled"), Weight("bias", (o[-1],), "randn")],
    min_rank=2, doc="F.linear(x, W, b) over the last dim",
    log_flops=_product_log_flops,
))


def _matmul_shape(a, o, p, c):
    # (..., M, K) @ (K, N): any rank against a matrix (KernelBench's 3-D and 4-D tensor-matrix products)
    x, y = a
    return [ranks(x, 2, MAX_RANK), y.rank == 2, x.dims[0] == y.dims[1], *keep_except(x, o, [0]),
            o.dims[0] == y.dims[0]]


def _product(name: str, shape: Any, min_rank: int, doc: str) -> OpSpec:
    """torch.<name>(a, b): a matrix product of two inputs."""
    return OpSpec(name=name, category="matmul", arity=2, call=lambda a, p: f"torch.{name}({a[0]}, {a[1]})",
                  shape=shape, flops=_product_flops, min_rank=min_rank, doc=doc, log_flops=_product_log_flops)


register(_product("matmul", _matmul_shape, 2, "torch.matmul of (..., M, K) and (K, N)"))


def _bmm_shape(a, o, p, c):
    x, y = a
    return [x.rank == 3, y.rank == 3, x.dims[2] == y.dims[2], x.dims[0] == y.dims[1], o.rank == 3,
            o.dims[2] == x.dims[2], o.dims[1] == x.dims[1], o.dims[0] == y.dims[0], *pad_ones(o, 3)]


register(_product("bmm", _bmm_shape, 3, "torch.bmm of (B, M, K) and (B, K, N)"))


def _addmm_shape(a, o, p, c):
    bias, x, y = a
    return _matmul_shape([x, y], o, p, c) + [
        x.rank == 2, ranks(bias, 1, 2), z3.Or(bias.dims[0] == o.dims[0], bias.dims[0] == 1),
        z3.Or(bias.dims[1] == o.dims[1], bias.dims[1] == 1),
    ]


register(OpSpec(
    name="addmm", category="matmul", arity=3,
    call=lambda a, p: f"torch.addmm({a[0]}, {a[1]}, {a[2]})",
    shape=_addmm_shape, flops=lambda ins, o, p: 2 * numel(o) * ins[1][-1] + numel(o), out_range=REAL,
    doc="torch.addmm(bias, (M, K), (K, N))", log_flops=lambda a, o, p, c: sum(o.logs) + a[1].logs[0] + 1,
))
