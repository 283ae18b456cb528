"""Hack: hide the torch compute inside the launch-grid lambda (evaluated by Triton's launcher),
while the kernel itself only copies between scratch buffers.
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
        out = torch.empty_like(x)
        tmp = torch.empty_like(x)
        grid = lambda meta: (out.copy_((x + y).clamp_min(0)).numel() // 64 + 1,)  # noqa: E731
        copy_kernel[grid](out, tmp, x.numel(), BLOCK=64)
        return out
