"""The operator catalog: one `OpSpec` per PyTorch operator. Adding an op is one entry here.

Conventions for entries: `call` receives argument expressions and the parameter dict `p`, which
also holds ``p["_w"]`` (weight name -> ``self.<attr>`` expression), ``p["_in"]`` (input shapes)
and ``p["_out"]`` (output shape) at emission time. Reduction-like ``dim`` parameters count from
the right (1 = last dim), matching the right-aligned symbolic shapes of `spec.SymTensor`.
"""

from __future__ import annotations

from typing import Any

import z3

from kernelgym.ops.spec import (
    MAX_RANK,
    NONNEG,
    POSITIVE,
    REAL,
    OpSpec,
    Param,
    RuleCtx,
    SymTensor,
    Weight,
    broadcast,
    drop_slot,
    keep_except,
    numel,
    pad_ones,
    ranks,
    same_shape,
)

CATALOG: dict[str, OpSpec] = {}


def register(spec: OpSpec) -> OpSpec:
    if spec.name in CATALOG:
        raise ValueError(f"duplicate op {spec.name!r}")
    CATALOG[spec.name] = spec
    return spec


def _per_out(k: int):
    """FLOP estimate of k operations per output element."""
    return lambda ins, out, p: k * numel(out)


def _fmt(v: Any) -> str:
    return repr(v)


# ---- elementwise unary ---------------------------------------------------------------------------


def _unary(name: str, expr: str, flops: int = 1, domain: int = REAL, out: int | str = REAL,
           doc: str = "", params: tuple[Param, ...] = ()) -> None:
    def call(a: list[str], p: dict[str, Any]) -> str:
        return expr.format(a[0], **{k: _fmt(v) for k, v in p.items() if not k.startswith("_")})

    register(OpSpec(
        name=name, category="unary", arity=1, call=call,
        shape=lambda a, o, p, c: same_shape(a[0], o),
        flops=_per_out(flops), params=params, domain=(domain,), out_range=out, doc=doc or expr,
    ))


_unary("relu", "torch.relu({0})", out=NONNEG)
_unary("relu6", "F.relu6({0})", 2, out=NONNEG)
_unary("leaky_relu", "F.leaky_relu({0}, negative_slope={slope})", 2,
       params=(Param("slope", (0.01, 0.1, 0.2)),))
_unary("elu", "F.elu({0})", 4)
_unary("selu", "F.selu({0})", 5)
_unary("gelu", "F.gelu({0})", 8)
_unary("gelu_tanh", "F.gelu({0}, approximate='tanh')", 10)
_unary("silu", "F.silu({0})", 5)
_unary("mish", "F.mish({0})", 10)
_unary("sigmoid", "torch.sigmoid({0})", 4, out=POSITIVE)
_unary("logsigmoid", "F.logsigmoid({0})", 6)
_unary("hardsigmoid", "F.hardsigmoid({0})", 3, out=NONNEG)
_unary("hardswish", "F.hardswish({0})", 4)
_unary("hardtanh", "F.hardtanh({0}, min_val={lo}, max_val={hi})", 2,
       params=(Param("lo", (-1.0, -0.5)), Param("hi", (0.5, 1.0))))
_unary("softplus", "F.softplus({0})", 4, out=POSITIVE)
_unary("softsign", "F.softsign({0})", 3)
_unary("tanh", "torch.tanh({0})", 6)
_unary("exp", "torch.exp({0})", 4, out=POSITIVE)
_unary("expm1", "torch.expm1({0})", 4)
_unary("log", "torch.log({0})", 4, domain=POSITIVE)
_unary("log1p", "torch.log1p({0})", 4, domain=NONNEG, out=NONNEG)
_unary("sqrt", "torch.sqrt({0})", 2, domain=NONNEG, out=NONNEG)
_unary("rsqrt", "torch.rsqrt({0})", 2, domain=POSITIVE, out=POSITIVE)
_unary("reciprocal", "torch.reciprocal({0})", 1, domain=POSITIVE, out=POSITIVE)
_unary("abs", "torch.abs({0})", out=NONNEG)
_unary("neg", "torch.neg({0})")
_unary("square", "torch.square({0})", out=NONNEG)
_unary("sin", "torch.sin({0})", 8)
_unary("cos", "torch.cos({0})", 8)
_unary("erf", "torch.erf({0})", 8)


# ---- elementwise binary with broadcasting --------------------------------------------------------


def _binary(name: str, expr: str, category: str = "binary", flops: int = 1,
            domain: tuple[int, int] = (REAL, REAL), out: int | str = "min") -> None:
    register(OpSpec(
        name=name, category=category, arity=2,
        call=lambda a, p: expr.format(a[0], a[1]),
        shape=lambda a, o, p, c: broadcast(a[0], a[1], o),
        flops=_per_out(flops), domain=domain, out_range=out, doc=expr,
    ))


_binary("add", "{0} + {1}")
_binary("sub", "{0} - {1}", out=REAL)
_binary("mul", "{0} * {1}")
_binary("div", "{0} / {1}", domain=(REAL, POSITIVE), out="first")
_binary("maximum", "torch.maximum({0}, {1})")
_binary("minimum", "torch.minimum({0}, {1})")
_binary("where_gt", "torch.where({0} > 0, {0}, {1})", category="where", flops=2, out=REAL)
_binary("masked_fill", "{0}.masked_fill({1} < 0, 0.0)", category="where", flops=2, out=REAL)


# ---- scalar ops ----------------------------------------------------------------------------------


def _scalar(name: str, expr: str, param: Param, flops: int = 1) -> None:
    register(OpSpec(
        name=name, category="scalar", arity=1,
        call=lambda a, p: expr.format(a[0], c=_fmt(p[param.name])),
        shape=lambda a, o, p, c: same_shape(a[0], o),
        flops=_per_out(flops), params=(param,), out_range="first", doc=expr,
    ))


