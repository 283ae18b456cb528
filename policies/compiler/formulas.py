"""The elementwise formulas of the pointwise ops (Triton text over fp32 registers) and the
``@triton.jit`` helpers they may call, emitted once per module when used."""

from __future__ import annotations

# Elementwise formulas over fp32 registers; {x} / {a}, {b} are variable names, the rest parameters.
UNARY = {
    "relu": "tl.maximum({x}, 0.0)",
    "relu6": "tl.minimum(tl.maximum({x}, 0.0), 6.0)",
    "leaky_relu": "tl.where({x} > 0, {x}, {x} * {slope})",
    "elu": "tl.where({x} > 0, {x}, {alpha} * (tl.exp({x}) - 1.0))",
    "selu": "1.0507009873554805 * tl.where({x} > 0, {x}, 1.6732632423543772 * (tl.exp({x}) - 1.0))",
    "gelu": "0.5 * {x} * (1.0 + tl.erf({x} * 0.7071067811865476))",
    "gelu_tanh": "0.5 * {x} * (1.0 + _tanh(0.7978845608028654 * ({x} + 0.044715 * {x} * {x} * {x})))",
    "silu": "{x} * tl.sigmoid({x})",
    "mish": "{x} * _tanh(_softplus({x}))",
    "sigmoid": "tl.sigmoid({x})",
    "logsigmoid": "tl.minimum({x}, 0.0) - tl.log(1.0 + tl.exp(-tl.abs({x})))",
    "hardsigmoid": "tl.minimum(tl.maximum({x} / 6.0 + 0.5, 0.0), 1.0)",
    "hardswish": "{x} * tl.minimum(tl.maximum({x} + 3.0, 0.0), 6.0) / 6.0",
    "hardtanh": "tl.minimum(tl.maximum({x}, {lo}), {hi})",
    "softplus": "_softplus({x})",
    "softsign": "{x} / (1.0 + tl.abs({x}))",
    "tanh": "_tanh({x})",
    "exp": "tl.exp({x})",
    "expm1": "tl.exp({x}) - 1.0",
    "log": "tl.log({x})",
    "log1p": "tl.log(1.0 + {x})",
    "sqrt": "tl.sqrt({x})",
    "rsqrt": "1.0 / tl.sqrt({x})",
    "reciprocal": "1.0 / {x}",
    "abs": "tl.abs({x})",
    "neg": "-{x}",
    "square": "{x} * {x}",
    "sin": "tl.sin({x})",
    "cos": "tl.cos({x})",
    "erf": "tl.erf({x})",
    "add_scalar": "{x} + {c}",
    "mul_scalar": "{x} * {c}",
    "div_scalar": "{x} / {c}",
}
BINARY = {
    "add": "{a} + {b}",
    "sub": "{a} - {b}",
    "mul": "{a} * {b}",
    "div": "{a} / {b}",
    "maximum": "tl.maximum({a}, {b})",
    "minimum": "tl.minimum({a}, {b})",
    "where_gt": "tl.where({a} > 0, {a}, {b})",
    "masked_fill": "tl.where({b} < 0, 0.0, {a})",
}
DEFAULT_PARAMS = {"elu": {"alpha": 1.0}}

# @triton.jit helpers the formulas may call, emitted once per module when used.
HELPERS = {
    "_tanh": ("def _tanh(x):\n"
              "    # tanh through the sigmoid: tl has no tanh on every Triton version\n"
              "    return 2.0 * tl.sigmoid(2.0 * x) - 1.0\n"),
    "_softplus": ("def _softplus(x):\n"
                  "    # torch's softplus (beta 1, threshold 20)\n"
                  "    return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x))))\n"),
    "_max_fn": "def _max_fn(a, b):\n    return tl.maximum(a, b)\n",
    "_mul_fn": "def _mul_fn(a, b):\n    return a * b\n",
    "_lse_fn": ("def _lse_fn(a, b):\n"
                "    # log(exp(a) + exp(b)), exact when both are -inf (masked lanes)\n"
                "    m = tl.maximum(a, b)\n"
                "    m_safe = tl.where(m == -float(\"inf\"), 0.0, m)\n"
                "    return m_safe + tl.log(tl.exp(a - m_safe) + tl.exp(b - m_safe))\n"),
}
HELPER_ORDER = ("_tanh", "_softplus", "_max_fn", "_lse_fn", "_mul_fn")
