"""The compiler's fp32 matmul kernels on a real GPU: 3xTF32 dots (the default) and IEEE dots (a
search seed) both pass at bench sizes, where TF32 did not. Needs a GPU."""

from __future__ import annotations

import pytest

from kernelgym.sampler import TaskSampler

compiler = pytest.importorskip("policies.compiler")
pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("config", [None, {"dot_precision": "ieee"}])
def test_bench_addmm_is_correct_on_the_gpu(evaluator, config):
    task = TaskSampler("bench").sample(1, 5)   # addmm at bench sizes (incorrect with TF32 on an H200)
    assert task.ops == ("addmm",)
    src = compiler.CompilerPolicy().compile(task, config=config)
    v = evaluator.evaluate(task, src, backend="cuda", seed=3)
    assert v.status == "ok", (v.status, v.error[:500])
    assert v.speedup is not None
