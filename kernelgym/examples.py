"""Hand-written example programs in KernelBench format, for benchmarks, training scripts and tests.

`relu_mul_add_reference` is a `Model` computing ``relu(x) * y + x`` on two vectors;
`binary_candidate` a `ModelNew` with one Triton kernel over two such vectors (its expression,
kernel body, launch block and forward code before the launch chosen by the caller: a correct,
wrong, raising or faulting candidate for that reference); `unary_candidate` a `ModelNew` applying
an expression of one input elementwise (a ReLU by default) with a chosen launch configuration.
"""

from __future__ import annotations

_REFERENCE = '''
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x, y):
        return {expr}


def get_inputs():
    return [torch.randn({numel}), torch.randn({numel})]


def get_init_inputs():
    return []
'''

_BINARY = '''
import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def {name}(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    y = tl.load(y_ptr + offs, mask=mask)
{body}


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x, y):
        out = torch.empty_like(x)
        n = out.numel()
{pre}        {name}[(triton.cdiv(n, {block}),)](x, y, out, n, BLOCK={block})
        return out
'''

_UNARY = '''import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def {name}(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, {mask})
    tl.store(out_ptr + offs, {expr}, {mask})


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x0):
        x = x0.contiguous()
        out = torch.empty_like(x)
        n = x.numel()
        {name}[(triton.cdiv(n, {block}),)](x, out, n, BLOCK={block}{warps})
        return out
'''

RELU_MUL_ADD = "tl.maximum(x, 0.0) * y + x"   # the Triton expression of the reference's forward


def relu_mul_add_reference(numel: int | str, scale: float | None = None) -> str:
    """A Model returning ``torch.relu(x) * y + x`` (``... + x * scale`` when `scale` is given) for two
    inputs of `numel` elements (an int, or an expression such as ``"1 << 22"``)."""
    expr = "torch.relu(x) * y + x" + ("" if scale is None else f" * {scale}")
    return _REFERENCE.format(expr=expr, numel=numel)


def store(expr: str) -> str:
    """The kernel line storing `expr` (of the loaded ``x`` and ``y``) to the output."""
    return f"    tl.store(out_ptr + offs, {expr}, mask=mask)"


def binary_candidate(expr: str = RELU_MUL_ADD, *, name: str = "fused_kernel", block: int = 1024,
                     body: str | None = None, pre: str = "") -> str:
    """A ModelNew(x, y) whose Triton kernel `name` stores `expr`, launched with BLOCK=`block`.

    body: the kernel's lines after the loads of ``x`` and ``y``, instead of the store of `expr`;
    pre: forward's lines (indented 8 spaces, each ending in a newline) run before the launch."""
    return _BINARY.format(name=name, body=store(expr) if body is None else body, pre=pre, block=block)


def unary_candidate(expr: str = "tl.maximum(x, 0.0)", *, name: str = "unary_kernel", block: int = 64,
                    warps: int | None = 4, masked: bool = True) -> str:
    """A ModelNew(x) applying `expr` (of ``x``) elementwise with BLOCK=`block` and `warps` warps (None:
    Triton's default, not written); masked=False forgets the bounds mask."""
    return _UNARY.format(name=name, expr=expr, block=block, mask="mask=mask" if masked else "mask=None",
                         warps="" if warps is None else f", num_warps={warps}")
