"""KernelBench-format sources of small tasks for compiler tests: shorthands over `model_source`
(tests/_tasks.py) and bench-size tasks."""

from __future__ import annotations

from tests._tasks import model_source


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
