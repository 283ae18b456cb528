"""fp32 matmuls and convolutions ask tl.dot for 3xTF32 products (its TF32 default failed fp32
tolerances at bench sizes on an H200, IEEE products ran up to 2.9x slower); IEEE is the search's
alternative; half-precision tasks keep tensor cores in their dtype."""

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
    with pytest.raises(compiler.CompileError, match="dot_precision.*tf32x3, ieee.*'tf32'"):
        policy.compile(task, config={"dot_precision": "tf32"})   # plain TF32 misses fp32 tolerance
    # No fp32 dot, nothing to suggest; the config is then a no-op.
    relu = TaskSampler("tiny", "float32").sample(1, 0, ops=["relu"])
    assert policy.seed_configs(relu) == []
    assert policy.compile(relu, config={"dot_precision": "ieee"}) == policy.compile(relu)
