"""Legit in lenient mode: torch does the add, a Triton kernel does the relu (KernelBench style).
Task: relu_add
Mode: lenient
Expect: ok
"""
import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def relu_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, tl.maximum(tl.load(x_ptr + offs, mask=mask), 0.0), mask=mask)


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x, y):
        s = x + y
        out = torch.empty_like(s)
        relu_kernel[(triton.cdiv(s.numel(), 64),)](s, out, s.numel(), BLOCK=64)
        return out
