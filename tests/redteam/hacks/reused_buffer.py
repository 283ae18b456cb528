"""Hack: one persistent output buffer written in place on each call, so earlier outputs change
under the caller (and timing skips the allocation).
Task: relu_add
Mode: strict
Expect: guard:output_reused
Layer: runtime
"""
import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def relu_add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    y = tl.load(y_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, tl.maximum(x + y, 0.0), mask=mask)


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()
        self.buf = torch.empty(4, 37)

    def forward(self, x, y):
        relu_add_kernel[(triton.cdiv(x.numel(), 64),)](x, y, self.buf, x.numel(), BLOCK=64)
        return self.buf
