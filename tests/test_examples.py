"""kernelgym.examples: the example programs parse, the reference is a valid KernelBench-format task
and the candidate options show in the source. (That they are judged ok, incorrect or raising as
intended is checked where they are judged: tests/test_benchmark_scripts.py's throughput run and
the env tests that use tests/_kernels.py.)"""

from __future__ import annotations

import ast

import pytest
import torch

from kernelgym.examples import RELU_MUL_ADD, binary_candidate, relu_mul_add_reference, store, unary_candidate
from kernelgym.task import check_source, exec_source


@pytest.mark.parametrize("numel, scale, forward", [(64, None, "torch.relu(x) * y + x"),
                                                   ("1 << 6", 1.25, "torch.relu(x) * y + x * 1.25")])
def test_reference_is_a_task_computing_relu_mul_add(numel, scale, forward):
    src = relu_mul_add_reference(numel, scale)
    check_source(src)
    assert f"return {forward}" in src
    module = exec_source(src)
    x, y = module.get_inputs()
    assert x.shape == y.shape == (64,)
    expect = torch.relu(x) * y + x * (1.0 if scale is None else scale)
    assert torch.equal(module.Model()(x, y), expect)


def test_binary_candidate_options():
    src = binary_candidate(name="k_7", block=256)
    ast.parse(src)
    assert "def k_7(" in src and "k_7[(triton.cdiv(n, 256),)]" in src and "BLOCK=256" in src
    assert store(RELU_MUL_ADD) in src
    body = "    tl.store(out_ptr + offs, x + y, mask=mask)"
    raising = binary_candidate(body=body, pre="        raise RuntimeError('no')\n")
    ast.parse(raising)
    assert body in raising and RELU_MUL_ADD not in raising
    assert raising.index("raise RuntimeError") < raising.index("fused_kernel[(")


def test_unary_candidate_options():
    src = unary_candidate()
    ast.parse(src)
    assert "tl.maximum(x, 0.0)" in src and "num_warps=4" in src and src.count("mask=mask") == 2
    bare = unary_candidate("x * 2.0", name="relu_kernel", block=256, warps=None, masked=False)
    ast.parse(bare)
    assert "num_warps" not in bare and "mask=None" in bare and "relu_kernel[(triton.cdiv(n, 256),)]" in bare
