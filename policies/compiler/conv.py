"""The convolution template: 1-, 2- and 3-D convolutions, transposed or not, grouped and
dilated, as an implicit GEMM over a tile of output positions by output channels, or tap by tap
for depthwise ones; the window arithmetic (`ConvWindow`) turns padding, stride and dilation into
input coordinates and masks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kernelgym.ops.catalog import conv_dims, conv_groups
from policies.compiler.codegen import KernelWriter
from policies.compiler.conv_phases import phase_kernel
from policies.compiler.conv_tiles import channel_tile, position_tile, store_tile
from policies.compiler.coords import ZERO, Coords, Expr, paren
from policies.compiler.dot import CONV_DOT_PRECISION, DOT_BLOCK_M, batch_offset, dot, dot_kernel, dot_operand
from policies.compiler.ir import CompileError, Program, numel
from policies.compiler.template import Kernel, clamp_pow2, reserve, tile_view

# Output positions an image needs for convolution tiles of its own (below, images share tiles).
CONV_TILE_MIN = 64


def conv_kernel(prog: Program, nodes: Sequence[int], stored: Sequence[int], anchor: int, name: str) -> Kernel:
    """A convolution (1-, 2- or 3-D, transposed or not, grouped, dilated) over a tile of output
    positions (batch x spatial) by output channels; padding, stride and dilation become load masks.

    Each output channel reads the input channels of its group. With several input channels a
    group (``C_in / groups > 1``) the tile is an implicit GEMM (`tl.dot`) over that group's input
    channels x the kernel window, the group indexed by the grid (its columns are the group's output
    channels), so a grouped convolution does a group's work only. With one input channel a group
    (depthwise) there is nothing for a `tl.dot` to share: each program sums the window's taps
    over a [positions, channels] tile on CUDA cores (`_conv_taps`)."""
    node = prog.graph.nodes[anchor]
    op, p = node.op, node.params
    transposed = op.startswith("conv_transpose")
    x_ref = node.args[0]
    x_shape = prog.shape(x_ref)
    out_shape = tuple(node.shape)
    spatial = len(x_shape) - 2
    if spatial < 1 or len(out_shape) != spatial + 2:
        raise CompileError(f"node {anchor}: {op} of a rank-{len(x_shape)} input")
    nb, ci = x_shape[0], x_shape[1]
    co = out_shape[1]
    g = conv_groups(p, ci)
    if g < 1 or ci % g or co % g:
        raise CompileError(f"node {anchor}: {op} with groups={g} for {ci} input and {co} output channels")
    cig, cog = ci // g, co // g
    outs = out_shape[2:]
    win = ConvWindow(_per_dim(p["kernel"], spatial), _per_dim(p.get("stride", 1), spatial),
                     _per_dim(p.get("padding", 0), spatial), _per_dim(p.get("dilation", 1), spatial),
                     tuple(x_shape[2:]), transposed)
    w = KernelWriter(prog, set(nodes), anchor)
    wref = w.weight_ref(anchor, "weight")
    if wref is None:
        raise CompileError(f"node {anchor}: {op} without a weight")
    reserve(w, "pid_p", "pid_c", "pid_b", "pid_g", "rp", "rc", "rj", "rk", "k0", "r0", "acc", "a_mask", "w_mask",
            "out_mask")
    ap, ac = frozenset({"p"}), frozenset({"c"})
    direct = cig == 1 and g > 1
    if transposed and not direct and any(s > 1 for s in win.stride):  # by phases: no taps masked off
        return phase_kernel(w, name, nodes, stored, anchor, x_ref, tuple(x_shape), wref, out_shape, win.kernel,
                            win.stride, win.padding, win.dilation, g, CONV_TILE_MIN)
    w.emit("pid_p = tl.program_id(0)")
    w.emit("pid_c = tl.program_id(1)")
    # `span`: the positions rp runs over (one image's, or all images' when they share tiles)
    image, coords, span, images = position_tile(w, "pid_p", tuple(outs), nb, CONV_TILE_MIN, "output positions", "o")
    pos2 = [image, *(tile_view(e, "[:, None]") for e in coords)]
    # the store's flat offset when a tile stays in one image (its rows are contiguous)
    out_flat = f"{batch_offset(nb > 1, co * span)}rc[None, :] * {span} + rp[:, None]" \
        if numel(outs) >= CONV_TILE_MIN else None
    cols, c_mask = channel_tile(w, co, cog, grouped=not direct and g > 1)
    w.emit("acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)")
    if direct:
        _conv_taps(w, x_ref, x_shape, wref, pos2, win, span, c_mask, cog)
    else:
        _conv_gemm(w, x_ref, x_shape, wref, pos2, win, span, c_mask, cig, cog, g)
    w.emit(f"out_mask = (rp[:, None] < {span}) & {c_mask}")
    with w.tile(["p", "c"], "out_mask", ["BLOCK_M", "BLOCK_N"], {"p": f"rp[:, None] < {span}", "c": c_mask}):
        oc = Coords(out_shape, [pos2[0], Expr("rc[None, :]", ac), *pos2[1:]], w.new_key(), out_flat, ap | ac)
        store_tile(w, anchor, co, oc, stored)
    if direct:
        blocks = {"BLOCK_M": clamp_pow2(span, 16, DOT_BLOCK_M), "BLOCK_N": 16}
        return dot_kernel(w, name, "conv", nodes, span, co, 1, groups=images, blocks=blocks)
    return dot_kernel(w, name, "conv", nodes, span, cols, cig * win.size, groups=images,
                      col_groups=1 if g == 1 else g)


@dataclass(frozen=True)
class ConvWindow:
    """A convolution's per-dim kernel, stride, padding and dilation, and its input's spatial dims."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    ins: tuple[int, ...]
    transposed: bool

    @property
    def size(self) -> int:
        return numel(self.kernel)

    def input_dims(self, w: KernelWriter, outs: Sequence[Expr], taps: Sequence[Expr], axes: frozenset[str],
                   conds: list[str]) -> list[Expr]:
        """Input coordinates read by output positions `outs` at kernel offsets `taps` (per spatial
        dim); appends the masks of reads outside the input (padding) or between its strided
        positions (a transposed convolution's)."""
        dims: list[Expr] = []
        for d, (o, kd) in enumerate(zip(outs, taps)):
            s, pad, dil, size = self.stride[d], self.padding[d], self.dilation[d], self.ins[d]
            if self.transposed:  # output o gathers input i where i * s + kd * dil - pad == o
                t = w.assign(f"t{d}", _lin(o, 1, kd, -dil, pad))
                if s > 1:
                    conds += [f"({t} >= 0)", f"({t} % {s} == 0)", f"({t} < {size * s})"]
                    idx = w.assign(f"i{d}", f"{t} // {s}")
                else:
                    conds += [f"({t} >= 0)", f"({t} < {size})"]
                    idx = t
            else:  # inside the input unless padded: (out - 1) * s + (k - 1) * dil < size
                idx = w.assign(f"i{d}", _lin(o, s, kd, dil, -pad))
                if pad:
                    conds += [f"({idx} >= 0)", f"({idx} < {size})"]
            dims.append(Expr(idx, axes))
        return dims