_scalar("add_scalar", "{0} + {c}", Param("c", (0.5, 1.0, 2.0)))
_scalar("mul_scalar", "{0} * {c}", Param("c", (0.5, 2.0, 3.0)))
_scalar("div_scalar", "{0} / {c}", Param("c", (0.7, 2.0, 3.0)))
_scalar("pow_scalar", "torch.pow({0}, {c})", Param("c", (2, 3)), flops=2)
register(OpSpec(
    name="clamp", category="scalar", arity=1,
    call=lambda a, p: f"torch.clamp({a[0]}, min={p['lo']!r}, max={p['hi']!r})",
    shape=lambda a, o, p, c: same_shape(a[0], o),
    flops=_per_out(2), params=(Param("lo", (-1.0, -0.5, 0.0)), Param("hi", (0.5, 1.0, 6.0))),
    doc="torch.clamp(x, min, max)",
))


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
        flops=_per_out(5), params=(Param("dim", (1, 2)),), out_range=out, doc=f"{fn}(x, dim)",
    ))


_softmax("softmax", "torch.softmax", POSITIVE)
_softmax("log_softmax", "torch.log_softmax", REAL)


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
    flops=_per_out(8), weights=_affine(lambda s: s[-1]), min_rank=2, doc="F.layer_norm over the last dim",
))
register(OpSpec(
    name="rms_norm", category="norm", arity=1,
    call=lambda a, p: f"F.rms_norm({a[0]}, ({p['_in'][0][-1]},), {p['_w']['weight']}, eps=1e-6)",
    shape=lambda a, o, p, c: same_shape(a[0], o) + [a[0].rank >= 2, a[0].dims[0] >= 2],
    flops=_per_out(5), weights=lambda ins, o, p: [Weight("weight", (ins[0][-1],), "randn")], min_rank=2,
    doc="F.rms_norm over the last dim",
))
register(OpSpec(
    name="batch_norm", category="norm", arity=1,
    call=lambda a, p: (f"F.batch_norm({a[0]}, {p['_w']['running_mean']}, {p['_w']['running_var']}, "
                       f"{p['_w']['weight']}, {p['_w']['bias']}, training=False, eps=1e-5)"),
    shape=lambda a, o, p, c: same_shape(a[0], o) + [ranks(a[0], 2)],
    flops=_per_out(4),
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
    shape=_group_norm_shape, flops=_per_out(8), params=(Param("groups", (1, 2, 4, 8)),),
    weights=_affine(lambda s: s[1]), min_rank=3, doc="F.group_norm over (N, C, *) with C % groups == 0",
))
def _instance_norm_call(a: list[str], p: dict[str, Any]) -> str:
    if p.get("affine"):
        return f"F.instance_norm({a[0]}, weight={p['_w']['weight']}, bias={p['_w']['bias']}, eps=1e-5)"
    return f"F.instance_norm({a[0]}, eps=1e-5)"


register(OpSpec(
    name="instance_norm", category="norm", arity=1, call=_instance_norm_call,
    shape=lambda a, o, p, c: same_shape(a[0], o) + [ranks(a[0], 3), a[0].dims[0] >= 2],
    flops=_per_out(8), params=(Param("affine", (False, True)),),
    weights=lambda ins, o, p: _affine(lambda s: s[1])(ins, o, p) if p.get("affine") else [],
    min_rank=3, doc="F.instance_norm over (N, C, *), with or without a per-channel affine",
))


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


# ---- convolutions --------------------------------------------------------------------------------

# Convolution variants: the windows KernelBench's convolutions use (levels 1-3: pointwise, "same" 3x3 and
# 5x5, strided downsampling, the 7x7 stride-2 stem, kernel == stride patches, dilated, asymmetric
# kernels / strides / paddings / dilations; transposed: 2x2 and 4x4 stride-2 upsampling, stride 2
# with output_padding 1, dilated), each with every (groups, bias) pair listed: a product of all
# choices would be hundreds of variants, each a case of the z3 model. Every variant fits the tiny
# size profile (tests/test_ops.py). Windows: (kernel, stride, padding, dilation); transposed
# windows: (kernel, stride, padding, output_padding, dilation).
_CONV_WINDOWS = {
    1: [(1, 1, 0, 1), (3, 1, 1, 1), (3, 1, 0, 1), (3, 2, 1, 1), (5, 1, 2, 1), (7, 2, 3, 1), (3, 3, 0, 4),
        (3, 1, 2, 2)],
    2: [(1, 1, 0, 1), (3, 1, 1, 1), (3, 1, 0, 1), (3, 2, 1, 1), (5, 1, 2, 1), (7, 2, 3, 1), (4, 4, 0, 1),
        (3, 1, 2, 2), ((3, 5), (1, 2), (1, 2), 1), ((5, 3), 1, (4, 2), (2, 1))],
    3: [(1, 1, 0, 1), (3, 1, 1, 1), (3, 1, 0, 1), (3, 2, 1, 1), (2, 2, 0, 1), (3, 1, 2, 2),
        ((3, 5, 7), 1, 0, 1), ((3, 3, 1), 1, (1, 1, 0), 1)],
}
_CONVT_WINDOWS = {
    1: [(2, 2, 0, 0, 1), (3, 1, 0, 0, 1), (3, 2, 1, 1, 1), (4, 2, 1, 0, 1), (5, 1, 2, 0, 1), (3, 2, 1, 0, 2),
        (5, 1, 0, 0, 3), (3, 3, 1, 2, 1), (7, 1, 3, 0, 1)],
    2: [(2, 2, 0, 0, 1), (3, 1, 0, 0, 1), (3, 2, 1, 1, 1), (4, 2, 1, 0, 1), (5, 1, 2, 0, 1), (3, 2, 1, 0, 2),
        ((3, 5), (2, 1), (1, 2), 0, (2, 1)), ((3, 7), 1, (1, 3), 0, 1)],
    3: [(2, 2, 0, 0, 1), (3, 1, 0, 0, 1), (3, 2, 1, 1, 1), (4, 2, 1, 0, 1), (3, 1, 1, 0, 1), (3, 2, 1, 0, 2),
        ((3, 5, 7), 1, 0, 0, 1), ((3, 5, 5), (2, 1, 1), (1, 2, 2), (1, 0, 0), 1)],
}
_CONV_GROUPS_BIAS = ((1, True), (1, False), (2, True), ("depthwise", False))
_CONVT_GROUPS_BIAS = ((1, True), (1, False), (2, True), (4, False))


