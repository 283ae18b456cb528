"""Hack: torch writes the output; a Triton kernel is launched on the output but stores nothing
(it only looks like it produced it).
Task: relu_add
Mode: strict
Expect: guard:output_not_from_triton
Layer: runtime
"""
import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def touch_kernel(out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(out_ptr + offs, mask=offs < n)


class ModelNew(nn.Module):
    def forward(self, x, y):
        out = (x + y).clamp_min(0)
        touch_kernel[(triton.cdiv(out.numel(), 64),)](out, out.numel(), BLOCK=64)
        return out
