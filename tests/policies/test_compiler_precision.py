"""fp32 matmuls and convolutions ask tl.dot for IEEE products (its TF32 default failed fp32
tolerances at bench sizes on an H200); half-precision tasks keep tensor cores in their dtype."""

from __future__ import annotations

import pytest

from kernelgym.evaluation import evaluate
from kernelgym.sampler import TaskSampler

compiler = pytest.importorskip("policies.compiler")


@pytest.mark.parametrize("op", ["addmm", "linear", "conv1d"])
def test_fp32_dots_are_ieee_and_judged_ok(op):
    task = TaskSampler("tiny", "float32").sample(1, 0, ops=[op])
    src = compiler.CompilerPolicy().compile(task)
    dots = [line for line in src.splitlines() if "tl.dot(" in line]
    assert dots and all('input_precision="ieee"' in line for line in dots), dots
    assert evaluate(task, src, backend="interpret").status == "ok"


def test_half_precision_dots_keep_their_dtype():
    task = TaskSampler("tiny", "float16").sample(1, 0, ops=["matmul"])
    src = compiler.CompilerPolicy().compile(task)
    dots = [line for line in src.splitlines() if "tl.dot(" in line]
    assert dots and all("tl.float16" in line and "input_precision" not in line for line in dots), dots