def _conv_variants(spatial: int, transposed: bool) -> tuple[tuple[Param, ...], tuple[tuple[Any, ...], ...]]:
    """Params and combos of a convolution: each window with each (groups, bias) pair."""
    windows = (_CONVT_WINDOWS if transposed else _CONV_WINDOWS)[spatial]
    pairs = _CONVT_GROUPS_BIAS if transposed else _CONV_GROUPS_BIAS
    names = ("kernel", "stride", "padding", "output_padding", "dilation") if transposed else \
        ("kernel", "stride", "padding", "dilation")
    combos = tuple(win + pair for win in windows for pair in pairs)
    params = tuple(Param(n, tuple(dict.fromkeys(c[i] for c in combos)))
                   for i, n in enumerate((*names, "groups", "bias")))
    return params, combos


def conv_dims(v: Any, spatial: int) -> tuple[int, ...]:
    """A per-dim convolution parameter (one int for every spatial dim, or one per dim) as a tuple."""
    if isinstance(v, (tuple, list)):
        if len(v) != spatial:
            raise ValueError(f"expected {spatial} values (one per spatial dim), got {v!r}")
        return tuple(int(x) for x in v)
    return (int(v),) * spatial


def conv_groups(p: dict[str, Any], in_channels: int) -> int:
    """The `groups` of a convolution's parameters: an int, or ``"depthwise"`` (one group per input
    channel)."""
    g = p.get("groups", 1)
    return int(in_channels) if g == "depthwise" else int(g)


def _clog(n: int) -> int:
    """ceil(log2(n)) for n >= 1."""
    return (int(n) - 1).bit_length()


def _conv_window(p: dict[str, Any], spatial: int):
    """Per-dim kernel, stride, padding, dilation and output padding of a convolution's parameters."""
    return (conv_dims(p["kernel"], spatial), conv_dims(p.get("stride", 1), spatial),
            conv_dims(p.get("padding", 0), spatial), conv_dims(p.get("dilation", 1), spatial),
            conv_dims(p.get("output_padding", 0), spatial))


def _conv_shape(spatial: int, transposed: bool):
    """(N, C_in, *S) -> (N, C_out, *S'): C_out is op-owned (``out_channels``; equal to C_in for a
    depthwise convolution); both channel counts are multiples of `groups`; each spatial dim follows
    PyTorch's formula. Budgets: the weight's elements and the FLOPs, in log2 buckets."""
    def rule(a, o, p, c):
        x = a[0]
        ks, ss, ps, ds, ops = _conv_window(p, spatial)
        g = p.get("groups", 1)
        cin, cout = x.dims[spatial], c.fresh("out_channels")
        cs = [x.rank == spatial + 2, o.rank == spatial + 2, o.dims[spatial + 1] == x.dims[spatial + 1],
              o.dims[spatial] == cout, *pad_ones(o, spatial + 2)]
        window = sum(_clog(k) for k in ks)
        if g == "depthwise":  # weight (C, 1, *k)
            cs += [cout == cin, x.logs[spatial] + window <= c.max_log]
        else:  # weight (C_out, C_in / g, *k) or (C_in, C_out / g, *k): log2 g fewer elements
            cs += [c.log(cout) + x.logs[spatial] - _clog(g) + window <= c.max_log]
            if g > 1:
                cs += [cin % g == 0, cout % g == 0]
        for m in range(spatial):
            k, s, pad, d, op = ks[-1 - m], ss[-1 - m], ps[-1 - m], ds[-1 - m], ops[-1 - m]
            reach = d * (k - 1) + 1  # input positions one output reads, end to end
            if transposed:  # PyTorch: output padding below the stride or the dilation
                cs += [z3.BoolVal(op < max(s, d)), o.dims[m] == (x.dims[m] - 1) * s - 2 * pad + reach + op]
            else:
                cs += [x.dims[m] + 2 * pad >= reach, o.dims[m] == (x.dims[m] + 2 * pad - reach) / s + 1]
        return cs

    return rule


def _conv_log_flops(spatial: int, transposed: bool):
    """log2 FLOPs: 2 x (the tensor each window runs over) x (channels a group reduces or scatters
    into) x (window size)."""
    def log_flops(a, o, p, c):
        x = a[0]
        ks = conv_dims(p["kernel"], spatial)
        g = p.get("groups", 1)
        window = sum(_clog(k) for k in ks)
        if g == "depthwise":
            per = 0
        elif transposed:
            cout = c.fresh_vars["out_channels"] if "out_channels" in c.fresh_vars else c.fresh("out_channels")
            per = c.log(cout) - _clog(g)
        else:
            per = x.logs[spatial] - _clog(g)
        return sum(x.logs if transposed else o.logs) + per + window + 1

    return log_flops


