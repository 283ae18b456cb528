"""Convolutions, plain and transposed, 1-D to 3-D: the window variants KernelBench uses, their
shape rule (PyTorch's output-size formula), weights, FLOPs and call."""

from __future__ import annotations

from typing import Any

import z3

from kernelgym.ops.registry import register
from kernelgym.ops.spec import REAL, OpSpec, Param, Weight, numel, pad_ones

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
