"""Small references and candidates for the evaluation tests (interpreter-sized shapes)."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).parent / "eval_data"
REF_ADD = (DATA / "ref_add.py").read_text()
CAND_ADD = (DATA / "cand_add_ok.py").read_text()

REF_LINEAR = '''
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.scale = nn.Parameter(torch.randn(n))

    def forward(self, x):
        return x * self.scale


def get_inputs():
    return [torch.randn(4, 64)]


def get_init_inputs():
    return [64]
'''

CAND_LINEAR = '''
import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def scale_kernel(x_ptr, s_ptr, out_ptr, n, cols, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    s = tl.load(s_ptr + offs % cols, mask=mask)
    tl.store(out_ptr + offs, x * s, mask=mask)


class ModelNew(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(n))

    def forward(self, x):
        out = torch.empty_like(x)
        n = x.numel()
        scale_kernel[(triton.cdiv(n, 128),)](x, self.scale, out, n, x.shape[-1], BLOCK=128)
        return out
'''


def add_variant(body: str, *, kernel_body: str | None = None, prelude: str = "") -> str:
    """CAND_ADD with forward's kernel launch lines replaced by `body` (and optionally the kernel)."""
    src = CAND_ADD
    if kernel_body is not None:
        src = src.replace("    tl.store(out_ptr + offs, x + y, mask=mask)\n", kernel_body)
    if body:
        src = src.replace(
            "        add_kernel[(triton.cdiv(n, 256),)](x, y, out, n, BLOCK=256)\n        return out\n", body)
    return prelude + src
