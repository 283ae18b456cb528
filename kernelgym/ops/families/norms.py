"""Normalisations: layer, RMS, batch (eval mode), group and instance norm, with their affine
weights."""

from __future__ import annotations

from typing import Any

from kernelgym.ops.registry import per_out, register
from kernelgym.ops.spec import OpSpec, Param, Weight, ranks, same_shape

# ---- normalisations ------------------------------------------------------------------------------


def _affine(size_of):
    def weights(ins, out, p):
        n = size_of(ins[0])
        return [Weight("weight", (n,), "randn"), Weight("bias", (n,), "randn")]

    return weights


register(OpSpec(
    name="layer_norm", category="norm", arity=1,
    call=lambda a, p: f"F.layer_norm({a[0]}, ({p['_in'][0][-1]},), {p['_w']['weight']}, {p['_w']['bias']}, eps=1e-5)",
    shape=lambda a, o, p, c: same_shape(a[0], o) + [a[0].rank >= 2, a[0].dims[0] >= 2],
    flops=per_out(8), weights=_affine(lambda s: s[-1]), min_rank=2, doc="F.layer_norm over the last dim",
))
register(OpSpec(
    name="rms_norm", category="norm", arity=1,
    call=lambda a, p: f"F.rms_norm({a[0]}, ({p['_in'][0][-1]},), {p['_w']['weight']}, eps=1e-6)",
    shape=lambda a, o, p, c: same_shape(a[0], o) + [a[0].rank >= 2, a[0].dims[0] >= 2],
    flops=per_out(5), weights=lambda ins, o, p: [Weight("weight", (ins[0][-1],), "randn")], min_rank=2,
    doc="F.rms_norm over the last dim",
))
register(OpSpec(
    name="batch_norm", category="norm", arity=1,
    call=lambda a, p: (f"F.batch_norm({a[0]}, {p['_w']['running_mean']}, {p['_w']['running_var']}, "
                       f"{p['_w']['weight']}, {p['_w']['bias']}, training=False, eps=1e-5)"),
    shape=lambda a, o, p, c: same_shape(a[0], o) + [ranks(a[0], 2)],
    flops=per_out(4),
    weights=lambda ins, o, p: [
        Weight("weight", (ins[0][1],), "randn"), Weight("bias", (ins[0][1],), "randn"),
        Weight("running_mean", (ins[0][1],), "randn", buffer=True),
        Weight("running_var", (ins[0][1],), "rand_pos", buffer=True),
    ],
    min_rank=2, doc="F.batch_norm in eval mode (running statistics) over channel dim 1",
))


def _group_norm_shape(a, o, p, c):
    x = a[0]
    ch = x.left(1)
    return same_shape(x, o) + [ranks(x, 3), ch % p["groups"] == 0, x.dims[0] >= 2]


register(OpSpec(
    name="group_norm", category="norm", arity=1,
    call=lambda a, p: f"F.group_norm({a[0]}, {p['groups']}, {p['_w']['weight']}, {p['_w']['bias']}, eps=1e-5)",
    shape=_group_norm_shape, flops=per_out(8), params=(Param("groups", (1, 2, 4, 8)),),
    weights=_affine(lambda s: s[1]), min_rank=3, doc="F.group_norm over (N, C, *) with C % groups == 0",
))
def _instance_norm_call(a: list[str], p: dict[str, Any]) -> str:
    if p.get("affine"):
        return f"F.instance_norm({a[0]}, weight={p['_w']['weight']}, bias={p['_w']['bias']}, eps=1e-5)"
    return f"F.instance_norm({a[0]}, eps=1e-5)"


register(OpSpec(
    name="instance_norm", category="norm", arity=1, call=_instance_norm_call,
    shape=lambda a, o, p, c: same_shape(a[0], o) + [ranks(a[0], 3), a[0].dims[0] >= 2],
    flops=per_out(8), params=(Param("affine", (False, True)),),
    weights=lambda ins, o, p: _affine(lambda s: s[1])(ins, o, p) if p.get("affine") else [],
    min_rank=3, doc="F.instance_norm over (N, C, *), with or without a per-channel affine",
))