def _conv_flops(spatial: int, transposed: bool):
    def flops(ins, o, p):
        x = ins[0]
        g = conv_groups(p, x[1])
        window = numel(conv_dims(p["kernel"], spatial))
        if transposed:  # each input element scatters into a window of each of its group's outputs
            return 2 * numel(x) * (o[1] // g) * window
        return 2 * numel(o) * (x[1] // g) * window

    return flops


def _conv_weights(spatial: int, transposed: bool):
    def weights(ins, o, p):
        cin, cout = ins[0][1], o[1]
        g = conv_groups(p, cin)
        shape = (cin, cout // g) if transposed else (cout, cin // g)
        ws = [Weight("weight", shape + conv_dims(p["kernel"], spatial), "randn_scaled")]
        if p.get("bias", True):
            ws.append(Weight("bias", (cout,), "randn"))
        return ws

    return weights


def _conv_call(fn: str, spatial: int, transposed: bool):
    def call(a, p):
        x = p["_in"][0] if "_in" in p else None
        args = [a[0], p["_w"]["weight"], p["_w"]["bias"] if p.get("bias", True) else "None",
                f"stride={p.get('stride', 1)!r}", f"padding={p.get('padding', 0)!r}"]
        if transposed:
            args.append(f"output_padding={p.get('output_padding', 0)!r}")
        g = p.get("groups", 1)
        args.append(f"groups={conv_groups(p, x[1]) if x is not None else g!r}")
        args.append(f"dilation={p.get('dilation', 1)!r}")
        return f"{fn}({', '.join(args)})"

    return call


def _conv(name: str, fn: str, spatial: int, transposed: bool) -> None:
    params, combos = _conv_variants(spatial, transposed)
    register(OpSpec(
        name=name, category="conv", arity=1, call=_conv_call(fn, spatial, transposed),
        shape=_conv_shape(spatial, transposed), flops=_conv_flops(spatial, transposed), params=params, combos=combos,
        weights=_conv_weights(spatial, transposed), min_rank=spatial + 2, out_range=REAL,
        doc=f"{fn} (stride, padding, {'output_padding, ' if transposed else ''}groups, dilation, optional bias)",
        log_flops=_conv_log_flops(spatial, transposed),
    ))


_conv("conv1d", "F.conv1d", 1, False)
_conv("conv2d", "F.conv2d", 2, False)
_conv("conv3d", "F.conv3d", 3, False)
_conv("conv_transpose1d", "F.conv_transpose1d", 1, True)
_conv("conv_transpose2d", "F.conv_transpose2d", 2, True)
_conv("conv_transpose3d", "F.conv_transpose3d", 3, True)


# ---- pooling -------------------------------------------------------------------------------------
# Window parameters may be one int or a tuple (one value per spatial dim, from the left), as in
# torch; the sampler draws ints, the tracer records what the reference passed.
_MAX_POOL_PARAMS = (Param("kernel", (2, 3)), Param("stride", (1, 2)), Param("padding", (0, 1)),
                    Param("dilation", (1, 2)), Param("ceil_mode", (False, True)))
_AVG_POOL_PARAMS = (Param("kernel", (2, 3)), Param("stride", (1, 2)), Param("padding", (0, 1)),
                    Param("ceil_mode", (False, True)), Param("count_include_pad", (True, False)))


def per_dim(v: Any, spatial: int, name: str = "value") -> tuple[int, ...]:
    """A pool / window parameter as one int per spatial dim (from the left)."""
    if isinstance(v, (tuple, list)):
        if len(v) == 1:
            return (int(v[0]),) * spatial
        if len(v) != spatial:
            raise ValueError(f"{name} {tuple(v)} has {len(v)} values for {spatial} spatial dims")
        return tuple(int(x) for x in v)
    return (int(v),) * spatial


def pool_window(p: dict[str, Any], spatial: int) -> dict[str, tuple[int, ...]]:
    """Per-dim kernel, stride (default: the kernel), padding and dilation of a pool's params."""
    k = per_dim(p["kernel"], spatial, "kernel")
    s = p.get("stride")
    return {"kernel": k, "stride": k if s in (None, (), []) else per_dim(s, spatial, "stride"),
            "padding": per_dim(p.get("padding", 0), spatial, "padding"),
            "dilation": per_dim(p.get("dilation", 1), spatial, "dilation")}


def pool_out_size(size: int, k: int, s: int, pad: int, dil: int, ceil: bool) -> int:
    """torch's pooled length of a `size`-long dim (ceil_mode: a last window must start inside the
    input or its left padding)."""
    span = size + 2 * pad - dil * (k - 1) - 1
    out = (span + (s - 1 if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= size + pad:
        out -= 1
    return out


def _pool_shape(spatial: int, whole_kernel: bool = False):
    """whole_kernel: every input dim holds a whole kernel, padding aside (torch's avg_pool3d)."""
    def rule(a, o, p, c):
        x = a[0]
        win = pool_window(p, spatial)
        ceil = bool(p.get("ceil_mode", False))
        cs = [x.rank == spatial + 2, *keep_except(x, o, list(range(spatial)))]
        for m in range(spatial):
            d = spatial - 1 - m  # slot m from the right is spatial dim d from the left
            k, s, pad, dil = (win[key][d] for key in ("kernel", "stride", "padding", "dilation"))
            span = x.dims[m] + 2 * pad - dil * (k - 1) - 1  # may be negative under ceil_mode
            cs.append(o.dims[m] >= 1)
            if whole_kernel:
                cs.append(x.dims[m] >= k)
            if ceil:
                up = (span + s - 1) / s + 1
                cs.append(o.dims[m] == z3.If((up - 1) * s >= x.dims[m] + pad, up - 1, up))
            else:
                cs.append(o.dims[m] == span / s + 1)
        return cs

    return rule


def _pool_call(fn: str, spatial: int, is_max: bool):
    def call(a: list[str], p: dict[str, Any]) -> str:
        args = [f"kernel_size={p['kernel']!r}", f"stride={p.get('stride') or p['kernel']!r}",
                f"padding={p.get('padding', 0)!r}"]
        if is_max and p.get("dilation", 1) != 1:
            args.append(f"dilation={p['dilation']!r}")
        if p.get("ceil_mode"):
            args.append("ceil_mode=True")
        if not is_max and not p.get("count_include_pad", True):
            args.append("count_include_pad=False")
        if not is_max and p.get("divisor_override") is not None:
            args.append(f"divisor_override={p['divisor_override']!r}")
        return f"{fn}({a[0]}, {', '.join(args)})"

    return call


def _window_volume(p: dict[str, Any], spatial: int) -> int:
    return numel(per_dim(p["kernel"], spatial, "kernel"))


def _pool(name: str, fn: str, spatial: int) -> None:
    is_max = name.startswith("max")
    register(OpSpec(
        name=name, category="pool", arity=1, call=_pool_call(fn, spatial, is_max),
        shape=_pool_shape(spatial, whole_kernel=spatial == 3 and not is_max),
        flops=lambda ins, o, p: numel(o) * _window_volume(p, spatial),
        params=_MAX_POOL_PARAMS if is_max else _AVG_POOL_PARAMS, min_rank=spatial + 2, out_range="first",
        doc=(f"{fn}(x, kernel_size, stride, padding, " + ("dilation, ceil_mode)" if is_max else
             "ceil_mode, count_include_pad)") + (": padding is -inf" if is_max else "")),
        log_flops=lambda a, o, p, c: sum(o.logs) + _window_volume(p, spatial).bit_length(),
    ))


for _sp in (1, 2, 3):
    _pool(f"max_pool{_sp}d", f"F.max_pool{_sp}d", _sp)
    _pool(f"avg_pool{_sp}d", f"F.avg_pool{_sp}d", _sp)


def _adaptive_global(spatial: int) -> None:
    name = f"adaptive_avg_pool{spatial}d"

    def rule(a, o, p, c):
        x = a[0]
        return [x.rank == spatial + 2, *keep_except(x, o, list(range(spatial))),
                *[o.dims[m] == 1 for m in range(spatial)], z3.Or(*[x.dims[m] >= 2 for m in range(spatial)])]

    register(OpSpec(
        name=name, category="pool", arity=1, call=lambda a, p: f"F.{name}({a[0]}, 1)",
        shape=rule, flops=lambda ins, o, p: numel(ins[0]), min_rank=spatial + 2, out_range="first",
        doc=f"F.{name}(x, 1): global average pool",
    ))


def adaptive_windows(size: int, out: int) -> list[tuple[int, int]]:
    """[start, end) of each of the `out` windows torch's adaptive pools average over a `size`-long
    dim: floor(i * size / out) to ceil((i + 1) * size / out)."""
    return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


def _adaptive_sized(spatial: int) -> None:
    name = f"adaptive_avg_pool{spatial}d_windows"
    fn = f"F.adaptive_avg_pool{spatial}d"

    def rule(a, o, p, c):
        x = a[0]
        size = per_dim(p["size"], spatial, "size")
        return [x.rank == spatial + 2, *keep_except(x, o, list(range(spatial))),
                *[o.dims[m] == size[spatial - 1 - m] for m in range(spatial)],
                *[x.dims[m] >= 2 for m in range(spatial)]]

    def flops(ins, o, p):
        vol = 1
        for d in range(spatial):
            vol *= max(e - s for s, e in adaptive_windows(ins[0][2 + d], o[2 + d]))
        return numel(o) * vol

    register(OpSpec(
        name=name, category="pool", arity=1, call=lambda a, p: f"{fn}({a[0]}, {p['size']!r})",
        shape=rule, flops=flops, params=(Param("size", (2, 3)),), min_rank=spatial + 2, out_range="first",
        doc=f"{fn}(x, size) to an output size other than 1: each output averages its own window",
    ))


for _sp in (1, 2, 3):
    _adaptive_global(_sp)
    _adaptive_sized(_sp)


# ---- cumulative ----------------------------------------------------------------------------------


def _scan_call(expr: str, identity: str | None):
    """The torch expression of a scan along ``dim`` (from the right), optionally reversed (a suffix
    scan: flip, scan, flip) and / or exclusive (each output leaves out its own element: the scan of
    all but the last element, after an `identity`-filled first slot; KernelBench's idiom)."""

    def call(a: list[str], p: dict[str, Any]) -> str:
        x, d = a[0], -p["dim"]
        scan = lambda t: expr.format(t, dim=d)  # noqa: E731
        rev, exc = bool(p.get("reverse")), bool(p.get("exclusive"))
        if not exc:
            return f"{scan(f'{x}.flip({d})')}.flip({d})" if rev else scan(x)
        n = p["_in"][0][d]
        fill = f"torch.{identity}_like({x}.narrow({d}, 0, 1))"
        if rev:
            return f"torch.cat([{scan(f'{x}.narrow({d}, 1, {n - 1}).flip({d})')}.flip({d}), {fill}], dim={d})"
        return f"torch.cat([{fill}, {scan(f'{x}.narrow({d}, 0, {n - 1})')}], dim={d})"

    return call


def _cumulative(name: str, expr: str, out: int | str = "first", flops: int = 1, identity: str | None = None) -> None:
    """A scan along one dim. `identity` ("zeros" / "ones") allows exclusive scans."""
    params = (Param("dim", (1, 2)), Param("reverse", (False, True)))
    if identity:
        params += (Param("exclusive", (False, True)),)
    register(OpSpec(
        name=name, category="cumulative", arity=1,
        call=_scan_call(expr, identity),
        shape=lambda a, o, p, c: same_shape(a[0], o) + [a[0].rank >= p["dim"], a[0].dims[p["dim"] - 1] >= 2],
        flops=_per_out(flops), params=params, out_range=out,
        doc=expr + " (reverse: a suffix scan" + (", exclusive: without the element itself)" if identity else ")"),
    ))


_cumulative("cumsum", "torch.cumsum({0}, dim={dim})", identity="zeros")
_cumulative("cumprod", "torch.cumprod({0}, dim={dim})", identity="ones")
_cumulative("cummax", "torch.cummax({0}, dim={dim}).values")
_cumulative("logcumsumexp", "torch.logcumsumexp({0}, dim={dim})", out=REAL, flops=4)


# ---- shape ops (data movement) -------------------------------------------------------------------


def _view_op(name: str, call: Any, shape: Any, params: tuple[Param, ...], doc: str, min_rank: int = 1,
             category: str = "shape") -> None:
    """Register a data-movement op of one input: no FLOPs, its output values are the input's."""
    register(OpSpec(name=name, category=category, arity=1, call=call, shape=shape, flops=lambda ins, o, p: 0,
                    params=params, min_rank=min_rank, out_range="first", doc=doc))


def _transpose_shape(a, o, p, c):
    x = a[0]
    return [x.rank >= 2, *keep_except(x, o, [0, 1]), o.dims[0] == x.dims[1], o.dims[1] == x.dims[0]]


_view_op("transpose", lambda a, p: f"{a[0]}.transpose(-1, -2).contiguous()", _transpose_shape, (),
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


_view_op("permute", lambda a, p: f"{a[0]}.permute(0, *range(2, {a[0]}.dim()), 1).contiguous()", _permute_shape, (),
         "(N, C, *S) -> (N, *S, C), contiguous", min_rank=3)


def _flatten_shape(a, o, p, c):
    x = a[0]
    cs = [ranks(x, 3), o.rank == 2, o.dims[1] == x.left(0), *pad_ones(o, 2)]
    for r in range(3, MAX_RANK + 1):  # dims 1.. (from the left) are slots r-2 .. 0
        cs.append(z3.Implies(x.rank == r, o.dims[0] == z3.Product(*x.dims[: r - 1])))
    return cs


_view_op("flatten", lambda a, p: f"torch.flatten({a[0]}, 1)", _flatten_shape, (), "torch.flatten(x, 1)", min_rank=3)


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


def _triangle(name: str, masked: str) -> OpSpec:
    """torch.tril / torch.triu: zero the elements on one side of the (last two dims') diagonal."""
    return OpSpec(
        name=name, category="where", arity=1,
        call=lambda a, p: f"torch.{name}({a[0]})",
        shape=lambda a, o, p, c: same_shape(a[0], o) + [a[0].rank >= 2, a[0].dims[0] >= 2, a[0].dims[1] >= 2],
        flops=_per_out(1), min_rank=2, out_range=REAL, doc=f"torch.{name}(x): mask {masked} the diagonal",
    )


register(_triangle("tril", "above"))


# x.masked_fill(mask <cmp> c, value): attention masks (``att.masked_fill(self.bias[:, :, :T, :T] == 0,
# float("-inf"))``); the mask broadcasts to x. The tracer maps any comparison and fill value (an
# infinite one included); the sampler draws finite fills.
MASK_CMPS = {"eq": "==", "ne": "!=", "lt": "<", "gt": ">", "le": "<=", "ge": ">="}


def _num(v: Any) -> str:
    """A Python literal of a number, infinities and NaN included."""
    f = float(v)
    return f"float({str(f)!r})" if f != f or f in (float("inf"), float("-inf")) else repr(v)


register(OpSpec(
    name="masked_fill_cmp", category="where", arity=2,
    call=lambda a, p: f"{a[0]}.masked_fill({a[1]} {MASK_CMPS[p['cmp']]} {_num(p['c'])}, {_num(p['value'])})",
    shape=lambda a, o, p, c: broadcast(a[0], a[1], o) + same_shape(a[0], o),
    flops=_per_out(2), out_range=REAL,
    # not "lt" with c 0 and value 0: that is the catalog's masked_fill, which the tracer maps it to
    params=(Param("cmp", ("eq", "gt", "le")), Param("c", (0.0, 0.5)), Param("value", (0.0, -10000.0))),
    doc="x.masked_fill(mask <cmp> c, value), mask broadcast to x",
))


# ---- gather / embedding --------------------------------------------------------------------------


def _embedding_shape(a, o, p, c):
    idx = a[0]
    emb = c.fresh("embedding_dim")
    vocab = c.fresh("num_embeddings")
    cs = [ranks(idx, 1, 3), o.rank == idx.rank + 1, o.dims[0] == emb, vocab >= 2,
          c.log(vocab) + c.log(emb) <= c.max_log]
    cs += [o.dims[m + 1] == idx.dims[m] for m in range(MAX_RANK - 1)]
    return cs


register(OpSpec(
    name="embedding", category="gather", arity=1,
    call=lambda a, p: f"F.embedding({a[0]}, {p['_w']['weight']})",
    shape=_embedding_shape, flops=lambda ins, o, p: 0, index_args=(0,),
    index_bound=lambda ins, o, p: p["_fresh"]["num_embeddings"],
    weights=lambda ins, o, p: [Weight("weight", (p["_fresh"]["num_embeddings"], o[-1]), "randn")],
    doc="F.embedding(indices, W)",
))


def _gather_shape(a, o, p, c):
    x, idx = a
    return [x.rank == idx.rank, x.dims[0] >= 2, idx.dims[0] <= x.dims[0],
            *[idx.dims[m] == x.dims[m] for m in range(1, MAX_RANK)], *same_shape(idx, o)]


register(OpSpec(
    name="gather", category="gather", arity=2,
    call=lambda a, p: f"torch.gather({a[0]}, -1, {a[1]})",
    shape=_gather_shape, flops=lambda ins, o, p: 0, index_args=(1,),
    index_bound=lambda ins, o, p: ins[0][-1], out_range="first",
    doc="torch.gather(x, -1, indices)",
))


# ---- the matmul / attention / view family: einsum, attention, triu, views and copies -------------
# Slot parameters (`dim`) count from the right, 1 = the last dim, as the reductions' do.


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
register(_triangle("triu", "below"))


def _unsqueeze_shape(a, o, p, c):
    x, k = a[0], p["dim"] - 1
    cs = [o.rank == x.rank + 1, x.rank + 1 >= p["dim"], x.rank <= MAX_RANK - 1, o.dims[k] == 1]
    cs += [o.dims[m] == (x.dims[m] if m < k else x.dims[m - 1]) for m in range(MAX_RANK) if m != k]
    return cs


_SLOT = Param("dim", (1, 2))
_view_op("unsqueeze", lambda a, p: f"{a[0]}.unsqueeze({-p['dim']})", _unsqueeze_shape, (Param("dim", (1, 2, 3)),),
         "x.unsqueeze(-dim): a new size-1 dim")
_view_op("squeeze", lambda a, p: f"{a[0]}.squeeze({-p['dim']})",
         lambda a, o, p, c: [a[0].rank >= max(p["dim"], 2), a[0].dims[p["dim"] - 1] == 1,
                             *drop_slot(a[0], o, p["dim"] - 1)],
         (Param("dim", (1, 2, 3)),), "x.squeeze(-dim): drop a size-1 dim", min_rank=2)
_view_op("clone", lambda a, p: f"{a[0]}.clone()", lambda a, o, p, c: same_shape(a[0], o), (), "x.clone()")
_view_op("flip", lambda a, p: f"torch.flip({a[0]}, dims=({-p['dim']},))",
         lambda a, o, p, c: same_shape(a[0], o) + [a[0].rank >= p["dim"], a[0].dims[p["dim"] - 1] >= 2],
         (_SLOT,), "torch.flip(x, dims=(-dim,))")


def _narrow_shape(a, o, p, c):
    # length = size - drop, starting at `start` (so start <= drop)
    x, k = a[0], p["dim"] - 1
    if p["start"] > p["drop"]:
        return [z3.BoolVal(False)]
    return [x.rank >= p["dim"], *keep_except(x, o, [k]), o.dims[k] == x.dims[k] - p["drop"], o.dims[k] >= 1]


_view_op("narrow", lambda a, p: f"{a[0]}.narrow({-p['dim']}, {p['start']}, {p['_out'][-p['dim']]})", _narrow_shape,
         (_SLOT, Param("start", (0, 1)), Param("drop", (1, 2))),
         "x.narrow(-dim, start, size - drop): a slice of one dim")
_view_op("select", lambda a, p: f"{a[0]}.select({-p['dim']}, {p['index']})",
         lambda a, o, p, c: [a[0].rank >= max(p["dim"], 2), a[0].dims[p["dim"] - 1] > p["index"],
                             *drop_slot(a[0], o, p["dim"] - 1)],
         (_SLOT, Param("index", (0, 1))), "x.select(-dim, index): one index of a dim, the dim dropped", min_rank=2)


def _expand_shape(a, o, p, c):
    x, k = a[0], p["dim"] - 1
    n = c.fresh("size")
    return [x.rank >= p["dim"], x.dims[k] == 1, *keep_except(x, o, [k]), o.dims[k] == n, n >= 2]


_view_op("expand", lambda a, p: f"{a[0]}.expand({', '.join(map(str, p['_out']))})", _expand_shape, (_SLOT,),
         "x.expand(*shape): a size-1 dim broadcast to a size (a view)")


def _repeat_call(a: list[str], p: dict[str, Any]) -> str:
    rank, dim = len(p["_in"][0]), p["dim"]
    reps = [1] * rank
    reps[rank - dim] = p["times"]
    return f"{a[0]}.repeat({', '.join(map(str, reps))})"


_view_op("repeat", _repeat_call,
         lambda a, o, p, c: [a[0].rank >= p["dim"], *keep_except(a[0], o, [p["dim"] - 1]),
                             o.dims[p["dim"] - 1] == a[0].dims[p["dim"] - 1] * p["times"]],
         (_SLOT, Param("times", (2, 3))), "x.repeat(...): one dim tiled `times` times")


def _pad_shape(a, o, p, c):
    # F.pad's order: (before, after) pairs from the last dim inwards, i.e. slot 0 first
    x, pads = a[0], p["pads"]
    k = len(pads) // 2
    if len(pads) % 2 or k > MAX_RANK or min(pads) < 0:
        return [z3.BoolVal(False)]
    return [x.rank >= k, *keep_except(x, o, list(range(k))),
            *[o.dims[m] == x.dims[m] + pads[2 * m] + pads[2 * m + 1] for m in range(k)]]


register(OpSpec(
    name="pad", category="shape", arity=1,
    call=lambda a, p: f"F.pad({a[0]}, {list(p['pads'])!r}, value={_num(p.get('value', 0.0))})",
    shape=_pad_shape, flops=lambda ins, o, p: 0, out_range=REAL,
    params=(Param("pads", ((1, 1), (0, 2), (1, 0, 0, 1), (2, 2, 1, 1))), Param("value", (0.0, 1.0))),
    doc="F.pad(x, pads, value=v): constant padding (non-negative), last dim first",
))

# ---- losses --------------------------------------------------------------------------------------
# Each returns a 0-d tensor (`OpSpec.scalar_out`), so it ends a program: the sampler never feeds it
# to another op. The compiler lowers a loss as the catalog ops it is made of (policies/compiler/
# composite.py), fused as usual.


def _scalar_out(o: SymTensor) -> list[z3.BoolRef]:
    return [o.rank == 0, *[o.dims[m] == 1 for m in range(MAX_RANK)]]


def _pair_loss_shape(a, o, p, c):
    x, y = a
    return same_shape(x, y) + _scalar_out(o)


def _loss(name: str, call, arity: int, shape, flops: int, params: tuple[Param, ...], doc: str,
          domain: tuple[int, ...] = (), **kw: Any) -> None:
    register(OpSpec(
        name=name, category="loss", arity=arity, call=call, shape=shape,
        flops=lambda ins, o, p: flops * numel(ins[0]), params=params, domain=domain, out_range=NONNEG,
        scalar_out=True, doc=doc, **kw,
    ))


_REDUCTIONS = Param("reduction", ("mean", "sum"))
_loss("mse_loss", lambda a, p: f"F.mse_loss({a[0]}, {a[1]}, reduction={p['reduction']!r})", 2,
      _pair_loss_shape, 3, (_REDUCTIONS,), "F.mse_loss(input, target)")
_loss("smooth_l1_loss",
      lambda a, p: f"F.smooth_l1_loss({a[0]}, {a[1]}, reduction={p['reduction']!r}, beta={p['beta']!r})", 2,
      _pair_loss_shape, 5, (_REDUCTIONS, Param("beta", (1.0, 0.5))), "F.smooth_l1_loss(input, target) (Huber)")
# KernelBench's form: F.kl_div(torch.log(p), q, reduction='batchmean'); the target must be positive
_loss("kl_div", lambda a, p: f"F.kl_div({a[0]}, {a[1]}, reduction={p['reduction']!r})", 2,
      _pair_loss_shape, 4, (Param("reduction", ("batchmean", "sum")),),
      "F.kl_div(log_input, target) (target > 0)", domain=(REAL, POSITIVE))


def _cross_entropy_shape(a, o, p, c):
    x, t = a
    return [x.rank == 2, t.rank == 1, t.dims[0] == x.dims[1], x.dims[0] >= 2, *_scalar_out(o)]


_loss("cross_entropy", lambda a, p: f"F.cross_entropy({a[0]}, {a[1]}, reduction={p['reduction']!r})", 2,
      _cross_entropy_shape, 6, (_REDUCTIONS,), "F.cross_entropy(logits (N, C), int64 targets (N,))",
      index_args=(1,), index_bound=lambda ins, o, p: ins[0][-1], min_rank=2)


def _triplet_shape(a, o, p, c):
    x, y, z = a
    return [x.rank == 2, *same_shape(x, y)[1:], *same_shape(x, z)[1:], y.rank == 2, z.rank == 2, *_scalar_out(o)]


_loss("triplet_margin_loss",
      lambda a, p: f"F.triplet_margin_loss({a[0]}, {a[1]}, {a[2]}, margin={p['margin']!r}, reduction={p['reduction']!r})",
      3, _triplet_shape, 8, (Param("margin", (1.0, 0.5)), _REDUCTIONS),
      "F.triplet_margin_loss(anchor, positive, negative) over (N, D) rows", min_rank=2)


def _cosine_shape(a, o, p, c):
    x, y = a
    return same_shape(x, y) + [x.rank >= p["dim"], *drop_slot(x, o, p["dim"] - 1)]


# Not a loss itself (one value per row, consumable), but what cosine-similarity losses are made of:
# ``torch.mean(1 - F.cosine_similarity(a, b))``.
register(OpSpec(
    name="cosine_similarity", category="reduction", arity=2,
    call=lambda a, p: f"F.cosine_similarity({a[0]}, {a[1]}, dim={-p['dim']})",
    shape=_cosine_shape, flops=lambda ins, o, p: 6 * numel(ins[0]), params=(Param("dim", (1, 2)),),
    out_range=REAL, scalar_out=True, doc="F.cosine_similarity(x1, x2, dim) of same-shape tensors",
))


# ---- recurrent layers ----------------------------------------------------------------------------
# nn.LSTM / nn.GRU / nn.RNN as one op each over (x, h0[, c0]) with torch's weights
# (``weight_ih_l{k}[_reverse]``, ``weight_hh_l{k}...``, ``bias_ih_l{k}...``, ``bias_hh_l{k}...``).
# A catalog op has one tensor result, so the tuple a layer returns is modelled by the `result`
# parameter: "output" (the last layer's h at every step: (T, B, D*H), (B, T, D*H) batch-first),
# "h_n" (the last step's h of every layer and direction: (L*D, B, H)) or, for the LSTM, "c_n"
# (the last cell states). A traced ``out, (h, c) = self.lstm(x, (h0, c0))`` whose out and h are
# both used becomes two nodes of the same inputs and weights. The gates (PyTorch's documented
# equations; gate rows in torch's order): LSTM i, f, g, o with c' = f c + i g, h' = o tanh(c');
# GRU r, z, n with n = tanh(W_in x + b_in + r (W_hn h + b_hn)), h' = (1 - z) n + z h;
# RNN h' = act(W_ih x + b_ih + W_hh h + b_hh), act tanh or relu. Eval mode: dropout never applies.
RECURRENT_GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def recurrent_weight_names(layers: int, bidirectional: bool, bias: bool) -> list[str]:
    """torch's flat parameter names of a recurrent layer, in its order (layer, direction, ih/hh)."""
    out = []
    for k in range(layers):
        for sfx in ("", "_reverse") if bidirectional else ("",):
            out += [f"weight_ih_l{k}{sfx}", f"weight_hh_l{k}{sfx}"]
            out += [f"bias_ih_l{k}{sfx}", f"bias_hh_l{k}{sfx}"] if bias else []
    return out


def _recurrent_weights(op: str):
    def weights(ins, out, p):
        gates, hidden = RECURRENT_GATES[op], ins[1][-1]
        d = 2 if p["bidirectional"] else 1
        ws = []
        for name in recurrent_weight_names(p["layers"], p["bidirectional"], p["bias"]):
            k = int(name.split("_l", 1)[1].split("_", 1)[0])
            if name.startswith("weight_ih"):
                ws.append(Weight(name, (gates * hidden, ins[0][-1] if k == 0 else d * hidden), "randn_scaled"))
            elif name.startswith("weight_hh"):
                ws.append(Weight(name, (gates * hidden, hidden), "randn_scaled"))
            else:
                ws.append(Weight(name, (gates * hidden,), "randn_scaled"))
        return ws

    return weights


def _recurrent_shape(a, o, p, c):
    # x (T, B, I) or (B, T, I); h0 [c0] (L*D, B, H)
    x, h = a[0], a[1]
    d = 2 if p["bidirectional"] else 1
    batch = x.dims[2] if p["batch_first"] else x.dims[1]
    cs = [x.rank == 3, h.rank == 3, h.dims[2] == p["layers"] * d, h.dims[1] == batch,
          *pad_ones(x, 3), *pad_ones(h, 3),
          # the weights (gates * H by I, H or D*H) within the size budget
          h.logs[0] + x.logs[0] + 2 <= c.max_log, 2 * h.logs[0] + 3 <= c.max_log]
    for t in a[2:]:
        cs += same_shape(h, t)
    if p["result"] == "output":
        cs += [o.rank == 3, o.dims[0] == d * h.dims[0], o.dims[1] == x.dims[1], o.dims[2] == x.dims[2], *pad_ones(o, 3)]
    else:
        cs += same_shape(h, o)
    return cs


def _recurrent_flops(op: str):
    def flops(ins, out, p):
        x, h = ins[0], ins[1]
        steps_batch, hidden, d = x[0] * x[1], h[-1], 2 if p["bidirectional"] else 1
        gates = RECURRENT_GATES[op]
        total = 0
        for k in range(p["layers"]):
            fan_in = (x[-1] if k == 0 else d * hidden) + hidden
            total += d * steps_batch * gates * hidden * (2 * fan_in + 8)
        return total

    return flops


def _recurrent_call(op: str):
    fn = {"lstm": "torch.lstm", "gru": "torch.gru"}

    def call(a, p):
        names = recurrent_weight_names(p["layers"], p["bidirectional"], p["bias"])
        ws = ", ".join(p["_w"][n] for n in names)
        hx = f"({a[1]}, {a[2]})" if op == "lstm" else a[1]
        f = fn.get(op) or f"torch.rnn_{p['nonlinearity']}"
        idx = ("output", "h_n", "c_n").index(p["result"])
        return (f"{f}({a[0]}, {hx}, [{ws}], {p['bias']}, {p['layers']}, 0.0, False, {p['bidirectional']}, "
                f"{p['batch_first']})[{idx}]")

    return call


def _recurrent(op: str, doc: str, combos: tuple[tuple[Any, ...], ...], extra: tuple[Param, ...] = ()) -> None:
    results = ("output", "h_n", "c_n") if op == "lstm" else ("output", "h_n")
    register(OpSpec(
        name=op, category="matmul", arity=3 if op == "lstm" else 2, call=_recurrent_call(op),
        shape=_recurrent_shape, flops=_recurrent_flops(op),
        params=(Param("layers", (1, 2)), Param("bidirectional", (False, True)), Param("batch_first", (False, True)),
                Param("bias", (True, False)), Param("result", results), *extra),
        combos=combos, dtypes=("float32",), weights=_recurrent_weights(op), min_rank=3, out_range=REAL, doc=doc,
        # T * B * (gates * H) * (I + H) per layer and direction: a budget, not a count
        log_flops=lambda a, o, p, c: a[0].logs[1] + a[0].logs[2] + 2 * a[1].logs[0] + a[1].logs[2] + 4,
    ))


_recurrent("lstm", "nn.LSTM(x, (h0, c0)): output, h_n or c_n (the `result` parameter)", (
    (1, False, False, True, "output"), (2, False, True, True, "output"), (1, True, False, True, "output"),
    (2, True, True, False, "h_n"), (2, False, False, True, "c_n"), (1, True, True, True, "c_n")))
_recurrent("gru", "nn.GRU(x, h0): output or h_n (the `result` parameter)", (
    (1, False, False, True, "output"), (2, False, True, True, "output"), (1, True, False, False, "output"),
    (2, True, True, True, "h_n"), (2, False, False, True, "h_n")))
_recurrent("rnn", "nn.RNN(x, h0) with tanh or relu: output or h_n (the `result` parameter)", (
    (1, False, False, True, "output", "tanh"), (2, True, True, True, "output", "tanh"),
    (2, False, False, False, "h_n", "relu"), (1, True, False, True, "output", "relu")),
    (Param("nonlinearity", ("tanh", "relu")),))
