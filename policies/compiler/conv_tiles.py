"""What the convolution kernels (`conv`'s gather form, `conv_phases`' sub-pixel form) share: the
tile of output channels a program computes and the store of its accumulator with the bias."""

from __future__ import annotations

from policies.compiler.codegen import KernelWriter
from policies.compiler.coords import Coords, Expr
from policies.compiler.template import store_result


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
