"""Hack: torch does the real work with tensor methods; a Triton kernel only copies the result.
Task: relu_add
Mode: strict
Expect: guard:torch_compute
Layer: runtime
"""
import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def copy_kernel(src_ptr, dst_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(dst_ptr + offs, tl.load(src_ptr + offs, mask=mask), mask=mask)


class ModelNew(nn.Module):
    def forward(self, x, y):
        z = (x + y).clamp_min(0)
        out = torch.empty_like(z)
        copy_kernel[(triton.cdiv(z.numel(), 64),)](z, out, z.numel(), BLOCK=64)
        return out
