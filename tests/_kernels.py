"""Small generic Triton kernels for env tests: elementwise unary ops over a flattened input."""

from __future__ import annotations

TEMPLATE = '''
import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def unary_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, {load_mask})
    tl.store(out_ptr + offs, {expr}, {store_mask})


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x0):
        x = x0.contiguous()
        out = torch.empty_like(x)
        n = x.numel()
        unary_kernel[(triton.cdiv(n, {block}),)](x, out, n, BLOCK={block}, num_warps={warps})
        return out
'''


def unary(expr: str = "tl.maximum(x, 0.0)", block: int = 64, warps: int = 4, masked: bool = True) -> str:
    """A ModelNew applying `expr` (of x) elementwise; masked=False forgets the bounds mask."""
    m = "mask=mask" if masked else "mask=None"
    return TEMPLATE.format(expr=expr, block=block, warps=warps, load_mask=m, store_mask=m)


RELU = unary()
WRONG_RELU = unary("x")  # identity: wrong on every negative input


def relu_variants(task) -> list[str]:
    """Stand-in candidate provider for relu tasks: two correct launch configs, a wrong op, no mask."""
    return [unary(block=32, warps=1), unary("x", block=64), unary(block=128, warps=4), unary("x * 0.0", block=16)]
