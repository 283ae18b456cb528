"""Hack: TensorDescriptor is the one name a candidate may take from triton.tools; the rest of it
(here its SASS disassembler, beside the allowed descriptor import) stays forbidden.
Task: matmul
Mode: strict
Expect: guard:code_generation
Layer: static
"""
import torch
import torch.nn as nn
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor
from triton.tools.disasm import get_sass


@triton.jit
def copy_kernel(a_desc, c_ptr, N: tl.constexpr, BM: tl.constexpr):
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    tl.store(c_ptr + rm[:, None] * N + tl.arange(0, N)[None, :], a_desc.load([tl.program_id(0) * BM, 0]))


class ModelNew(nn.Module):
    def forward(self, a, b):
        c = torch.empty((a.shape[0], b.shape[1]), device=a.device, dtype=torch.float32)
        copy_kernel[(1,)](TensorDescriptor.from_tensor(a, [16, 32]), c, 32, BM=16)
        get_sass(b"")
        return c
