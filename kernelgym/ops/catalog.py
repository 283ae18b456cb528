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
    shape=lambda a, o, p, c: same_shape(a[0], o) + [ranks(a[0], 2, 4)],
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
    return same_shape(x, o) + [ranks(x, 3, 4), ch % p["groups"] == 0, x.dims[0] >= 2]


register(OpSpec(
    name="group_norm", category="norm", arity=1,
    call=lambda a, p: f"F.group_norm({a[0]}, {p['groups']}, {p['_w']['weight']}, {p['_w']['bias']}, eps=1e-5)",
    shape=_group_norm_shape, flops=_per_out(8), params=(Param("groups", (1, 2, 4)),),
    weights=_affine(lambda s: s[1]), min_rank=3, doc="F.group_norm over (N, C, *) with C % groups == 0",
))
register(OpSpec(
    name="instance_norm", category="norm", arity=1,
    call=lambda a, p: f"F.instance_norm({a[0]}, eps=1e-5)",
    shape=lambda a, o, p, c: same_shape(a[0], o) + [ranks(a[0], 3, 4), a[0].dims[0] >= 2],
    flops=_per_out(8), min_rank=3, doc="F.instance_norm over (N, C, *) without affine",
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
            o.dims[0] == y.dims[0], o.dims[2] == 1, o.dims[3] == 1]


register(OpSpec(
    name="matmul", category="matmul", arity=2,
    call=lambda a, p: f"torch.matmul({a[0]}, {a[1]})",
    shape=_matmul_shape, flops=lambda ins, o, p: 2 * numel(o) * ins[0][-1], min_rank=2,
    doc="torch.matmul of (M, K) and (K, N)", log_flops=lambda a, o, p, c: sum(o.logs) + a[0].logs[0] + 1,
))


def _bmm_shape(a, o, p, c):
    x, y = a
    return [x.rank == 3, y.rank == 3, x.dims[2] == y.dims[2], x.dims[0] == y.dims[1], o.rank == 3,
            o.dims[2] == x.dims[2], o.dims[1] == x.dims[1], o.dims[0] == y.dims[0], o.dims[3] == 1]


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
              o.dims[spatial] == cout, *[o.dims[m] == 1 for m in range(spatial + 2, 4)],
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


def _pool_shape(spatial: int):
    def rule(a, o, p, c):
        x = a[0]
        k, s = p["kernel"], p["stride"]
        cs = [x.rank == spatial + 2, *keep_except(x, o, list(range(spatial)))]
        for m in range(spatial):
            cs += [x.dims[m] >= k, o.dims[m] == (x.dims[m] - k) / s + 1]
        return cs

    return rule


def _pool(name: str, fn: str, spatial: int) -> None:
    register(OpSpec(
        name=name, category="pool", arity=1,
        call=lambda a, p: f"{fn}({a[0]}, kernel_size={p['kernel']}, stride={p['stride']})",
        shape=_pool_shape(spatial), flops=lambda ins, o, p: numel(o) * p["kernel"] ** spatial,
        params=(Param("kernel", (2, 3)), Param("stride", (1, 2))), min_rank=spatial + 2,
        out_range="first", doc=f"{fn}(x, kernel_size, stride)",
    ))


_pool("max_pool1d", "F.max_pool1d", 1)
_pool("avg_pool1d", "F.avg_pool1d", 1)
_pool("max_pool2d", "F.max_pool2d", 2)
_pool("avg_pool2d", "F.avg_pool2d", 2)
register(OpSpec(
    name="adaptive_avg_pool2d", category="pool", arity=1,
    call=lambda a, p: f"F.adaptive_avg_pool2d({a[0]}, 1)",
    shape=lambda a, o, p, c: [a[0].rank == 4, *keep_except(a[0], o, [0, 1]), o.dims[0] == 1, o.dims[1] == 1,
                              z3.Or(a[0].dims[0] >= 2, a[0].dims[1] >= 2)],
    flops=lambda ins, o, p: numel(ins[0]), min_rank=4, out_range="first",
    doc="F.adaptive_avg_pool2d(x, 1): global average pool",
))


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
    cs = [ranks(x, 3, 4), o.rank == x.rank, o.dims[0] == x.left(1)]
    for r in (3, 4):
        # out slots 1..r-2 are x's slots 0..r-3 (the spatial dims); slot r-1 is N
        cs.append(z3.Implies(x.rank == r, z3.And(*[o.dims[m] == x.dims[m - 1] for m in range(1, r - 1)],
                                                  o.dims[r - 1] == x.dims[r - 1],
                                                  *[o.dims[m] == 1 for m in range(r, 4)])))
    return cs


register(OpSpec(
    name="permute", category="shape", arity=1,
    call=lambda a, p: f"{a[0]}.permute(0, *range(2, {a[0]}.dim()), 1).contiguous()",
    shape=_permute_shape, flops=lambda ins, o, p: 0, min_rank=3, out_range="first",
    doc="(N, C, *S) -> (N, *S, C), contiguous",
))


def _flatten_shape(a, o, p, c):
    x = a[0]
    cs = [ranks(x, 3, 4), o.rank == 2, o.dims[1] == x.left(0), o.dims[2] == 1, o.dims[3] == 1]
    cs.append(z3.Implies(x.rank == 3, o.dims[0] == x.dims[0] * x.dims[1]))
    cs.append(z3.Implies(x.rank == 4, o.dims[0] == x.dims[0] * x.dims[1] * x.dims[2]))
    return cs


register(OpSpec(
    name="flatten", category="shape", arity=1,
    call=lambda a, p: f"torch.flatten({a[0]}, 1)",
    shape=_flatten_shape, flops=lambda ins, o, p: 0, min_rank=3, out_range="first", doc="torch.flatten(x, 1)",
))


def _merge_last_shape(a, o, p, c):
    x = a[0]
    return [x.rank >= 2, o.rank == x.rank - 1, o.dims[0] == x.dims[0] * x.dims[1],
            *[o.dims[m] == x.dims[m + 1] for m in range(1, 3)], o.dims[3] == 1]


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
            *[x.dims[m] == y.dims[m] for m in range(4) if m != k], o.dims[k] == x.dims[k] + y.dims[k]]


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
    cs += [o.dims[m + 1] == idx.dims[m] for m in range(3)]
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
            *[idx.dims[m] == x.dims[m] for m in range(1, 4)], *same_shape(idx, o)]


register(OpSpec(
    name="gather", category="gather", arity=2,
    call=lambda a, p: f"torch.gather({a[0]}, -1, {a[1]})",
    shape=_gather_shape, flops=lambda ins, o, p: 0, index_args=(1,),
    index_bound=lambda ins, o, p: ins[0][-1], out_range="first",
    doc="torch.gather(x, -1, indices)",
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
