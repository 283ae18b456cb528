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


def _reduce_shape(min_size: int = 1):
    def rule(a: list[SymTensor], o: SymTensor, p: dict[str, Any], c: RuleCtx) -> list[z3.BoolRef]:
        k = p["dim"] - 1
        x = a[0]
        cs = [x.rank >= p["dim"], x.dims[k] >= min_size]
        if p["keepdim"]:
            cs += keep_except(x, o, [k]) + [o.dims[k] == 1]
        else:
            cs += [x.rank >= 2] + drop_slot(x, o, k)
        return cs

    return rule


def _reduction(name: str, fn: str, flops: int = 1, out: int | str = "first", min_size: int = 1) -> None:
    register(OpSpec(
        name=name, category="reduction", arity=1,
        call=lambda a, p: f"{fn}({a[0]}, dim={-p['dim']}, keepdim={p['keepdim']})",
        shape=_reduce_shape(min_size),
        flops=lambda ins, o, p: flops * numel(ins[0]),
        params=(Param("dim", (1, 2)), Param("keepdim", (False, True))),
        out_range=out, doc=f"{fn}(x, dim, keepdim)",
    ))


_reduction("sum", "torch.sum")
_reduction("mean", "torch.mean")
_reduction("amax", "torch.amax")
_reduction("amin", "torch.amin")
_reduction("logsumexp", "torch.logsumexp", 4, out=REAL)
_reduction("var", "torch.var", 3, out=NONNEG, min_size=2)
_reduction("std", "torch.std", 3, out=NONNEG, min_size=2)
_reduction("norm", "torch.linalg.vector_norm", 2, out=NONNEG)


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


def _linear_shape(a, o, p, c):
    x = a[0]
    n = c.fresh("out_features")
    return keep_except(x, o, [0]) + [x.rank >= 2, o.dims[0] == n, c.log(n) + x.logs[0] <= c.max_log]


register(OpSpec(
    name="linear", category="matmul", arity=1,
    call=lambda a, p: f"F.linear({a[0]}, {p['_w']['weight']}, {p['_w']['bias']})",
    shape=_linear_shape,
    flops=lambda ins, o, p: 2 * numel(o) * ins[0][-1],
    weights=lambda ins, o, p: [Weight("weight", (o[-1], ins[0][-1]), "randn_scaled"), Weight("bias", (o[-1],), "randn")],
    min_rank=2, doc="F.linear(x, W, b) over the last dim",
    log_flops=lambda a, o, p, c: sum(o.logs) + a[0].logs[0] + 1,
))


def _matmul_shape(a, o, p, c):
    x, y = a
    return [x.rank == 2, y.rank == 2, x.dims[0] == y.dims[1], o.rank == 2, o.dims[1] == x.dims[1],
            o.dims[0] == y.dims[0], *pad_ones(o, 2)]


register(OpSpec(
    name="matmul", category="matmul", arity=2,
    call=lambda a, p: f"torch.matmul({a[0]}, {a[1]})",
    shape=_matmul_shape, flops=lambda ins, o, p: 2 * numel(o) * ins[0][-1], min_rank=2,
    doc="torch.matmul of (M, K) and (K, N)", log_flops=lambda a, o, p, c: sum(o.logs) + a[0].logs[0] + 1,
))


def _bmm_shape(a, o, p, c):
    x, y = a
    return [x.rank == 3, y.rank == 3, x.dims[2] == y.dims[2], x.dims[0] == y.dims[1], o.rank == 3,
            o.dims[2] == x.dims[2], o.dims[1] == x.dims[1], o.dims[0] == y.dims[0], *pad_ones(o, 3)]


register(OpSpec(
    name="bmm", category="matmul", arity=2,
    call=lambda a, p: f"torch.bmm({a[0]}, {a[1]})",
    shape=_bmm_shape, flops=lambda ins, o, p: 2 * numel(o) * ins[0][-1], min_rank=3,
    doc="torch.bmm of (B, M, K) and (B, K, N)", log_flops=lambda a, o, p, c: sum(o.logs) + a[0].logs[0] + 1,
))


def _addmm_shape(a, o, p, c):
    bias, x, y = a
    return _matmul_shape([x, y], o, p, c) + [
        ranks(bias, 1, 2), z3.Or(bias.dims[0] == o.dims[0], bias.dims[0] == 1),
        z3.Or(bias.dims[1] == o.dims[1], bias.dims[1] == 1),
    ]


register(OpSpec(
    name="addmm", category="matmul", arity=3,
    call=lambda a, p: f"torch.addmm({a[0]}, {a[1]}, {a[2]})",
    shape=_addmm_shape, flops=lambda ins, o, p: 2 * numel(o) * ins[1][-1] + numel(o), out_range=REAL,
    doc="torch.addmm(bias, (M, K), (K, N))", log_flops=lambda a, o, p, c: sum(o.logs) + a[1].logs[0] + 1,
))


# ---- convolutions --------------------------------------------------------------------------------

_CONV_PARAMS = (Param("kernel", (1, 3)), Param("stride", (1, 2)), Param("padding", (0, 1)))
_CONVT_PARAMS = (Param("kernel", (2, 3)), Param("stride", (1, 2)), Param("padding", (0, 1)))


