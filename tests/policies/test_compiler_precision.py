"""fp32 matmuls and convolutions ask tl.dot for 3xTF32 products (its TF32 default failed fp32
tolerances at bench sizes on an H200, IEEE products ran up to 2.9x slower); IEEE is the search's
alternative, and plain TF32 in convolution kernels (their references run in TF32 on cuDNN);
half-precision tasks keep tensor cores in their dtype."""

from __future__ import annotations

import pytest

from kernelgym.evaluation import evaluate
from kernelgym.sampler import TaskSampler

compiler = pytest.importorskip("policies.compiler")


@pytest.mark.parametrize("op, seed", [("addmm", 1), ("linear", 0), ("conv1d", 0)])
def test_fp32_dots_are_3xtf32_and_judged_ok(op, seed):
    task = TaskSampler("tiny", "float32").sample(1, seed, ops=[op])   # addmm seed 0 is a GEMV: no tl.dot
    src = compiler.CompilerPolicy().compile(task)
    dots = [line for line in src.splitlines() if "tl.dot(" in line]
    assert dots and all('input_precision="tf32x3"' in line for line in dots), dots
    assert evaluate(task, src, backend="interpret").status == "ok"


def test_half_precision_dots_keep_their_dtype():
    task = TaskSampler("tiny", "float16").sample(1, 0, ops=["matmul"])
    src = compiler.CompilerPolicy().compile(task)
    dots = [line for line in src.splitlines() if "tl.dot(" in line]
    assert dots and all("tl.float16" in line and "input_precision" not in line for line in dots), dots


def test_dot_precision_config_switches_fp32_dots_and_is_validated():
    task = TaskSampler("tiny", "float32").sample(1, 0, ops=["linear"])
    policy = compiler.CompilerPolicy()
    assert policy.seed_configs(task) == [{"dot_precision": "ieee"}]
    src = policy.compile(task, config={"dot_precision": "ieee"})
    dots = [line for line in src.splitlines() if "tl.dot(" in line]
    assert dots and all('input_precision="ieee"' in line for line in dots), dots
    assert policy.compile(task, config={"dot_precision": "tf32x3"}) == policy.compile(task)
    assert evaluate(task, src, backend="interpret").status == "ok"
    with pytest.raises(compiler.CompileError, match="dot_precision.*tf32x3, ieee, tf32.*'fp16'"):
        policy.compile(task, config={"dot_precision": "fp16"})
    # No fp32 dot, nothing to suggest; the config is then a no-op.
    relu = TaskSampler("tiny", "float32").sample(1, 0, ops=["relu"])
    assert policy.seed_configs(relu) == []
    assert policy.compile(relu, config={"dot_precision": "ieee"}) == policy.compile(relu)


def test_convolution_kernels_are_offered_plain_tf32_first():
    """A task with a convolution: the search's first seed runs that kernel's products in plain
    TF32 (as cuDNN runs the reference's), leaving any other product kernel at 3xTF32; a task
    with products only gets no TF32 seed."""
    from kernelgym.task import Task

    src = (
        "import torch\nimport torch.nn as nn\n\n"
        "class Model(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(4, 8, 3)\n"
        "        self.fc = nn.Linear(36, 5)\n\n"
        "    def forward(self, x):\n"
        "        return self.fc(torch.relu(self.conv(x)).flatten(2))\n\n"
        "def get_inputs():\n    return [torch.rand(2, 4, 8, 8)]\n\n"
        "def get_init_inputs():\n    return []\n")
    task = Task.from_source(src)
    policy = compiler.CompilerPolicy()
    seeds = policy.seed_configs(task)
    assert len(seeds) == 2 and seeds[1] == {"dot_precision": "ieee"}
    (name, cfg), = seeds[0]["kernels"].items()
    assert "conv" in name and cfg == {"dot_precision": "tf32"}
    out = policy.compile(task, config=seeds[0])
    dots = {line.strip() for line in out.splitlines() if "tl.dot(" in line}
    assert any('input_precision="tf32")' in d for d in dots) and any('"tf32x3"' in d for d in dots), dots
    assert evaluate(task, out, backend="interpret").status == "ok"
    linear = TaskSampler("tiny", "float32").sample(1, 0, ops=["linear"])
    assert policy.seed_configs(linear) == [{"dot_precision": "ieee"}]