def _conv_gemm(w: KernelWriter, x_ref: Any, x_shape: tuple[int, ...], wref: Any, pos2: list[Expr],
               win: ConvWindow, span: int, c_mask: str, cig: int, cog: int, g: int) -> None:
    """acc += the implicit GEMM of a group: [positions, (input channel of the group, taps)] x
    [(input channel, taps), the group's output channels], in BLOCK_K steps."""
    ap, ac, ak = frozenset({"p"}), frozenset({"c"}), frozenset({"k"})
    kk = win.size
    kr = cig * kk
    cols = "rj" if g > 1 else "rc"
    with w.block(f"for k0 in range(0, {kr}, BLOCK_K):"):
        w.emit("rk = k0 + tl.arange(0, BLOCK_K)  # (input channel of the group, kernel offsets...)")
        red1 = w.decompose("rk", (cig, *win.kernel), ak, "r")
        red2 = [tile_view(e, "[None, :]") for e in red1]
        conds = [f"(rp[:, None] < {span})", f"(rk[None, :] < {kr})"]
        # a length-1 output dim read at a length-1 kernel dim is a constant coordinate: made a
        # tensor, as in `_conv_taps`, else a pool fused into the operand windows from a Python int
        # and its masks are Python bools, which the interpreter refuses in a mask
        outs = [o if not (o.is_zero and t.is_zero) else Expr("rp[:, None] * 0", ap) for o, t in zip(pos2[1:], red2[1:])]
        in_dims = win.input_dims(w, outs, red2[1:], ap | ak, conds)
        w.emit(f"a_mask = {' & '.join(conds)}")
        with w.tile(["p", "k"], "a_mask", ["BLOCK_M", "BLOCK_K"]):
            chan = red2[0] if g == 1 else Expr(None, ak, lambda: _lin(Expr("pid_g"), cig, red2[0], 1, 0))
            xc = Coords(tuple(x_shape), [pos2[0], chan, *in_dims], w.new_key())
            a = dot_operand(w, x_ref, xc, "a_mask", "a")
        w.emit(f"w_mask = (rk[:, None] < {kr}) & {c_mask}")
        with w.tile(["k", "c"], "w_mask", ["BLOCK_K", "BLOCK_N"]):
            wshape = w.prog.state_by_key[wref[1]].shape
            if win.transposed:  # weight (C_in, C_out / g, *k): row (group's first channel + ci), column rj
                ci_col = tile_view(red1[0], "[:, None]")
                first = f"pid_g * {cig * cog * kk}" if g > 1 else None
                terms = [first, f"{paren(ci_col)} * {cog * kk}" if not ci_col.is_zero else None,
                         f"{cols}[None, :] * {kk}" if kk > 1 else f"{cols}[None, :]",
                         f"rk[:, None] % {kk}" if kk > 1 else None]
                flat = " + ".join(t for t in terms if t)
            else:  # weight (C_out, C_in / g, *k): row-major over (C_in / g, *k) is exactly rk
                flat = f"rc[None, :] * {kr} + rk[:, None]"
            wc = Coords(tuple(wshape), [ZERO] * len(wshape), w.new_key(), flat, ak | ac)
            b = w.load(wref, wc, name="wt")
        w.emit(f"acc += {dot(w, a, b, CONV_DOT_PRECISION)}")


