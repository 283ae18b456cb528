"""Legit: elementwise relu(x + y) with tl.load/tl.store, torch.empty_like output, triton.cdiv grid,
and the import-fallback try/except around libdevice (paths differ between Triton versions).
Task: relu_add
Mode: strict
Expect: ok
"""
import torch
import torch.nn as nn
import triton
import triton.language as tl

try:
    from triton.language.extra import libdevice  # noqa: F401
except ImportError:
    from triton.language.extra.cuda import libdevice  # noqa: F401


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

    def forward(self, x, y):
        x = x.contiguous()
        y = y.contiguous()
        out = torch.empty_like(x)
        n = x.numel()
        relu_add_kernel[(triton.cdiv(n, 64),)](x, y, out, n, BLOCK=64)
        return out
