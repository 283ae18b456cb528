"""Handlers of nn modules called in forward, by class name (`MODULES`): activations, Linear,
Conv / ConvTranspose, the norms, Softmax, pools, Embedding, Flatten, and Identity / Dropout (eval
mode). A module's parameters are named by its state-dict keys (`_mod_params`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from policies.compiler.trace_layers import _adaptive, _conv_params, _eps, _pool
from policies.compiler.trace_mapper import _Mapper, _Unsupported


def _mod_unary(op: str) -> Callable[[_Mapper, Any, Any], Any]:
    return lambda m, n, sub: m.unary(op, n)


def _mod_params(m: _Mapper, n: Any, roles: dict[str, str | None]) -> dict[str, str]:
    out = {}
    for role, attr in roles.items():
        key = f"{n.target}.{attr}"
        if attr is not None and key in m.state_index:
            out[role] = key
    return out


def _m_linear(m: _Mapper, n: Any, sub: Any) -> Any:
    return m.add("linear", {}, [n.args[0]], m.shape_of(n), _mod_params(m, n, {"weight": "weight", "bias": "bias"}))


def _m_conv(op: str) -> Callable[[_Mapper, Any, Any], Any]:
    def handler(m: _Mapper, n: Any, sub: Any) -> Any:
        if sub.padding_mode != "zeros":
            raise _Unsupported(f"{type(sub).__name__} with padding_mode={sub.padding_mode!r}")
        roles = _mod_params(m, n, {"weight": "weight", "bias": "bias"})
        params = _conv_params(op, tuple(sub.kernel_size), sub.stride, sub.padding, sub.dilation, sub.groups,
                              "bias" in roles, getattr(sub, "output_padding", 0))
        return m.add(op, params, [n.args[0]], m.shape_of(n), roles)

    return handler


def _m_layer_norm(m: _Mapper, n: Any, sub: Any) -> Any:
    params = {"ndims": len(sub.normalized_shape), "eps": float(sub.eps)}
    return m.add("layer_norm", params, [n.args[0]], m.shape_of(n), _mod_params(m, n, {"weight": "weight", "bias": "bias"}))


def _m_rms_norm(m: _Mapper, n: Any, sub: Any) -> Any:
    params = {"ndims": len(sub.normalized_shape), "eps": _eps(m, sub.eps)}
    return m.add("rms_norm", params, [n.args[0]], m.shape_of(n), _mod_params(m, n, {"weight": "weight"}))


def _m_batch_norm(m: _Mapper, n: Any, sub: Any) -> Any:
    if not sub.track_running_stats or sub.running_mean is None:
        raise _Unsupported("BatchNorm without running statistics (batch statistics in eval)")
    roles = {"weight": "weight", "bias": "bias", "running_mean": "running_mean", "running_var": "running_var"}
    return m.add("batch_norm", {"eps": float(sub.eps)}, [n.args[0]], m.shape_of(n), _mod_params(m, n, roles))


def _m_group_norm(m: _Mapper, n: Any, sub: Any) -> Any:
    return m.add("group_norm", {"groups": int(sub.num_groups), "eps": float(sub.eps)}, [n.args[0]], m.shape_of(n),
                 _mod_params(m, n, {"weight": "weight", "bias": "bias"}))


def _m_instance_norm(m: _Mapper, n: Any, sub: Any) -> Any:
    if sub.track_running_stats:
        raise _Unsupported("InstanceNorm with running statistics (used in eval mode)")
    params = {"affine": bool(sub.affine), "eps": float(sub.eps)}
    return m.add("instance_norm", params, [n.args[0]], m.shape_of(n), _mod_params(m, n, {"weight": "weight", "bias": "bias"}))


def _m_softmax(op: str) -> Callable[[_Mapper, Any, Any], Any]:
    def handler(m: _Mapper, n: Any, sub: Any) -> Any:
        if sub.dim is None:
            raise _Unsupported(f"{type(sub).__name__} without dim")
        return m.add(op, {"dim": m.dim_from_right(n.args[0], sub.dim)}, [n.args[0]], m.shape_of(n))

    return handler


def _m_pool(op: str) -> Callable[[_Mapper, Any, Any], Any]:
    def handler(m: _Mapper, n: Any, sub: Any) -> Any:
        win = {"kernel_size": sub.kernel_size, "stride": sub.stride, "padding": sub.padding,
               "ceil_mode": sub.ceil_mode}
        if op.startswith("max"):
            win |= {"dilation": sub.dilation, "return_indices": sub.return_indices}
        else:
            win |= {"count_include_pad": sub.count_include_pad, "divisor_override": getattr(sub, "divisor_override", None)}
        return _pool(m, n, op, win)

    return handler


def _m_adaptive(spatial: int) -> Callable[[_Mapper, Any, Any], Any]:
    return lambda m, n, sub: _adaptive(m, n, spatial)


def _m_embedding(m: _Mapper, n: Any, sub: Any) -> Any:
    if sub.max_norm is not None:
        raise _Unsupported("Embedding with max_norm")
    return m.add("embedding", {}, [n.args[0]], m.shape_of(n), _mod_params(m, n, {"weight": "weight"}))


def _m_flatten(m: _Mapper, n: Any, sub: Any) -> Any:
    x = n.args[0]
    r = m.rank(x)
    start, end = sub.start_dim % r, sub.end_dim % r
    if start == end:
        return m.ref(x)
    return m.add("flatten", {"start": start, "end": end}, [x], m.shape_of(n))


def _m_with(op: str, **attrs: str) -> Callable[[_Mapper, Any, Any], Any]:
    return lambda m, n, sub: m.unary(op, n, {k: float(getattr(sub, a)) for k, a in attrs.items()})


def _m_gelu(m: _Mapper, n: Any, sub: Any) -> Any:
    return m.unary("gelu_tanh" if sub.approximate == "tanh" else "gelu", n)


def _m_softplus(m: _Mapper, n: Any, sub: Any) -> Any:
    if sub.beta != 1 or sub.threshold != 20:
        raise _Unsupported("Softplus with beta != 1 or threshold != 20")
    return m.unary("softplus", n)


MODULES: dict[str, Callable[[_Mapper, Any, Any], Any]] = {
    "ReLU": _mod_unary("relu"), "ReLU6": _mod_unary("relu6"), "SELU": _mod_unary("selu"), "SiLU": _mod_unary("silu"),
    "Mish": _mod_unary("mish"), "Sigmoid": _mod_unary("sigmoid"), "LogSigmoid": _mod_unary("logsigmoid"),
    "Hardsigmoid": _mod_unary("hardsigmoid"), "Hardswish": _mod_unary("hardswish"), "Softsign": _mod_unary("softsign"),
    "Tanh": _mod_unary("tanh"), "GELU": _m_gelu, "Softplus": _m_softplus,
    "LeakyReLU": _m_with("leaky_relu", slope="negative_slope"), "ELU": _m_with("elu", alpha="alpha"),
    "Hardtanh": _m_with("hardtanh", lo="min_val", hi="max_val"),
    "Linear": _m_linear, "Conv1d": _m_conv("conv1d"), "Conv2d": _m_conv("conv2d"), "Conv3d": _m_conv("conv3d"),
    "ConvTranspose1d": _m_conv("conv_transpose1d"), "ConvTranspose2d": _m_conv("conv_transpose2d"),
    "ConvTranspose3d": _m_conv("conv_transpose3d"),
    "LayerNorm": _m_layer_norm, "RMSNorm": _m_rms_norm, "BatchNorm1d": _m_batch_norm, "BatchNorm2d": _m_batch_norm,
    "BatchNorm3d": _m_batch_norm, "GroupNorm": _m_group_norm, "InstanceNorm1d": _m_instance_norm,
    "InstanceNorm2d": _m_instance_norm, "InstanceNorm3d": _m_instance_norm,
    "Softmax": _m_softmax("softmax"), "LogSoftmax": _m_softmax("log_softmax"),
    "Embedding": _m_embedding,
    "Flatten": _m_flatten, "Identity": lambda m, n, sub: m.ref(n.args[0]),
    "Dropout": lambda m, n, sub: m.ref(n.args[0]),
}
for _sp in (1, 2, 3):
    MODULES[f"MaxPool{_sp}d"] = _m_pool(f"max_pool{_sp}d")
    MODULES[f"AvgPool{_sp}d"] = _m_pool(f"avg_pool{_sp}d")
    MODULES[f"AdaptiveAvgPool{_sp}d"] = _m_adaptive(_sp)
