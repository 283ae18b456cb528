"""Legit: tiled matmul over TMA tensor descriptors whose k loop asks Triton for warp
specialisation (``tl.range(..., warp_specialize=True)``: producer / consumer warp groups on Hopper,
a plain range under the interpreter); b is read as a (k, n) descriptor.
Task: matmul
Mode: strict
Expect: ok
"""
import torch
import torch.nn as nn
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor


@triton.jit
def matmul_ws_kernel(a_desc, b_desc, c_ptr, M, N, K: tl.constexpr,
                     BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in tl.range(0, K, BK, warp_specialize=True):
        a = a_desc.load([pid_m * BM, k])
        b = b_desc.load([k, pid_n * BN])
        acc += tl.dot(a, b, input_precision="ieee")
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    tl.store(c_ptr + rm[:, None] * N + rn[None, :], acc, mask=(rm[:, None] < M) & (rn[None, :] < N))


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, a, b):
        M, K = a.shape
        N = b.shape[1]
        c = torch.empty((M, N), device=a.device, dtype=torch.float32)
        a_desc = TensorDescriptor.from_tensor(a, [16, 16])
        b_desc = TensorDescriptor.from_tensor(b, [16, 16])
        grid = (triton.cdiv(M, 16), triton.cdiv(N, 16))
        matmul_ws_kernel[grid](a_desc, b_desc, c, M, N, K, BM=16, BN=16, BK=16)
        return c