def _conv_taps(w: KernelWriter, x_ref: Any, x_shape: tuple[int, ...], wref: Any, pos2: list[Expr],
               win: ConvWindow, span: int, c_mask: str, cog: int) -> None:
    """acc += the window's taps, one at a time, for a grouped convolution with one input channel a
    group: output channel c reads input channel c // (C_out / g) only, so each tap is a
    [positions, channels] FMA of the input with that tap's weight per channel."""
    ap, ac = frozenset({"p"}), frozenset({"c"})
    kk = win.size
    with w.block(f"for r0 in range(0, {kk}):"):
        taps = w.decompose("r0", win.kernel, frozenset(), "q")
        conds = [f"(rp[:, None] < {span})", c_mask]
        # the taps are scalars, so a length-1 output dim (a constant coordinate) must be a tensor:
        # else its window masks are Python bools, which the interpreter refuses in a mask
        outs = [o if not o.is_zero else Expr("rp[:, None] * 0", ap) for o in pos2[1:]]
        in_dims = win.input_dims(w, outs, taps, ap, conds)
        w.emit(f"a_mask = {' & '.join(conds)}")
        with w.tile(["p", "c"], "a_mask", ["BLOCK_M", "BLOCK_N"]):
            chan = Expr("rc[None, :]", ac) if cog == 1 else Expr(f"rc[None, :] // {cog}", ac)
            xc = Coords(tuple(x_shape), [pos2[0], chan, *in_dims], w.new_key())
            a = w.value(x_ref, xc, "a_mask")
        with w.tile(["c"], c_mask.replace("[None, :]", ""), ["BLOCK_N"]):
            # weight (C_out, 1, *k), or transposed (C_in, C_out / g, *k) = (g, C_out / g, *k): both
            # row-major over the output channels, then the taps
            wshape = w.prog.state_by_key[wref[1]].shape
            flat = f"rc * {kk} + r0" if kk > 1 else "rc"
            wc = Coords(tuple(wshape), [ZERO] * len(wshape), w.new_key(), flat, ac)
            wv = w.load(wref, wc, name="wv")
        w.emit(f"acc += {a} * {wv}[None, :]")


def _per_dim(v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)) and len(v) != n:
        raise CompileError(f"expected {n} values, got {v!r}")
    return conv_dims(v, n)


def _lin(a: Expr, sa: int, b: Expr, sb: int, c: int) -> str:
    """Text of a*sa + b*sb + c with trivial terms dropped."""
    parts = []
    for e, s in ((a, sa), (b, sb)):
        if e.is_zero:
            continue
        t = paren(e) if s != 1 else str(e)
        if s == 1:
            parts.append(f"+ {t}")
        elif s == -1:
            parts.append(f"- {paren(e)}")
        else:
            parts.append(f"+ {t} * {s}" if s > 0 else f"- {t} * {-s}")
    if c:
        parts.append(f"+ {c}" if c > 0 else f"- {-c}")
    text = " ".join(parts) or "0"
    if text.startswith("+ "):
        text = text[2:]
    elif text.startswith("- "):
        text = "-" + text[2:]
    return text
