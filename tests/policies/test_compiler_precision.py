"""fp32 matmuls ask tl.dot for 3xTF32 products (its TF32 default failed fp32 tolerances at bench
sizes on an H200, IEEE products ran up to 2.9x slower), fp32 convolutions for plain TF32 (their
references run in TF32 on cuDNN); the search's alternatives are 3xTF32 convolutions and IEEE
products; half-precision tasks keep tensor cores in their dtype."""

from __future__ import annotations

import pytest

from kernelgym.evaluation import evaluate
from kernelgym.sampler import TaskSampler

compiler = pytest.importorskip("policies.compiler")


@pytest.mark.parametrize("op, seed, precision", [("addmm", 1, "tf32x3"), ("linear", 0, "tf32x3"),
                                              ("conv1d", 0, "tf32"), ("conv_transpose2d", 0, "tf32")])
def test_fp32_products_are_3xtf32_convolutions_tf32_and_judged_ok(op, seed, precision):
    task = TaskSampler("tiny", "float32").sample(1, seed, ops=[op])   # addmm seed 0 is a GEMV: no tl.dot
    src = compiler.CompilerPolicy().compile(task)
    dots = [line for line in src.splitlines() if "tl.dot(" in line]
    assert dots and all(f'input_precision="{precision}")' in line for line in dots), dots
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


def test_convolution_kernels_run_plain_tf32_and_are_offered_3xtf32():
    """A task with a convolution and a product: the conv kernel's products are plain TF32 (as
    cuDNN runs the reference's), the linear's 3xTF32; the search's first seed puts the conv kernel
    at 3xTF32, the second every product at IEEE; a task with products only gets IEEE alone."""
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
    default = {line.strip() for line in policy.compile(task).splitlines() if "tl.dot(" in line}
    assert sorted(d.rsplit("input_precision=", 1)[1] for d in default) == ['"tf32")', '"tf32x3")'], default
    seeds = policy.seed_configs(task)
    assert len(seeds) == 2 and seeds[1] == {"dot_precision": "ieee"}
    (name, cfg), = seeds[0]["kernels"].items()
    assert "conv" in name and cfg == {"dot_precision": "tf32x3"}
    out = policy.compile(task, config=seeds[0])
    dots = {line.strip() for line in out.splitlines() if "tl.dot(" in line}
    assert dots and all('input_precision="tf32x3")' in d for d in dots), dots
    assert evaluate(task, out, backend="interpret").status == "ok"
    ieee = policy.compile(task, config=seeds[1])
    dots = [line for line in ieee.splitlines() if "tl.dot(" in line]
    assert len(dots) == 2 and all('input_precision="ieee")' in d for d in dots), dots
    linear = TaskSampler("tiny", "float32").sample(1, 0, ops=["linear"])
    assert policy.seed_configs(linear) == [{"dot_precision": "ieee"}]
