"""KernelBench-format task sources for tests (`model_source`: one template for every small
reference program) and running a task's reference model (`model_outputs`)."""

from __future__ import annotations

from typing import Any

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


def model_outputs(task: Any) -> tuple[Any, ...]:
    """The outputs (a tuple) of `task`'s Model built from get_init_inputs() and run on get_inputs(),
    with torch's seed 0 for both."""
    import torch

    from kernelgym.task import exec_source

    module = exec_source(task.source)
    torch.manual_seed(0)
    model = module.Model(*module.get_init_inputs())
    with torch.no_grad():
        out = model(*module.get_inputs())
    return out if isinstance(out, tuple) else (out,)
