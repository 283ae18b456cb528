"""Split-K products: a fp32 product with few output tiles and a long reduction (a GEMV) splits k
over programs that add partial sums into a zeroed output; a product with an epilogue, or in half
precision, does not. Judged under the interpreter (with the evaluator's sm_90 PTX check)."""

from __future__ import annotations

import re

import pytest

from kernelgym.task import Task

compiler = pytest.importorskip("policies.compiler")
from policies.compiler.kernels import GEMV_PROGRAMS, PROGRAMS_MIN, SPLIT_K_MIN, split_k  # noqa: E402

TEMPLATE = '''
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, b, x, w):
        return {expr}


def get_inputs():
    return [torch.randn({n}, dtype={dtype}), torch.randn({lead}{m}, {k}, dtype={dtype}),
            torch.randn({lead}{k}, {n}, dtype={dtype})]


def get_init_inputs():
    return []
'''


def task(expr: str, m: int, k: int, n: int, batch: int = 0, dtype: str = "torch.float32") -> Task:
    lead = f"{batch}, " if batch else ""
    return Task.from_source(TEMPLATE.format(expr=expr, m=m, k=k, n=n, lead=lead, dtype=dtype))


def split_of(src: str) -> int | None:
    found = re.findall(r"SPLIT_K=(\d+)", src)
    return int(found[0]) if found else None


@pytest.mark.parametrize("tiles, k, split", [
    (64, 3253, 8),       # the H200 bench GEMV: 64 column tiles of 128 -> 512 programs
    (128, 3253, 4),
    (1, 2048, 8),        # one tile: split until a program keeps SPLIT_K_MIN of k
    (1, 300, 1),         # too short to split
    (256, 4096, 1),      # about two waves of tiles: enough programs
    (129, 4096, 1),      # more tiles than a quarter of PROGRAMS_MIN: no split
])
def test_split_k_rule(tiles, k, split):
    assert split_k(tiles, k) == split
    assert split == 1 or (k // split >= SPLIT_K_MIN and tiles * split <= PROGRAMS_MIN)


def test_gemv_aims_at_more_programs():
    # the bench GEMV: 128 column tiles of 64 split 8 ways (1024 programs) where a tl.dot product
    # would stop at 512
    assert split_k(128, 3253, GEMV_PROGRAMS) == 8 and split_k(128, 3253) == 4
    src = compiler.CompilerPolicy().compile(task("torch.addmm(b, x, w)", m=1, k=3253, n=8192))
    assert "BLOCK_N=64, BLOCK_K=64, SPLIT_K=8" in src, src


def test_gemv_splits_k_and_is_correct(evaluator):
    t = task("torch.addmm(b, x, w)", m=1, k=2048, n=48)
    policy = compiler.CompilerPolicy()
    src = policy.compile(t)
    assert split_of(src) == 8, src
    assert "tl.atomic_add(" in src and "torch.zeros((1, 48)" in src and "tl.where(pid_k == 0," in src
    one = policy.compile(t, config={"SPLIT_K": 1})
    two = policy.compile(t, config={"SPLIT_K": 2, "BLOCK_K": 64})
    assert split_of(one) == 1 and split_of(two) == 2
    verdicts = evaluator.evaluate_batch([(t, src), (t, one), (t, two)], backend="interpret", seed=7)
    assert [v.status for v in verdicts] == ["ok"] * 3, [(v.status, v.error[:400]) for v in verdicts]


def test_batched_product_splits_per_batch(evaluator):
    t = task("torch.bmm(x, w), b * 2.0", m=2, k=1024, n=16, batch=3)
    src = compiler.CompilerPolicy().compile(t)
    assert split_of(src) == 4, src
    assert "pid_b = pid_z // SPLIT_K" in src and '3 * meta["SPLIT_K"]' in src, src
    v = evaluator.evaluate(t, src, backend="interpret", seed=3)
    assert v.status == "ok", (v.status, v.error[:400])


GEMV = {  # name: (expr, m, k, n, batch, dtype, split expected)
    "matmul_relu": ("torch.relu(torch.matmul(x, w)) + b", 1, 600, 48, 0, "torch.float32", None),
    "bmm_rows": ("torch.bmm(x, w), b * 2.0", 1, 40, 24, 3, "torch.float32", None),
    "bmm_split": ("torch.bmm(x, w), b * 2.0", 1, 1024, 24, 3, "torch.float32", 4),
    "addmm_half": ("torch.addmm(b, x, w)", 1, 96, 40, 0, "torch.float16", None),
}


@pytest.mark.parametrize("name", sorted(GEMV))
def test_one_row_products_use_the_gemv_template(evaluator, name):
    expr, m, k, n, batch, dtype, split = GEMV[name]
    t = task(expr, m=m, k=k, n=n, batch=batch, dtype=dtype)
    src = compiler.CompilerPolicy().compile(t)
    assert "tl.dot(" not in src and "tl.sum(acc, axis=0)" in src, src
    assert split_of(src) == split, src
    v = evaluator.evaluate(t, src, backend="interpret", seed=5)
    assert v.status == "ok", (v.status, v.error[:400])


LINEAR = '''
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear({k}, {n}, bias={bias})

    def forward(self, x):
        return self.fc(x)


def get_inputs():
    return [torch.randn(1, 1, {k})]


def get_init_inputs():
    return []
'''


@pytest.mark.parametrize("bias, k, n, split", [(True, 1100, 40, 4), (False, 100, 40, None)])
def test_one_row_linear_reads_its_weight_along_k(evaluator, bias, k, n, split):
    t = Task.from_source(LINEAR.format(k=k, n=n, bias=bias))
    src = compiler.CompilerPolicy().compile(t)
    assert "tl.dot(" not in src and split_of(src) == split, src
    assert "BLOCK_N=32, BLOCK_K=128" in src, src   # the weight's contiguous axis (k) is the wide one
    v = evaluator.evaluate(t, src, backend="interpret", seed=6)
    assert v.status == "ok", (v.status, v.error[:400])


def test_no_split_with_an_epilogue_or_in_half_precision():
    policy = compiler.CompilerPolicy()
    fused = policy.compile(task("torch.relu(torch.addmm(b, x, w))", m=1, k=2048, n=48))
    assert split_of(fused) is None and "atomic_add" not in fused and "torch.zeros" not in fused
    half = policy.compile(task("torch.addmm(b, x, w)", m=1, k=2048, n=48, dtype="torch.float16"))
    assert split_of(half) is None and "atomic_add" not in half
