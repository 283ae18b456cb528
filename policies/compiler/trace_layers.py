"""Handlers of the layers' functional forms with their parameters passed explicitly
(F.linear, F.conv*d, F.layer_norm / rms_norm / group_norm / batch_norm / instance_norm,
F.embedding: the parameters must be the model's state) and of the pools (max / avg, adaptive
avg), with the argument conventions the nn modules share (`_conv_params`, `_pool`, `_adaptive`).
`FUNCTIONS` maps torch function names to them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kernelgym.ops.catalog import per_dim
from policies.compiler.trace_mapper import _Mapper, _Unsupported


def _h_state_fn(op: str, roles: tuple[str, ...]) -> Callable[[_Mapper, Any], Any]:
    """F.linear / F.conv* / F.layer_norm ... with parameters passed explicitly (get_attr args)."""
    def handler(m: _Mapper, n: Any) -> Any:
        return _state_call(m, n, op, roles)

    return handler


def _state_keys(m: _Mapper, n: Any, roles: dict[str, Any]) -> dict[str, str]:
    keys: dict[str, str] = {}
    for role, a in roles.items():
        if a is None:
            continue
        key = m.state_key(a)
        if key is None:
            raise _Unsupported(f"{role} must be a parameter or buffer of the model")
        keys[role] = key
    return keys


def _state_call(m: _Mapper, n: Any, op: str, roles: tuple[str, ...]) -> Any:
    x = n.args[0]
    shape = m.shape_of(n)
    if op == "linear":
        st = _state_keys(m, n, {"weight": m.arg(n, 1, "weight"), "bias": m.arg(n, 2, "bias")})
        return m.add("linear", {}, [x], shape, st)
    if op in _CONV_OPS:
        # F.conv*d(x, w, b, stride, padding, dilation, groups);
        # F.conv_transpose*d(x, w, b, stride, padding, output_padding, groups, dilation)
        transposed = op.startswith("conv_transpose")
        st = _state_keys(m, n, {"weight": m.arg(n, 1, "weight"), "bias": m.arg(n, 2, "bias")})
        kernel = tuple(m.state[m.state_index[st["weight"]]].shape[2:])
        if transposed:
            params = _conv_params(op, kernel, m.arg(n, 3, "stride", 1), m.arg(n, 4, "padding", 0),
                                  m.arg(n, 7, "dilation", 1), m.arg(n, 6, "groups", 1), "bias" in st,
                                  m.arg(n, 5, "output_padding", 0))
        else:
            params = _conv_params(op, kernel, m.arg(n, 3, "stride", 1), m.arg(n, 4, "padding", 0),
                                  m.arg(n, 5, "dilation", 1), m.arg(n, 6, "groups", 1), "bias" in st)
        return m.add(op, params, [x], shape, st)
    if op == "layer_norm":
        norm_shape = tuple(m.arg(n, 1, "normalized_shape"))
        st = _state_keys(m, n, {"weight": m.arg(n, 2, "weight"), "bias": m.arg(n, 3, "bias")})
        return m.add("layer_norm", {"ndims": len(norm_shape), "eps": float(m.arg(n, 4, "eps", 1e-5))}, [x], shape, st)
    if op == "rms_norm":
        norm_shape = tuple(m.arg(n, 1, "normalized_shape"))
        st = _state_keys(m, n, {"weight": m.arg(n, 2, "weight")})
        eps = m.arg(n, 3, "eps")
        return m.add("rms_norm", {"ndims": len(norm_shape), "eps": _eps(m, eps)}, [x], shape, st)
    if op == "group_norm":
        st = _state_keys(m, n, {"weight": m.arg(n, 2, "weight"), "bias": m.arg(n, 3, "bias")})
        return m.add("group_norm", {"groups": int(m.arg(n, 1, "num_groups")), "eps": float(m.arg(n, 4, "eps", 1e-5))},
                     [x], shape, st)
    if op == "batch_norm":
        if m.arg(n, 5, "training", False):
            raise _Unsupported("batch_norm in training mode")
        st = _state_keys(m, n, {"running_mean": m.arg(n, 1, "running_mean"), "running_var": m.arg(n, 2, "running_var"),
                                "weight": m.arg(n, 3, "weight"), "bias": m.arg(n, 4, "bias")})
        return m.add("batch_norm", {"eps": float(m.arg(n, 7, "eps", 1e-5))}, [x], shape, st)
    if op == "embedding":
        st = _state_keys(m, n, {"weight": m.arg(n, 1, "weight")})
        return m.add("embedding", {}, [x], shape, st)
    raise _Unsupported(f"{op} with explicit parameters")


_CONV_OPS = frozenset({"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"})


def _conv_params(op: str, kernel: tuple[int, ...], stride: Any, padding: Any, dilation: Any, groups: Any,
                 bias: bool, output_padding: Any = 0) -> dict[str, Any]:
    """A convolution's catalog parameters, per spatial dim. ``padding="valid"`` is 0; ``"same"``
    (stride 1) pads each side by half the dilated window, which must be even: PyTorch pads the odd
    remainder on one side only, and the catalog's convolutions pad both sides alike."""
    spatial = len(kernel)
    stride, dilation = _per_dim(stride, spatial), _per_dim(dilation, spatial)
    if padding == "valid":
        padding = 0
    elif padding == "same":
        reach = [d * (k - 1) for k, d in zip(kernel, dilation)]
        if any(r % 2 for r in reach):
            raise _Unsupported(f"{op} with padding='same' for kernel {kernel} and dilation {dilation} "
                               "(PyTorch pads one side more than the other)")
        padding = tuple(r // 2 for r in reach)
    elif isinstance(padding, str):
        raise _Unsupported(f"{op} with padding={padding!r}")
    params: dict[str, Any] = {"kernel": kernel, "stride": stride, "padding": _per_dim(padding, spatial),
                              "dilation": dilation, "groups": int(groups), "bias": bool(bias)}
    if op.startswith("conv_transpose"):
        params["output_padding"] = _per_dim(output_padding, spatial)
    return params


def _per_dim(v: Any, spatial: int) -> tuple[int, ...]:
    """An int or a per-dim tuple / list as a tuple of `spatial` ints."""
    if isinstance(v, (tuple, list)) and len(v) not in (1, spatial):
        raise _Unsupported(f"{len(v)} values {tuple(v)} for a {spatial}-D convolution")
    return per_dim(v, spatial)


def _eps(m: _Mapper, eps: Any) -> float:
    import torch

    return float(eps) if eps is not None else float(torch.finfo(getattr(torch, m.dtype)).eps)


def _h_instance_norm(m: _Mapper, n: Any) -> Any:
    """F.instance_norm(x, running_mean, running_var, weight, bias, use_input_stats, momentum, eps)."""
    if not m.arg(n, 5, "use_input_stats", True):
        raise _Unsupported("instance_norm with use_input_stats=False (running statistics)")
    # running statistics are only updated (not used) when the input's own statistics are
    st = _state_keys(m, n, {"weight": m.arg(n, 3, "weight"), "bias": m.arg(n, 4, "bias")})
    params = {"affine": bool(st), "eps": float(m.arg(n, 7, "eps", 1e-5))}
    return m.add("instance_norm", params, [n.args[0]], m.shape_of(n), st)


def _h_pool(op: str) -> Callable[[_Mapper, Any], Any]:
    """F.max_pool*d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices) and
    F.avg_pool*d(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)."""
    def handler(m: _Mapper, n: Any) -> Any:
        win = {"kernel_size": m.arg(n, 1, "kernel_size"), "stride": m.arg(n, 2, "stride"),
               "padding": m.arg(n, 3, "padding", 0)}
        if op.startswith("max"):
            win |= {"dilation": m.arg(n, 4, "dilation", 1), "ceil_mode": m.arg(n, 5, "ceil_mode", False),
                    "return_indices": m.arg(n, 6, "return_indices", False)}
        else:
            win |= {"ceil_mode": m.arg(n, 4, "ceil_mode", False), "count_include_pad": m.arg(n, 5, "count_include_pad", True),
                    "divisor_override": m.arg(n, 6, "divisor_override")}
        return _pool(m, n, op, win)

    return handler


def _pool(m: _Mapper, n: Any, op: str, win: dict[str, Any]) -> Any:
    """A max / avg pool node with torch's window arguments (ints or per-dim tuples)."""
    if win.get("return_indices"):
        raise _Unsupported(f"{op} with return_indices (the indices have no catalog op)")
    spatial = int(op[-2])
    k = win["kernel_size"]
    stride = win.get("stride")
    params: dict[str, Any] = {"kernel": _compact(k, spatial),
                              "stride": _compact(k if stride in (None, (), []) else stride, spatial),
                              "padding": _compact(win.get("padding", 0), spatial)}
    if op.startswith("max"):
        params["dilation"] = _compact(win.get("dilation", 1), spatial)
    params["ceil_mode"] = bool(win.get("ceil_mode", False))
    if op.startswith("avg"):
        params["count_include_pad"] = bool(win.get("count_include_pad", True))
        if win.get("divisor_override") is not None:
            params["divisor_override"] = int(win["divisor_override"])
    if isinstance(params["padding"], str):
        raise _Unsupported(f"{op} with padding={params['padding']!r}")
    return m.add(op, params, [n.args[0]], m.shape_of(n))


def _compact(v: Any, spatial: int) -> Any:
    """torch's int-or-tuple window argument as one int when every dim agrees, else a tuple."""
    if isinstance(v, str):
        return v
    vals = tuple(int(x) for x in v) if isinstance(v, (tuple, list)) else (int(v),) * spatial
    if len(vals) == 1:
        vals = vals * spatial
    if len(vals) != spatial:
        raise _Unsupported(f"window argument {v!r} for {spatial} spatial dims")
    return vals[0] if len(set(vals)) == 1 else vals


def _adaptive(m: _Mapper, n: Any, spatial: int) -> Any:
    """Adaptive average pools: to size 1 everywhere a global pool (a reduction), else windows."""
    shape = m.shape_of(n)
    if m.rank(n.args[0]) != spatial + 2:
        raise _Unsupported(f"adaptive_avg_pool{spatial}d of a rank-{m.rank(n.args[0])} input (batched only)")
    size = tuple(shape[2:])
    if all(s == 1 for s in size):
        return m.add(f"adaptive_avg_pool{spatial}d", {}, [n.args[0]], shape)
    return m.add(f"adaptive_avg_pool{spatial}d_windows", {"size": _compact(size, spatial)}, [n.args[0]], shape)


def _h_adaptive(spatial: int) -> Callable[[_Mapper, Any], Any]:
    return lambda m, n: _adaptive(m, n, spatial)


FUNCTIONS: dict[str, Callable[[_Mapper, Any], Any]] = {
    "linear": _h_state_fn("linear", ()), **{op: _h_state_fn(op, ()) for op in _CONV_OPS},
    "layer_norm": _h_state_fn("layer_norm", ()), "rms_norm": _h_state_fn("rms_norm", ()),
    "group_norm": _h_state_fn("group_norm", ()), "batch_norm": _h_state_fn("batch_norm", ()),
    "embedding": _h_state_fn("embedding", ()), "instance_norm": _h_instance_norm,
}
for _sp in (1, 2, 3):
    FUNCTIONS[f"max_pool{_sp}d"] = _h_pool(f"max_pool{_sp}d")
    FUNCTIONS[f"avg_pool{_sp}d"] = _h_pool(f"avg_pool{_sp}d")
    FUNCTIONS[f"adaptive_avg_pool{_sp}d"] = _h_adaptive(_sp)