def _conv_shape(spatial: int, transposed: bool):
    def rule(a, o, p, c):
        x = a[0]
        k, s, pad = p["kernel"], p["stride"], p["padding"]
        cout = c.fresh("out_channels")
        cs = [x.rank == spatial + 2, o.rank == spatial + 2, o.dims[spatial + 1] == x.dims[spatial + 1],
              o.dims[spatial] == cout, *pad_ones(o, spatial + 2),
              c.log(cout) + x.logs[spatial] + 2 * (k - 1).bit_length() <= c.max_log]
        for m in range(spatial):
            if transposed:
                cs += [o.dims[m] == (x.dims[m] - 1) * s - 2 * pad + k]
            else:
                cs += [x.dims[m] + 2 * pad >= k, o.dims[m] == (x.dims[m] + 2 * pad - k) / s + 1]
        return cs

    return rule


def _conv_flops(spatial: int, transposed: bool):
    def flops(ins, o, p):
        cin = ins[0][1]
        per_out = 2 * cin * p["kernel"] ** spatial
        if transposed:  # each input element scatters into kernel**spatial outputs per out channel
            return 2 * numel(ins[0]) * o[1] * p["kernel"] ** spatial
        return per_out * numel(o)

    return flops


def _conv(name: str, fn: str, spatial: int, transposed: bool) -> None:
    def weights(ins, o, p):
        cin, cout, k = ins[0][1], o[1], p["kernel"]
        shape = (cin, cout) if transposed else (cout, cin)
        return [Weight("weight", shape + (k,) * spatial, "randn_scaled"), Weight("bias", (cout,), "randn")]

    register(OpSpec(
        name=name, category="conv", arity=1,
        call=lambda a, p: (f"{fn}({a[0]}, {p['_w']['weight']}, {p['_w']['bias']}, stride={p['stride']}, "
                           f"padding={p['padding']})"),
        shape=_conv_shape(spatial, transposed), flops=_conv_flops(spatial, transposed),
        params=_CONVT_PARAMS if transposed else _CONV_PARAMS, weights=weights, min_rank=spatial + 2,
        doc=f"{fn} with bias", out_range=REAL,
        log_flops=lambda a, o, p, c: sum(o.logs) + a[0].logs[spatial] + spatial * (p["kernel"] - 1).bit_length() + 1,
    ))


_conv("conv1d", "F.conv1d", 1, False)
_conv("conv2d", "F.conv2d", 2, False)
_conv("conv_transpose1d", "F.conv_transpose1d", 1, True)
_conv("conv_transpose2d", "F.conv_transpose2d", 2, True)


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


def _cumulative(name: str, expr: str, out: int | str = "first", flops: int = 1) -> None:
    register(OpSpec(
        name=name, category="cumulative", arity=1,
        call=lambda a, p: expr.format(a[0], dim=-p["dim"]),
        shape=lambda a, o, p, c: same_shape(a[0], o) + [a[0].rank >= p["dim"], a[0].dims[p["dim"] - 1] >= 2],
        flops=_per_out(flops), params=(Param("dim", (1, 2)),), out_range=out, doc=expr,
    ))


_cumulative("cumsum", "torch.cumsum({0}, dim={dim})")
_cumulative("cummax", "torch.cummax({0}, dim={dim}).values")
_cumulative("logcumsumexp", "torch.logcumsumexp({0}, dim={dim})", out=REAL, flops=4)


# ---- shape ops (data movement) -------------------------------------------------------------------


def _transpose_shape(a, o, p, c):
    x = a[0]
    return [x.rank >= 2, *keep_except(x, o, [0, 1]), o.dims[0] == x.dims[1], o.dims[1] == x.dims[0]]


register(OpSpec(
    name="transpose", category="shape", arity=1,
    call=lambda a, p: f"{a[0]}.transpose(-1, -2).contiguous()",
    shape=_transpose_shape, flops=lambda ins, o, p: 0, min_rank=2, out_range="first",
    doc="x.transpose(-1, -2).contiguous()",
))


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


register(OpSpec(
    name="permute", category="shape", arity=1,
    call=lambda a, p: f"{a[0]}.permute(0, *range(2, {a[0]}.dim()), 1).contiguous()",
    shape=_permute_shape, flops=lambda ins, o, p: 0, min_rank=3, out_range="first",
    doc="(N, C, *S) -> (N, *S, C), contiguous",
))


def _flatten_shape(a, o, p, c):
    x = a[0]
    cs = [ranks(x, 3), o.rank == 2, o.dims[1] == x.left(0), *pad_ones(o, 2)]
    for r in range(3, MAX_RANK + 1):  # dims 1.. (from the left) are slots r-2 .. 0
        cs.append(z3.Implies(x.rank == r, o.dims[0] == z3.Product(*x.dims[: r - 1])))
    return cs


register(OpSpec(
    name="flatten", category="shape", arity=1,
    call=lambda a, p: f"torch.flatten({a[0]}, 1)",
    shape=_flatten_shape, flops=lambda ins, o, p: 0, min_rank=3, out_range="first", doc="torch.flatten(x, 1)",
))


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
register(OpSpec(
    name="tril", category="where", arity=1,
    call=lambda a, p: f"torch.tril({a[0]})",
    shape=lambda a, o, p, c: same_shape(a[0], o) + [a[0].rank >= 2, a[0].dims[0] >= 2, a[0].dims[1] >= 2],
    flops=_per_out(1), min_rank=2, out_range=REAL, doc="torch.tril(x): mask above the diagonal",
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
