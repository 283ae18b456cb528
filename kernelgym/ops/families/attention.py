"""Contractions and attention: einsum over explicit equations that are (batched) matmuls, scaled
dot-product attention, and the triu mask."""

from __future__ import annotations

import z3

from kernelgym.ops.families.shape import triangle
from kernelgym.ops.registry import register
from kernelgym.ops.spec import MAX_RANK, REAL, OpSpec, Param, keep_except, numel, ranks

# ---- einsum, attention, triu ---------------------------------------------------------------------


def einsum_operands(eq: str) -> tuple[list[str], str]:
    """The operand subscripts and the output subscript of an explicit einsum equation
    ("bik,bkj->bij"); raises ValueError for an implicit output, an ellipsis or a letter repeated
    within one operand (diagonals), which no catalog rule covers."""
    if "->" not in eq or "." in eq:
        raise ValueError(f"einsum {eq!r}: only explicit equations without '...' are supported")
    lhs, out = eq.replace(" ", "").split("->")
    ins = lhs.split(",")
    for s in [*ins, out]:
        if not s.isalpha() or len(set(s)) != len(s):
            raise ValueError(f"einsum {eq!r}: subscripts must be distinct letters per operand")
    if set(out) - set("".join(ins)):
        raise ValueError(f"einsum {eq!r}: an output letter appears in no operand")
    return ins, out


def _einsum_shape(a, o, p, c):
    ins, out = einsum_operands(p["eq"])
    size: dict[str, z3.ArithRef] = {}
    cs = []
    for t, subs in [*zip(a, ins), (o, out)]:
        cs.append(t.rank == len(subs))
        for i, ch in enumerate(subs):
            slot = len(subs) - 1 - i
            if ch in size:
                cs.append(t.dims[slot] == size[ch])
            else:
                size[ch] = t.dims[slot]
        cs += [t.dims[m] == 1 for m in range(len(subs), MAX_RANK)]
    return cs


def _einsum_sizes(ins: list[tuple[int, ...]], eq: str) -> dict[str, int]:
    subs, _ = einsum_operands(eq)
    return {ch: d for s, shape in zip(subs, ins) for ch, d in zip(s, shape)}


def _einsum_flops(ins, o, p):
    subs, out = einsum_operands(p["eq"])
    sizes = _einsum_sizes(ins, p["eq"])
    summed = [ch for ch in sizes if ch not in out]
    return 2 * numel(o) * numel([sizes[ch] for ch in summed])


def _einsum_log_flops(a, o, p, c):
    subs, out = einsum_operands(p["eq"])
    seen: set[str] = set()
    logs = []
    for t, s in zip(a, subs):
        for i, ch in enumerate(s):
            if ch not in out and ch not in seen:
                seen.add(ch)
                logs.append(t.logs[len(s) - 1 - i])
    return sum(o.logs) + sum(logs) + 1


register(OpSpec(
    name="einsum", category="matmul", arity=2,
    call=lambda a, p: f'torch.einsum("{p["eq"]}", {a[0]}, {a[1]})',
    shape=_einsum_shape, flops=_einsum_flops,
    # contractions that are (batched) matmuls, as KernelBench writes them: a 4-D tensor times a
    # matrix, bmm, attention scores (q k^T) and outputs, and the transposed-operand products
    params=(Param("eq", ("bijl,lk->bijk", "bik,bkj->bij", "bhqd,bhkd->bhqk", "bhqk,bhkd->bhqd", "ik,jk->ij",
                         "ki,kj->ij")),),
    min_rank=2, doc="torch.einsum(eq, a, b): a contraction that is a (batched) matmul",
    log_flops=_einsum_log_flops,
))


def _sdpa_shape(a, o, p, c):
    # q (..., L, E), k (..., S, E), v (..., S, Ev) with the same leading dims -> (..., L, Ev)
    q, k, v = a
    cs = [ranks(q, 2, MAX_RANK), k.rank == q.rank, v.rank == q.rank, k.dims[0] == q.dims[0],
          v.dims[1] == k.dims[1], *keep_except(q, o, [0]), o.dims[0] == v.dims[0]]
    cs += [z3.And(k.dims[m] == q.dims[m], v.dims[m] == q.dims[m]) for m in range(2, MAX_RANK)]
    return cs


register(OpSpec(
    name="sdpa", category="matmul", arity=3,
    call=lambda a, p: f"F.scaled_dot_product_attention({a[0]}, {a[1]}, {a[2]}, is_causal={p['causal']})",
    shape=_sdpa_shape, params=(Param("causal", (False, True)),),
    flops=lambda ins, o, p: 2 * numel(ins[0][:-1]) * ins[1][-2] * (ins[0][-1] + ins[2][-1]) + 4 * numel(o),
    min_rank=2, out_range=REAL, doc="F.scaled_dot_product_attention(q, k, v, is_causal)",
    # lead * L * Ev (the output) * S * E, over-counting when Ev and E differ (a budget, not a count)
    log_flops=lambda a, o, p, c: sum(o.logs) + a[1].logs[1] + a[0].logs[0] + 2,
))
register(triangle("triu", "below"))
