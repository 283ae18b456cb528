"""One Triton kernel per fusion group: the templates by kind, each in its own module and each
inlining the group's pointwise members through `codegen.KernelWriter`.

`pointwise` (elementwise groups), `rows` and `row_ops` (reductions, softmax, norms, scans),
`matmul` (matmul, addmm, bmm, linear, GEMV), `einsum`, `attention`, `conv` (convolutions);
`dot` holds what the tl.dot templates share and `template` what all of them share (`Kernel`,
block arithmetic). This module gathers the templates and their tuning constants under one name.
"""

from __future__ import annotations

from policies.compiler.attention import ATTN_DV_MAX, attention_kernel
from policies.compiler.conv import CONV_TILE_MIN, ConvWindow, conv_kernel
from policies.compiler.coords import NEG_INF, POS_INF
from policies.compiler.dot import DEFAULT_DOT_PRECISION, DOT_BLOCK_M, SPLIT_K_MIN, dot_block_k, split_k
from policies.compiler.einsum import Contraction, contraction, einsum_kernel
from policies.compiler.matmul import GEMV_PROGRAMS, matmul_kernel
from policies.compiler.pointwise import pointwise_kernel
from policies.compiler.row_ops import FOLDS
from policies.compiler.rows import (
    ROW_CHUNK_MAX,
    ROW_SPLIT_CHUNKS,
    ROW_SPLIT_PROGRAMS,
    SHORT_ROW,
    SHORT_ROW_TILE,
    SPLIT_FOLDS,
    RowPlan,
    row_kernel,
    row_plan,
    split_rows,
)
from policies.compiler.template import (
    PROGRAMS_MIN,
    Kernel,
    clamp_pow2,
    fill_block,
    next_pow2,
)

__all__ = [
    "ATTN_DV_MAX", "CONV_TILE_MIN", "DEFAULT_DOT_PRECISION", "DOT_BLOCK_M", "FOLDS", "GEMV_PROGRAMS", "NEG_INF",
    "POS_INF", "PROGRAMS_MIN", "ROW_CHUNK_MAX", "ROW_SPLIT_CHUNKS", "ROW_SPLIT_PROGRAMS", "SHORT_ROW",
    "SHORT_ROW_TILE", "SPLIT_FOLDS", "SPLIT_K_MIN", "Contraction", "ConvWindow", "Kernel", "RowPlan",
    "attention_kernel", "clamp_pow2", "contraction", "conv_kernel", "dot_block_k", "einsum_kernel", "fill_block",
    "matmul_kernel", "next_pow2", "pointwise_kernel", "row_kernel", "row_plan", "split_k", "split_rows",
]
