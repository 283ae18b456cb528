"""Handlers of math on tensor values: activations, arithmetic of tensors and numbers, min / max,
comparisons (consumed by where / masked_fill), reductions over dims, softmax, scans and the
triangular masks (tril / triu). `FUNCTIONS` maps torch function and tensor method names to them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from policies.compiler.trace_mapper import _Cmp, _fn_name, _Mapper, _Multi, _scalar, _Unsupported

_UNARY_FUNCS = {
    "relu": "relu", "relu6": "relu6", "selu": "selu", "silu": "silu", "mish": "mish", "sigmoid": "sigmoid",
    "logsigmoid": "logsigmoid", "hardsigmoid": "hardsigmoid", "hardswish": "hardswish", "softsign": "softsign",
    "tanh": "tanh", "exp": "exp", "expm1": "expm1", "log": "log", "log1p": "log1p", "sqrt": "sqrt",
    "rsqrt": "rsqrt", "reciprocal": "reciprocal", "abs": "abs", "neg": "neg", "negative": "neg",
    "square": "square", "sin": "sin", "cos": "cos", "erf": "erf", "absolute": "abs", "log_sigmoid": "logsigmoid",
}


def _h_unary(op: str) -> Callable[[_Mapper, Any], Any]:
    return lambda m, n: m.unary(op, n)


def _h_leaky(m: _Mapper, n: Any) -> Any:
    return m.unary("leaky_relu", n, {"slope": float(m.arg(n, 1, "negative_slope", 0.01))})


def _h_elu(m: _Mapper, n: Any) -> Any:
    return m.unary("elu", n, {"alpha": float(m.arg(n, 1, "alpha", 1.0))})


def _h_gelu(m: _Mapper, n: Any) -> Any:
    approx = n.kwargs.get("approximate", "none")
    return m.unary("gelu_tanh" if approx == "tanh" else "gelu", n)


def _h_hardtanh(m: _Mapper, n: Any) -> Any:
    return m.unary("hardtanh", n, {"lo": float(m.arg(n, 1, "min_val", -1.0)), "hi": float(m.arg(n, 2, "max_val", 1.0))})


def _h_softplus(m: _Mapper, n: Any) -> Any:
    if m.arg(n, 1, "beta", 1) != 1 or m.arg(n, 2, "threshold", 20) != 20:
        raise _Unsupported("softplus with beta != 1 or threshold != 20")
    return m.unary("softplus", n)


def _h_clamp(m: _Mapper, n: Any) -> Any:
    lo, hi = m.arg(n, 1, "min"), m.arg(n, 2, "max")
    if m.is_tensor(lo) or m.is_tensor(hi):
        raise _Unsupported("clamp with tensor bounds")
    return m.unary("clamp", n, {"lo": None if lo is None else float(lo), "hi": None if hi is None else float(hi)})


def _h_pow(m: _Mapper, n: Any) -> Any:
    x, e = n.args[0], m.arg(n, 1, "exponent")
    if not m.is_tensor(x) or m.is_tensor(e):
        raise _Unsupported("pow needs a tensor base and a number exponent")
    if e == 2:
        return m.unary("square", n)
    if e == 0.5:
        return m.unary("sqrt", n)
    return m.unary("pow_scalar", n, {"c": e})


def _h_arith(kind: str) -> Callable[[_Mapper, Any], Any]:
    def handler(m: _Mapper, n: Any) -> Any:
        a, b = n.args[0], n.args[1]
        alpha = n.kwargs.get("alpha", 1)
        if alpha != 1:
            raise _Unsupported(f"{kind} with alpha={alpha}")
        if n.kwargs.get("rounding_mode") is not None:
            raise _Unsupported("div with a rounding mode")
        shape = m.shape_of(n)
        ta, tb = m.is_tensor(a), m.is_tensor(b)
        if ta and tb:
            return m.add(kind, {}, [a, b], shape)
        if ta and _scalar(b):
            if kind == "add":
                return m.add("add_scalar", {"c": b}, [a], shape)
            if kind == "sub":
                return m.add("add_scalar", {"c": -b}, [a], shape)
            if kind == "mul":
                return m.add("mul_scalar", {"c": b}, [a], shape)
            return m.add("div_scalar", {"c": b}, [a], shape)
        if tb and _scalar(a):
            if kind == "add":
                return m.add("add_scalar", {"c": a}, [b], shape)
            if kind == "mul":
                return m.add("mul_scalar", {"c": a}, [b], shape)
            if kind == "sub":
                neg = m.add("neg", {}, [b], shape)
                return m.add("add_scalar", {"c": a}, [neg], shape)
            rec = m.add("reciprocal", {}, [b], shape)
            return rec if a == 1 else m.add("mul_scalar", {"c": a}, [rec], shape)
        raise _Unsupported(f"{kind} of {type(a).__name__} and {type(b).__name__}")

    return handler


def _h_minmax(kind: str) -> Callable[[_Mapper, Any], Any]:
    """torch.maximum / minimum of two tensors; torch.max / min(x, dim) as amax / amin when only its
    values are used (``[0]`` or ``.values``; the indices have no catalog op)."""
    reduce_op = "amax" if kind == "maximum" else "amin"

    def handler(m: _Mapper, n: Any) -> Any:
        a = n.args[0]
        b = n.args[1] if len(n.args) > 1 else n.kwargs.get("other", n.kwargs.get("dim"))
        if m.is_tensor(a) and m.is_tensor(b):
            return m.add(kind, {}, [a, b], m.shape_of(n))
        if m.is_tensor(a) and isinstance(b, int) and not isinstance(b, bool):
            keepdim = bool(m.arg(n, 2, "keepdim", False))
            meta = n.meta.get("tensor_meta")
            shape = tuple(int(x) for x in meta[0].shape)
            return _Multi(m.add(reduce_op, {"dim": m.dim_from_right(a, b), "keepdim": keepdim}, [a], shape))
        raise _Unsupported(f"{_fn_name(n.target) if callable(n.target) else n.target} of the whole tensor or "
                           "with a number; use amax / amin with a dim")

    return handler


def _h_cmp(op: str) -> Callable[[_Mapper, Any], Any]:
    return lambda m, n: _Cmp(op, n.args[0], n.args[1])


def _h_where(m: _Mapper, n: Any) -> Any:
    cond, a, b = n.args[0], n.args[1], n.args[2]
    c = m.env.get(cond)
    if isinstance(c, _Cmp) and c.op == "gt" and c.lhs is a and c.rhs == 0 and m.is_tensor(b):
        return m.add("where_gt", {}, [a, b], m.shape_of(n))
    raise _Unsupported("torch.where is only supported as torch.where(x > 0, x, y)")


def _h_masked_fill(m: _Mapper, n: Any) -> Any:
    x, cond, value = n.args[0], n.args[1], m.arg(n, 2, "value")
    c = m.env.get(cond)
    if isinstance(c, _Cmp) and c.op == "lt" and c.rhs == 0 and value == 0 and m.is_tensor(c.lhs):
        return m.add("masked_fill", {}, [x, c.lhs], m.shape_of(n))
    raise _Unsupported("masked_fill is only supported as x.masked_fill(y < 0, 0.0)")


_REDUCE_NAMES = {"sum": "sum", "mean": "mean", "amax": "amax", "amin": "amin", "logsumexp": "logsumexp",
                 "var": "var", "std": "std", "vector_norm": "norm", "norm": "norm"}


def _h_reduce(op: str) -> Callable[[_Mapper, Any], Any]:
    def handler(m: _Mapper, n: Any) -> Any:
        x = n.args[0]
        if op == "norm":
            p = m.arg(n, 1, "ord" if "vector_norm" in str(n.target) else "p", 2)
            if p not in (2, 2.0, "fro", None):
                raise _Unsupported(f"norm with p={p!r}")
            dim = m.arg(n, 2, "dim")
            keepdim = bool(m.arg(n, 3, "keepdim", False))
        else:
            dim = m.arg(n, 1, "dim")
            pos = 3 if op in ("var", "std") else 2  # var(x, dim, unbiased, keepdim)
            keepdim = bool(m.arg(n, pos, "keepdim", False))
        if n.kwargs.get("dtype") is not None:
            raise _Unsupported(f"{op} with a dtype")
        r = m.rank(x)
        if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
            axes = list(range(r))
        elif isinstance(dim, (tuple, list)):
            axes = sorted({int(d) % r for d in dim})
        else:
            axes = [int(dim) % r]
        params: dict[str, Any] = {"keepdim": keepdim}
        if len(axes) == 1:
            params["dim"] = r - axes[0]
        else:
            params["axes"] = axes
        if op in ("var", "std"):
            corr = n.kwargs.get("correction")
            unbiased = m.arg(n, 2, "unbiased")
            if corr is None:
                corr = 0 if unbiased is False else 1
            params["correction"] = int(corr)
        return m.add(op, params, [x], m.shape_of(n))

    return handler


def _h_softmax(op: str) -> Callable[[_Mapper, Any], Any]:
    def handler(m: _Mapper, n: Any) -> Any:
        x = n.args[0]
        dim = m.arg(n, 1, "dim")
        if dim is None:
            raise _Unsupported(f"{op} without dim")
        if n.kwargs.get("dtype") is not None:
            raise _Unsupported(f"{op} with a dtype")
        return m.add(op, {"dim": m.dim_from_right(x, dim)}, [x], m.shape_of(n))

    return handler


def _h_scan(op: str) -> Callable[[_Mapper, Any], Any]:
    def handler(m: _Mapper, n: Any) -> Any:
        x = n.args[0]
        dim = m.arg(n, 1, "dim")
        if n.kwargs.get("dtype") is not None:
            raise _Unsupported(f"{op} with a dtype")
        if op == "cummax":
            shape = tuple(int(s) for s in n.meta["tensor_meta"][0].shape)
            return _Multi(m.add(op, {"dim": m.dim_from_right(x, dim)}, [x], shape))
        return m.add(op, {"dim": m.dim_from_right(x, dim)}, [x], m.shape_of(n))

    return handler


def _h_tril(m: _Mapper, n: Any) -> Any:
    return m.unary("tril", n, {"diagonal": int(m.arg(n, 1, "diagonal", 0))})


def _h_triu(m: _Mapper, n: Any) -> Any:
    return m.unary("triu", n, {"diagonal": int(m.arg(n, 1, "diagonal", 0))})


FUNCTIONS: dict[str, Callable[[_Mapper, Any], Any]] = {name: _h_unary(op) for name, op in _UNARY_FUNCS.items()}
FUNCTIONS.update({
    "leaky_relu": _h_leaky, "elu": _h_elu, "gelu": _h_gelu, "hardtanh": _h_hardtanh, "softplus": _h_softplus,
    "clamp": _h_clamp, "clip": _h_clamp, "pow": _h_pow,
    "add": _h_arith("add"), "sub": _h_arith("sub"), "subtract": _h_arith("sub"), "mul": _h_arith("mul"),
    "multiply": _h_arith("mul"), "truediv": _h_arith("div"), "div": _h_arith("div"), "divide": _h_arith("div"),
    # torch.max / torch.min over a dim return (values, indices): the values map to amax / amin
    "maximum": _h_minmax("maximum"), "minimum": _h_minmax("minimum"), "max": _h_minmax("maximum"),
    "min": _h_minmax("minimum"), "gt": _h_cmp("gt"), "lt": _h_cmp("lt"), "where": _h_where,
    "masked_fill": _h_masked_fill, "softmax": _h_softmax("softmax"), "log_softmax": _h_softmax("log_softmax"),
    "cumsum": _h_scan("cumsum"), "cummax": _h_scan("cummax"), "logcumsumexp": _h_scan("logcumsumexp"),
    "tril": _h_tril, "triu": _h_triu,
})
FUNCTIONS.update({name: _h_reduce(op) for name, op in _REDUCE_NAMES.items()})
