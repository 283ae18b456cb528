"""What the tl.dot templates (matmul, einsum, attention, convolution) share: default tiles,
split-K, operand tiles, the ``tl.dot`` call at the task's precision and the kernel's grid."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from policies.compiler.codegen import KernelWriter
from policies.compiler.coords import Coords
from policies.compiler.template import PROGRAMS_MIN, Kernel, clamp_pow2

# Largest default row tile of a tl.dot kernel (see `dot_kernel`).
DOT_BLOCK_M = 128
# Least reduction length a split-K program keeps (shorter runs spend more on the atomic adds).
SPLIT_K_MIN = 256
# fp32 tl.dot products. Measured on an H200 (benchmarks/NOTES.md): 3xTF32 was judged correct on
# every bench task tried and ran 1.02-2.9x faster than IEEE products on the four matmul /
# convolution tasks of a bench run (plain TF32, tl.dot's own default, missed fp32 tolerance on
# the products: cuBLAS runs an fp32 reference's matmuls in full fp32).
DEFAULT_DOT_PRECISION = "tf32x3"
# A convolution's fp32 reference runs on cuDNN in plain TF32 (PyTorch's default,
# ``torch.backends.cudnn.allow_tf32``), so its Triton lowering does too: 3xTF32 is three times the
# tensor-core work (KernelBench level 2's 1_Conv2D_ReLU_BiasAdd ran 7.1 ms against eager's 4.4 ms
# on an H100, benchmarks/NOTES.md session 14); the search offers 3xTF32 and IEEE beside it.
CONV_DOT_PRECISION = "tf32"


def dot_block_k(k: int, *more: int) -> int:
    """BLOCK_K of a tl.dot loop over a k-long reduction (or of one loop each over k and `more`, a
    kernel's alternative reductions: a transposed convolution's phase classes): 32, or 16 where 32
    would pad their sum by over an eighth more. A convolution's k (channels x window) is often just
    over a power of two: k = 39 runs 48 products a row with 16, 64 with 32; a long k hardly pads
    and gains from fewer steps."""
    pad16, pad32 = (sum(-(-n // b) * b for n in (k, *more)) for b in (16, 32))
    return 16 if pad32 * 8 > pad16 * 9 else 32


def split_k(tiles: int, k: int, programs: int = PROGRAMS_MIN) -> int:
    """How many programs share each output tile's k-long reduction (a power of two; 1: no split),
    for a product launching `tiles` output tiles. With fewer tiles than an H100/H200 has SMs and a
    long reduction (a GEMV: m = 1, n = 8192, k = 3253) most SMs would idle while a few programs
    stream k; the tiles split k until the launch reaches `programs` programs, keeping at least
    `SPLIT_K_MIN` of k each."""
    if tiles * 4 > programs:  # about a wave of tiles or more: every SM already has one
        return 1
    split = 1
    while tiles * split * 2 <= programs and k // (split * 2) >= SPLIT_K_MIN:
        split *= 2
    return split


def dot_blocks(m: int, n: int, k: int) -> dict[str, int]:
    """Default tiles of a tl.dot kernel over an m x n output with a k-long reduction.

    Column blocks stay 64 wide for skinny products too: on an H200 a GEMV (m = 1, n = 8192,
    k = 3253) ran 0.59x / 0.53x / 0.36x eager with 64 / 32 / 16 columns a tile, so narrow tiles
    (short row pieces of the streamed operand) lose more than their extra programs gain; such a
    product gets its programs from split-K instead (`split_k`). Rows: up to 128 a tile; in the
    H200 search logs of session 5, BLOCK_M 128 (from 64) was the best launch move of all four
    bench tasks with a large product (a matmul, a linear, a conv1d, a conv_transpose2d)."""
    return {"BLOCK_M": clamp_pow2(m, 16, DOT_BLOCK_M), "BLOCK_N": clamp_pow2(n, 16, 64), "BLOCK_K": dot_block_k(k)}


def dot_kernel(w: KernelWriter, name: str, kind: str, nodes: Sequence[int], m: int, n: int, k: int,
               grid_z: int | None = None, groups: int = 1, split: int = 1,
               blocks: dict[str, int] | None = None, col_groups: int = 1) -> Kernel:
    """A tiled tl.dot kernel (matmul, or a convolution as implicit GEMM) over an m x n output with
    a k-long reduction; `grid_z`: the size of a third grid axis (a matmul's batch); `groups`: that
    many m-long row ranges share the first grid axis (a convolution's images), `col_groups`: that
    many n-wide column ranges share the second (a grouped convolution's groups); `split` > 1: the
    kernel splits k over ``SPLIT_K`` programs on the third axis, adding into a zeroed output;
    `blocks`: its default tiles when already chosen (`dot_blocks`)."""
    blocks = dict(blocks or dot_blocks(m, n, k))
    rows = f'triton.cdiv({m}, meta["BLOCK_M"])' + (f" * {groups}" if groups > 1 else "")
    if split > 1:
        blocks["SPLIT_K"] = split
    cols = f'triton.cdiv({n}, meta["BLOCK_N"])' + (f" * {col_groups}" if col_groups > 1 else "")
    grid = f'lambda meta: ({rows}, {cols}{grid_axis(grid_z, split)})'
    return Kernel(name, kind, list(nodes), w.params, blocks, {"num_warps": 4, "num_stages": 3}, grid,
                  w.body_lines(), w.stored, w.helpers, zero_init=split > 1)


def grid_axis(extent: int | None, split: int) -> str:
    """The grid text after a product's tile axes: `extent` programs (a batch; None: no such
    axis), times ``SPLIT_K`` when split."""
    if split > 1:
        return f', {extent} * meta["SPLIT_K"]' if extent not in (None, 1) else ', meta["SPLIT_K"]'
    return f", {extent}" if extent is not None else ""


def batch_offset(on: bool, size: int) -> str:
    return f"pid_b * {size} + " if on else ""


def dot_operand(w: KernelWriter, ref: Any, c: Coords, mask: str, name: str) -> str:
    """A tl.dot operand tile: zero outside the mask even when a fused prologue computed it."""
    v = w.value(ref, c, mask)
    if ref[0] == "node" and ref[1] in w.group:
        v = w.assign(name, f"tl.where({mask}, {v}, 0.0)")
    return v


def dot(w: KernelWriter, a: str, b: str, precision: str = DEFAULT_DOT_PRECISION) -> str:
    """``tl.dot`` of two operand tiles. fp16/bf16 tasks feed tensor cores in their own dtype; fp32
    asks for `precision`: 3xTF32 products by default (`DEFAULT_DOT_PRECISION`), because tl.dot's
    TF32 default (10-bit mantissa) misses the fp32 tolerance of a full-fp32 reference on long
    reductions, and IEEE products run on CUDA cores; convolutions pass `CONV_DOT_PRECISION`."""
    if w.float_dtype:
        return f"tl.dot({a}.to({w.float_dtype}), {b}.to({w.float_dtype}))"
    return f'tl.dot({a}, {b}, input_precision="{precision}")'
