"""What the convolution kernels (`conv`'s gather form, `conv_phases`' sub-pixel form) share: the
tile of output positions and the tile of output channels a program computes, and the store of its
accumulator with the bias."""

from __future__ import annotations

from policies.compiler.codegen import KernelWriter
from policies.compiler.coords import ZERO, Coords, Expr
from policies.compiler.ir import numel
from policies.compiler.template import store_result, tile_view


def position_tile(w: KernelWriter, pid: str, dims: tuple[int, ...], images: int, tile_min: int, what: str,
                  prefix: str) -> tuple[Expr, list[Expr], int, int]:
    """Emit ``rp``, the program's BLOCK_M positions of a `dims` grid in each of `images` images,
    from the grid index `pid`. With at least `tile_min` positions an image, a tile stays inside
    one image (``pid_b``): its rows are then provably contiguous, so Triton coalesces the stores
    (an image boundary breaks the run, and the output stride between channels is the image's
    size); smaller images share tiles. Returns the image index (a tile view when images share
    tiles), the `dims` coordinates of ``rp`` (named `prefix`N), the positions ``rp`` runs over and
    how many images the grid's first axis holds tiles of (1 when they share tiles)."""
    span, ap = numel(dims), frozenset({"p"})
    if span >= tile_min:
        if images > 1:
            w.emit(f"pid_b = {pid} // (({span} + BLOCK_M - 1) // BLOCK_M)  # image")
            w.emit(f"rp = {pid} % (({span} + BLOCK_M - 1) // BLOCK_M) * BLOCK_M + tl.arange(0, BLOCK_M)"
                   f"  # {what} in the image")
        else:
            w.emit(f"rp = {pid} * BLOCK_M + tl.arange(0, BLOCK_M)  # {what}")
        return (Expr("pid_b") if images > 1 else ZERO), w.decompose("rp", dims, ap, prefix), span, images
    w.emit(f"rp = {pid} * BLOCK_M + tl.arange(0, BLOCK_M)  # (image, {what})")
    dec = w.decompose("rp", (images, *dims), ap, prefix)
    return tile_view(dec[0], "[:, None]"), dec[1:], images * span, 1


def channel_tile(w: KernelWriter, co: int, cog: int, grouped: bool) -> tuple[int, str]:
    """Emit ``rc``, the program's output channels from the grid's second axis (with groups: the
    axis runs over groups x tiles of a group's ``cog`` channels, ``pid_g`` / ``rj``); returns the
    columns of the implicit GEMM and the channel mask."""
    if not grouped:
        w.emit("rc = pid_c * BLOCK_N + tl.arange(0, BLOCK_N)  # output channels")
        return co, f"(rc[None, :] < {co})"
    w.emit(f"pid_g = pid_c // (({cog} + BLOCK_N - 1) // BLOCK_N)  # group")
    w.emit(f"rj = pid_c % (({cog} + BLOCK_N - 1) // BLOCK_N) * BLOCK_N + tl.arange(0, BLOCK_N)"
           "  # output channels in the group")
    w.emit(f"rc = pid_g * {cog} + rj  # output channels")
    return cog, f"(rj[None, :] < {cog})"


def store_tile(w: KernelWriter, anchor: int, co: int, oc: Coords, stored: list[int] | tuple[int, ...]) -> None:
    """Store ``acc`` (plus the convolution's bias, when it has one) at the output coordinates
    `oc`, through the fused epilogue (`store_result`); call inside the output tile."""
    res = "acc"
    bias = w.weight_ref(anchor, "bias")
    if bias is not None:
        bv = w.load(bias, Coords((co,), [Expr("rc[None, :]", frozenset({"c"}))], ("bias", oc.key)),
                    name=f"n{anchor}_b")
        res = w.assign("res", f"acc + {bv}")
    store_result(w, oc, res, stored)
