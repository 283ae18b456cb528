"""Strided transposed convolutions by phases (sub-pixel decomposition): output positions split by
``o % stride`` per dim, and within one phase class the kernel taps that reach an output are fixed
and its input index is affine in the position on the phase's sub-grid. Each class is then a dense
implicit GEMM over (input channels of the group x that class's taps), with no parity masks; the
gather form (`conv.ConvWindow`) would run every tap through `tl.dot` and mask off all but
1 / prod(stride) of them.

Per dim, with stride s, padding p, dilation d and kernel k: output o gathers input i through tap r
where ``i * s + r * d - p == o``. For ``o = q * s + phase`` the taps are those with
``r * d ≡ phase + p (mod s)``: none unless ``gcd(d, s)`` divides ``phase + p``, else the
progression ``r = first + j * step`` (``step = s / gcd(d, s)``, j < count) inside [0, k), reading
``i = q + shift - j * back`` (``back = d / gcd(d, s)``, ``shift = (phase + p - first * d) / s``)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from math import gcd
from typing import Any

from policies.compiler.codegen import KernelWriter
from policies.compiler.conv_tiles import channel_tile, position_tile, store_tile
from policies.compiler.coords import ZERO, Coords, Expr, paren, strides
from policies.compiler.dot import CONV_DOT_PRECISION, dot, dot_block_k, dot_blocks, dot_kernel, dot_operand
from policies.compiler.ir import numel
from policies.compiler.template import Kernel, reserve, tile_view


@dataclass(frozen=True)
class Phase:
    """The kernel taps of one dim's phase: ``r = first + j * step`` for j < count, reading input
    ``q + shift - j * back`` for the output ``q * stride + phase``."""

    first: int
    count: int
    step: int
    shift: int
    back: int


def phase_taps(kernel: int, stride: int, padding: int, dilation: int) -> list[Phase]:
    """The `Phase` of each output phase 0 .. stride - 1 of one dim of a transposed convolution."""
    if min(kernel, stride, dilation) < 1 or padding < 0:
        raise ValueError(f"phase_taps: kernel {kernel}, stride {stride}, padding {padding}, dilation {dilation}")
    div = gcd(dilation, stride)
    step, back = stride // div, dilation // div
    out = []
    for ph in range(stride):
        taps = [r for r in range(kernel) if (ph + padding - r * dilation) % stride == 0]
        if not taps:
            out.append(Phase(0, 0, step, 0, back))
            continue
        first = taps[0]
        # the taps are one residue class modulo `step`: an arithmetic progression from `first`
        assert taps == list(range(first, kernel, step)), (taps, first, step)
        out.append(Phase(first, len(taps), step, (ph + padding - first * dilation) // stride, back))
    return out


def phase_kernel(w: KernelWriter, name: str, nodes: Sequence[int], stored: Sequence[int], anchor: int,
                 x_ref: Any, x_shape: tuple[int, ...], wref: Any, out_shape: tuple[int, ...],
                 kernel: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...],
                 dilation: tuple[int, ...], groups: int, tile_min: int) -> Kernel:
    """A strided transposed convolution (`conv.conv_kernel`'s, with C_in / groups > 1) as one
    implicit GEMM per phase class. The first grid axis runs over (image, tile of the phase's
    sub-grid, phase class), the class fastest: the prod(stride) programs that fill one box of
    output positions run side by side, so their interleaved stores meet in L2. Classes whose
    taps count alike share one loop (an ``if`` on the counts); a class with no tap gets the bias
    (and the epilogue) only."""
    ap, ac = frozenset({"p"}), frozenset({"c"})
    nb, ci, co = x_shape[0], x_shape[1], out_shape[1]
    g = groups
    cig, cog = ci // g, co // g
    outs, ins = tuple(out_shape[2:]), tuple(x_shape[2:])
    tables = [phase_taps(k, s, p, d) for k, s, p, d in zip(kernel, stride, padding, dilation)]
    subs = tuple(-(-o // s) for o, s in zip(outs, stride))  # a phase's sub-grid (the largest)
    classes = numel(stride)
    reserve(w, "pid_p", "pid_c", "pid_t", "pid_b", "pid_g", "ph", "rp", "rc", "rj", "rk", "k0", "acc", "a_mask",
            "w_mask", "out_mask")
    w.emit("pid_p = tl.program_id(0)")
    w.emit("pid_c = tl.program_id(1)")
    w.emit(f"ph = pid_p % {classes}  # phase class: the outputs with o % stride == its phase per dim")
    w.emit(f"pid_t = pid_p // {classes}")
    image, qs, m_rows, images = position_tile(w, "pid_t", subs, nb, tile_min, "positions in the phase's sub-grid",
                                              "q")
    phases = w.decompose("ph", stride, frozenset(), "f")  # scalars: each dim's phase
    rows = [tile_view(q, "[:, None]") for q in qs]
    out_dims: list[Expr] = []
    out_conds: list[str] = []
    for d, (q, f, s) in enumerate(zip(rows, phases, stride)):
        if s == 1:
            out_dims.append(q)
            continue
        # a [BLOCK_M, 1] tensor even on a one-position sub-grid: the interpreter refuses a mask
        # that broadcasts a scalar tensor
        o = w.assign(f"o{d}", f"{paren(q)} * {s} + {f}" if not q.is_zero else f"{f} + 0 * rp[:, None]")
        out_dims.append(Expr(o, ap))
        if outs[d] % s:  # the last phases have one position less
            out_conds.append(f"({o} < {outs[d]})")
    cols, c_mask = channel_tile(w, co, cog, grouped=g > 1)
    w.emit("acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)")
    # per dim, each phase's first tap, input shift and tap count: scalars picked by the phase
    firsts = [_pick(w, f"first{d}", f, [t.first for t in tab]) for d, (f, tab) in enumerate(zip(phases, tables))]
    shifts = [_pick(w, f"shift{d}", f, [t.shift for t in tab]) for d, (f, tab) in enumerate(zip(phases, tables))]
    by_counts: dict[tuple[int, ...], int] = {}
    for combo in itertools.product(*tables):
        counts = tuple(t.count for t in combo)
        if all(counts):
            by_counts[counts] = by_counts.get(counts, 0) + 1
    varying = [d for d, tab in enumerate(tables) if len({t.count for t in tab}) > 1]
    counts_of = {d: _pick(w, f"taps{d}", phases[d], [t.count for t in tables[d]]) for d in varying}
    span_mask = f"(rp[:, None] < {m_rows})"
    gemm = _PhaseGemm(w, x_ref, x_shape, wref, image, rows, ins, kernel, tables, firsts, shifts, cig, cog, g,
                      span_mask)
    for counts in sorted(by_counts):
        if len(by_counts) == 1 and by_counts[counts] == classes:
            gemm.emit(counts)
            continue
        cond = " & ".join(f"({counts_of[d]} == {counts[d]})" for d in varying)
        with w.block(f"if {cond}:  # the phase classes with {'x'.join(map(str, counts))} taps"):
            gemm.emit(counts)
    w.emit(f"out_mask = {' & '.join([span_mask, c_mask, *out_conds])}")
    with w.tile(["p", "c"], "out_mask", ["BLOCK_M", "BLOCK_N"], {"c": c_mask}):
        oc = Coords(out_shape, [image, Expr("rc[None, :]", ac), *out_dims], w.new_key())
        store_tile(w, anchor, co, oc, stored)
    ks = [cig * numel(c) for c, n in by_counts.items() for _ in range(n)] or [cig]
    # three input channels in 3-D with kernel 3, stride 2 (K = 3 .. 24 by class): 144 padded
    # products with BLOCK_K 16, 256 with 32
    blocks = {**dot_blocks(m_rows, cols, max(ks)), "BLOCK_K": dot_block_k(*ks)}
    return dot_kernel(w, name, "conv", nodes, m_rows, cols, max(ks), groups=images * classes,
                      col_groups=1 if g == 1 else g, blocks=blocks)


@dataclass
class _PhaseGemm:
    """acc += one set of phase classes' implicit GEMM: [sub-grid positions, (input channel of the
    group, taps j per dim)] x [(input channel, taps), the group's output channels]."""

    w: KernelWriter
    x_ref: Any
    x_shape: tuple[int, ...]
    wref: Any
    image: Expr
    rows: list[Expr]          # each dim's sub-grid position q, viewed [:, None]
    ins: tuple[int, ...]
    kernel: tuple[int, ...]
    tables: list[list[Phase]]
    firsts: list[str]
    shifts: list[str]
    cig: int
    cog: int
    groups: int
    span_mask: str

    def emit(self, counts: tuple[int, ...]) -> None:
        w, ap, ac, ak = self.w, frozenset({"p"}), frozenset({"c"}), frozenset({"k"})
        kr = self.cig * numel(counts)
        kk = numel(self.kernel)
        kst = strides(self.kernel)
        with w.block(f"for k0 in range(0, {kr}, BLOCK_K):"):
            w.emit(f"rk = k0 + tl.arange(0, BLOCK_K)  # (input channel of the group, taps {counts})")
            red1 = w.decompose("rk", (self.cig, *counts), ak, "r")
            red2 = [tile_view(e, "[None, :]") for e in red1]
            conds = [self.span_mask, f"(rk[None, :] < {kr})"]
            in_dims: list[Expr] = []
            for d, (q, j) in enumerate(zip(self.rows, red2[1:])):
                back = self.tables[d][0].back
                plus = [str(q) if not q.is_zero else "0 * rp[:, None]"]  # a [BLOCK_M, 1] tensor at least
                if self.shifts[d] != "0":
                    plus.append(self.shifts[d])
                text = " + ".join(plus)
                if not j.is_zero:
                    text += f" - {paren(j)}" if back == 1 else f" - {paren(j)} * {back}"
                i = w.assign(f"i{d}", text)
                conds += [f"({i} >= 0)", f"({i} < {self.ins[d]})"]
                in_dims.append(Expr(i, ap if j.is_zero else ap | ak))
            w.emit(f"a_mask = {' & '.join(conds)}")
            with w.tile(["p", "k"], "a_mask", ["BLOCK_M", "BLOCK_K"]):
                chan = red2[0] if self.groups == 1 else Expr(  # grouped: cig > 1, so red2[0] is a tensor
                    None, ak, lambda: f"pid_g * {self.cig} + {paren(red2[0])}")
                xc = Coords(tuple(self.x_shape), [self.image, chan, *in_dims], w.new_key())
                a = dot_operand(w, self.x_ref, xc, "a_mask", "a")
            cols = "rj" if self.groups > 1 else "rc"
            c_mask = f"({cols}[None, :] < {self.cog})"
            w.emit(f"w_mask = (rk[:, None] < {kr}) & {c_mask}")
            with w.tile(["k", "c"], "w_mask", ["BLOCK_K", "BLOCK_N"]):
                # weight (C_in, C_out / g, *k): row (group's first channel + ci), column rj, tap
                # first + j * step per dim
                ci_col = tile_view(red1[0], "[:, None]")
                terms = [f"pid_g * {self.cig * self.cog * kk}" if self.groups > 1 else "",
                         "" if ci_col.is_zero else f"{paren(ci_col)} * {self.cog * kk}",
                         f"{cols}[None, :] * {kk}" if kk > 1 else f"{cols}[None, :]"]
                along_k = not ci_col.is_zero
                for d, j in enumerate(red1[1:]):
                    if self.firsts[d] != "0":
                        terms.append(f"{self.firsts[d]} * {kst[d]}" if kst[d] > 1 else self.firsts[d])
                    step = self.tables[d][0].step * kst[d]
                    if not j.is_zero:
                        jc = tile_view(j, "[:, None]")
                        terms.append(f"{paren(jc)} * {step}" if step > 1 else str(jc))
                        along_k = True
                wshape = w.prog.state_by_key[self.wref[1]].shape
                wc = Coords(tuple(wshape), [ZERO] * len(wshape), w.new_key(), " + ".join(t for t in terms if t),
                            ac | ak if along_k else ac)
                b = w.load(self.wref, wc, name="wt")
            w.emit(f"acc += {dot(w, a, b, CONV_DOT_PRECISION)}")


def _pick(w: KernelWriter, base: str, phase: Expr, values: Sequence[int]) -> str:
    """A scalar that is ``values[phase]``: a literal when all are equal, else a variable."""
    if len(set(values)) == 1:
        return str(values[0])
    last = len(values) - 1
    while values[last - 1] == values[-1]:  # trailing phases alike: one else branch
        last -= 1
    expr = str(values[-1])
    for k in range(last - 1, -1, -1):
        expr = f"tl.where({phase} == {k}, {values[k]}, {expr})"
    return w.assign(base, expr)
