"""Concrete shape inference with the catalog's z3 rules (no torch needed)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import z3

from kernelgym.ops import get_op
from kernelgym.ops.spec import MAX_RANK, RuleCtx, SymTensor, log_bucket


def _concrete(name: str, shape: Sequence[int], hi: int) -> tuple[SymTensor, list[z3.BoolRef]]:
    t = SymTensor(rank=z3.Int(f"{name}_r"), dims=tuple(z3.Int(f"{name}_d{k}") for k in range(MAX_RANK)),
                  logs=tuple(z3.Int(f"{name}_l{k}") for k in range(MAX_RANK)), range=z3.Int(f"{name}_v"))
    cs = [t.rank == len(shape), t.range == 0]
    right = list(reversed(shape)) + [1] * (MAX_RANK - len(shape))
    cs += [d == v for d, v in zip(t.dims, right)]
    cs += [log_bucket(d, lg, hi) for d, lg in zip(t.dims, t.logs)]
    return t, cs


def infer_shape(op_name: str, in_shapes: Sequence[Sequence[int]], params: dict[str, Any],
                fresh: dict[str, int] | None = None, hi: int = 1 << 20) -> tuple[int, ...] | None:
    """Output shape of `op_name` on inputs of `in_shapes`, or None if the rule rejects them.

    `fresh` fixes op-owned dims (e.g. ``{"out_features": 8}``); budgets are not applied.
    """
    op = get_op(op_name)
    if len(in_shapes) != op.arity:
        raise ValueError(f"{op_name} takes {op.arity} inputs, got {len(in_shapes)}")
    if any(len(s) < 1 or len(s) > MAX_RANK for s in in_shapes):
        return None
    solver = z3.Solver()
    args = []
    for j, shape in enumerate(in_shapes):
        t, cs = _concrete(f"in{j}", shape, hi)
        args.append(t)
        solver.add(*cs)
    out = SymTensor(rank=z3.Int("out_r"), dims=tuple(z3.Int(f"out_d{k}") for k in range(MAX_RANK)),
                    logs=tuple(z3.Int(f"out_l{k}") for k in range(MAX_RANK)), range=z3.Int("out_v"))
    solver.add(out.rank >= (0 if op.scalar_out else 1), out.rank <= MAX_RANK)
    solver.add(*[z3.Implies(out.rank <= k, out.dims[k] == 1) for k in range(MAX_RANK)])
    ctx = RuleCtx(prefix="infer", lo=1, hi=hi, max_log=10**6)
    solver.add(*op.shape(args, out, params, ctx), *ctx.extra)
    for name, value in (fresh or {}).items():
        if name not in ctx.fresh_vars:
            raise ValueError(f"{op_name} has no op-owned dim {name!r}")
        solver.add(ctx.fresh_vars[name] == value)
    if solver.check() != z3.sat:
        return None
    m = solver.model()
    rank = m.eval(out.rank).as_long()
    return tuple(m.eval(out.dims[k], model_completion=True).as_long() for k in reversed(range(rank)))
