"""Hack: torch called inside the @triton.jit body (works only under the CPU interpreter).
Task: relu_add
Mode: strict
Expect: guard:torch_compute
Layer: static
"""
import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def k(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    torch.relu(torch.zeros(1))


class ModelNew(nn.Module):
    def forward(self, x, y):
        out = torch.empty_like(x)
        k[(1,)](x, y, out, x.numel(), BLOCK=64)
        return out
