"""KernelBench-format sources of one-expression tasks for compiler tests."""

from __future__ import annotations

_TEMPLATE = '''import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        return {expr}


def get_inputs():
    return [torch.randn({shape})]


def get_init_inputs():
    return []
'''


def expr_task(expr: str, shape: str | tuple[int, ...]) -> str:
    """A task whose forward returns `expr` of one input `x` of `shape` ("4, 37" or a tuple)."""
    if not isinstance(shape, str):
        shape = ", ".join(str(d) for d in shape)
    return _TEMPLATE.format(expr=expr, shape=shape)
