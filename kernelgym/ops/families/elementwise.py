"""Elementwise ops: unary activations and math, broadcasting binary ops (and their
`where` forms), and ops of one tensor and a scalar parameter."""

from __future__ import annotations

from typing import Any

from kernelgym.ops.registry import per_out, register
from kernelgym.ops.spec import NONNEG, POSITIVE, REAL, OpSpec, Param, broadcast, same_shape


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
        flops=per_out(flops), params=params, domain=(domain,), out_range=out, doc=doc or expr,
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
        flops=per_out(flops), domain=domain, out_range=out, doc=expr,
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
        flops=per_out(flops), params=(param,), out_range="first", doc=expr,
    ))


_scalar("add_scalar", "{0} + {c}", Param("c", (0.5, 1.0, 2.0)))
_scalar("mul_scalar", "{0} * {c}", Param("c", (0.5, 2.0, 3.0)))
_scalar("div_scalar", "{0} / {c}", Param("c", (0.7, 2.0, 3.0)))
_scalar("pow_scalar", "torch.pow({0}, {c})", Param("c", (2, 3)), flops=2)
register(OpSpec(
    name="clamp", category="scalar", arity=1,
    call=lambda a, p: f"torch.clamp({a[0]}, min={p['lo']!r}, max={p['hi']!r})",
    shape=lambda a, o, p, c: same_shape(a[0], o),
    flops=per_out(2), params=(Param("lo", (-1.0, -0.5, 0.0)), Param("hi", (0.5, 1.0, 6.0))),
    doc="torch.clamp(x, min, max)",
))
