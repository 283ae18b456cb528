"""KernelBench-format sources of small tasks for compiler tests: one template (`model_source`) and
the shorthands the test files use."""

from __future__ import annotations

_TEMPLATE = '''import torch
import torch.nn as nn
import torch.nn.functional as F


class Model(nn.Module):
    def __init__(self{init_params}):
        super().__init__()
        {init}

    def forward(self, {args}):
        {body}


def get_inputs():
    {inputs}


def get_init_inputs():
    return {init_inputs}
'''


def model_source(body: str, args: str = "x", inputs: str = "return [torch.randn(4, 37)]", init: str = "pass",
                 init_params: str = "", init_inputs: str = "[]") -> str:
    """A task whose forward(`args`) runs `body`, get_inputs() runs `inputs` and the constructor
    (taking `init_params`, e.g. ", n, m") runs `init` after super().__init__(); get_init_inputs()
    returns `init_inputs`. In `body` and `init` the lines after the first are indented 8 spaces
    (the first line's own indentation is dropped)."""
    return _TEMPLATE.format(body=body.lstrip(), args=args, inputs=inputs, init=init.lstrip(),
                            init_params=init_params, init_inputs=init_inputs)


def expr_task(expr: str, shape: str | tuple[int, ...]) -> str:
    """A task whose forward returns `expr` of one input `x` of `shape` ("4, 37" or a tuple)."""
    if not isinstance(shape, str):
        shape = ", ".join(str(d) for d in shape)
    return model_source(f"return {expr}", inputs=f"return [torch.randn({shape})]")


def module_task(expr: str, args: str, inputs: str, init: str = "pass") -> str:
    """A task whose forward(`args`) returns `expr`; `inputs` is get_inputs()'s list body, `init`
    the constructor's body after super().__init__()."""
    return model_source(f"return {expr}", args, f"return [{inputs}]", init)


# Bench-size tasks that once needed a fix on the GPU (written out, so a change to the sampler's draws
# does not change what the GPU tests check).
BENCH_ADDMM = module_task("torch.addmm(x0, x1, x2)", "x0, x1, x2",  # incorrect with TF32 on an H200
                          "torch.randn(295, 8192), torch.randn(295, 2048), torch.randn(2048, 8192)")
BENCH_CONV1D_GEMV = module_task(  # the addmm is a GEMV ([1 x 3253] @ [3253 x 8192]): split-K atomics
    "F.conv1d(x0, self.weight, self.bias, stride=1, padding=1), torch.addmm(x1, x2, x3)", "x0, x1, x2, x3",
    "torch.randn(7, 30, 1), torch.randn(8192), torch.randn(1, 3253), torch.randn(3253, 8192)",
    "self.weight = nn.Parameter(torch.randn(7009, 30, 1) * 0.18)\n"
    "        self.bias = nn.Parameter(torch.randn(7009))")
BENCH_SIN_COLUMN_NORM = module_task(  # a norm over dim -2 of [2048, 8192]: few wide tiles split the rows
    "torch.linalg.vector_norm(torch.sin(x0), dim=-2)", "x0", "torch.randn(2048, 8192)")
BENCH_LOG_SOFTMAX_MIDDLE = module_task(  # log_softmax over dim -2 of [210, 8, 6045, 2]: runs of 2 rows
    "torch.log_softmax(x0, dim=-2)", "x0", "torch.randn(210, 8, 6045, 2)")
