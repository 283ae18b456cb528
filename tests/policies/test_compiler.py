"""Compiler policy: every catalog op in strict mode, sampled tasks, fusion, partitions, launch
configs, the lenient fallback, tracing of hand-written KernelBench files and determinism.

Candidates are judged under the Triton interpreter by the session's evaluator, in batches (one
`evaluate_batch` per test) so that the two workers stay busy."""

from __future__ import annotations

import ast
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kernelgym.ops import CATALOG
from kernelgym.sampler import sample_task
from kernelgym.sampler.model import VIEW_OPS
from kernelgym.task import Task
from policies.base import Attempt
from policies.compiler import (
    TORCH_FALLBACK,
    CompileError,
    CompilerPolicy,
    PartitionError,
    TraceError,
    candidate_partitions,
    default_partition,
    graph_from_source,
    partition_problem,
)
from policies.compiler.ir import CONV, MATMUL, SUPPORTED
from policies.compiler.module import check_config
from tests.policies._tasks import expr_task, module_task

ROOT = Path(__file__).resolve().parents[2]


# -- helpers --------------------------------------------------------------------------------------
def single_op_task(op: str, seed: int = 0) -> Task:
    """A tiny sampled task whose graph is `op` alone (views after a relu: they need a producer)."""
    if op in VIEW_OPS:
        return sample_task(2, seed, ops=["relu", op])
    return sample_task(1, seed, ops=[op])


def kernel_defs(src: str) -> list[str]:
    """Names of the generated kernels (jit helpers such as _tanh excluded)."""
    return re.findall(r"^@triton\.jit\ndef (k\d+_\w+)\(", src, re.MULTILINE)


def launches(src: str) -> list[str]:
    return re.findall(r"^\s+(k\d+_\w+)\[grid\]\(", src, re.MULTILINE)


def forward_calls(src: str) -> list[str]:
    """Dotted names of every call in ModelNew.forward (launches show as ``<launch>``)."""
    tree = ast.parse(src)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ModelNew")
    fwd = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "forward")
    out = []
    for node in ast.walk(fwd):
        if isinstance(node, ast.Call):
            out.append("<launch>" if isinstance(node.func, ast.Subscript) else ast.unparse(node.func))
    return out


# Calls a strict forward may make: allocation, grid arithmetic, state lookups and launches.
ALLOWED_FORWARD_CALLS = {"torch.empty", "triton.cdiv", "<launch>", "self.get_parameter", "self.get_buffer"}


def torch_compute_calls(src: str) -> list[str]:
    return [c for c in forward_calls(src) if c not in ALLOWED_FORWARD_CALLS]


def judge(evaluator, pairs, mode="strict", seed=0):
    return evaluator.evaluate_batch(pairs, "interpret", mode, "local", seed=seed)


def failures(names, verdicts) -> dict[str, str]:
    return {n: f"{v.status} {v.reasons[:2]} {v.error[:300]}" for n, v in zip(names, verdicts) if v.status != "ok"}


def compile_triton_only(problems: dict[str, tuple]) -> tuple[list[str], list[Task], dict[str, str]]:
    """Compile every problem (name -> (source, ...)) in strict mode, checking each has kernels and
    no torch compute in forward: (sorted names, their tasks, the generated source by name)."""
    policy = CompilerPolicy()
    names = sorted(problems)
    tasks = [Task.from_source(problems[n][0]) for n in names]
    by_name = {n: policy.compile(t) for n, t in zip(names, tasks)}
    for n, s in by_name.items():
        assert kernel_defs(s) and torch_compute_calls(s) == [], n
    return names, tasks, by_name


def chain_task() -> Task:
    """A sampled d=3 task linear -> mul_scalar -> gelu (a matmul with an elementwise epilogue)."""
    task = sample_task(3, 1, ops=["linear", "gelu", "mul_scalar"])
    g = task.graph
    assert g.ops == ("linear", "mul_scalar", "gelu") and g.edges() == [(0, 1), (1, 2)], g
    return task


LINEAR_RELU = '''
import torch
import torch.nn as nn


class Model(nn.Module):
    """y = relu(x @ W.T + b) * 2"""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.fc = nn.Linear(in_features, out_features)

    def forward(self, x):
        return torch.relu(self.fc(x)) * 2.0


def get_inputs():
    return [torch.randn(8, 32)]


def get_init_inputs():
    return [32, 16]
'''

CONV_BN = '''
import torch
import torch.nn as nn
import torch.nn.functional as F


class Model(nn.Module):
    def __init__(self, channels=3, features=8):
        super().__init__()
        self.conv = nn.Conv2d(channels, features, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(features)
        self.scale = nn.Parameter(torch.randn(features))

    def forward(self, x):
        y = F.gelu(self.bn(self.conv(x)))
        n, c, h, w = y.shape
        y = y.view(n, c, h * w).transpose(1, 2)   # (n, h*w, features)
        return torch.softmax(y, dim=-1) * self.scale


def get_inputs():
    return [torch.randn(2, 3, 6, 6)]


def get_init_inputs():
    return []
'''

MATMUL_STATE = '''
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self, k: int = 16, n: int = 12):
        super().__init__()
        self.W = nn.Parameter(torch.randn(k, n))
        self.b = nn.Parameter(torch.randn(n))

    def forward(self, x):
        return torch.tanh(x @ self.W + self.b)


def get_inputs():
    return [torch.randn(8, 16)]


def get_init_inputs():
    return []
'''

GEMM_T_SUM = '''
import torch
import torch.nn as nn


class Model(nn.Module):
    """KernelBench level-2 style: a weight used through .T, a scale from the constructor."""

    def __init__(self, input_size, hidden_size, scaling_factor):
        super(Model, self).__init__()
        self.weight = nn.Parameter(torch.randn(hidden_size, input_size))
        self.scaling_factor = scaling_factor

    def forward(self, x):
        x = torch.matmul(x, self.weight.T)
        original = x
        x = torch.sigmoid(x) * self.scaling_factor + original
        return torch.sum(x / 2, dim=1, keepdim=True)


batch_size = 16


def get_inputs():
    return [torch.randn(batch_size, 10)]


def get_init_inputs():
    return [10, 20, 1.5]
'''

NOT_IN_CATALOG = '''
import torch
import torch.nn as nn


class Model(nn.Module):
    def forward(self, x):
        y = torch.relu(x)
        return torch.fft.fft(y).real + torch.sort(y, dim=-1).values


def get_inputs():
    return [torch.randn(4, 8)]


def get_init_inputs():
    return []
'''

PYTHON_LOOP = '''
import torch
import torch.nn as nn


class Model(nn.Module):
    def forward(self, x):
        out = x
        while out.abs().max() > 1:       # a loop on tensor values: no graph of catalog ops
            out = out / 2
        return out


def get_inputs():
    return [torch.randn(4, 8)]


def get_init_inputs():
    return []
'''


# -- every catalog op, strict ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def catalog_sources() -> dict[str, tuple[Task, str]]:
    policy = CompilerPolicy()
    out = {}
    for op in sorted(CATALOG):
        task = single_op_task(op)
        assert op in task.ops
        out[op] = (task, policy.compile(task))
    return out


def test_every_catalog_op_has_a_triton_lowering_or_is_documented():
    assert set(CATALOG) <= SUPPORTED | TORCH_FALLBACK, sorted(set(CATALOG) - SUPPORTED - TORCH_FALLBACK)
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Compiler policy", 1)[1].split("\n## ", 1)[0]
    for op in TORCH_FALLBACK:
        assert f"`{op}`" in section, f"{op} computed in torch but not listed in the README"


def test_every_catalog_op_compiles_to_triton_kernels_only(catalog_sources):
    """Static checks on all ops: a parsing module, at least one generated kernel launched in
    order, no torch compute in forward, tl.dot for matmuls and convolutions (a one-row product, a
    GEMV, sums FMAs instead)."""
    policy = CompilerPolicy()
    for op, (task, src) in catalog_sources.items():
        ast.parse(src)
        assert "class ModelNew(nn.Module)" in src, op
        defs = kernel_defs(src)
        assert defs and launches(src) == defs, (op, defs, launches(src))
        assert torch_compute_calls(src) == [], (op, torch_compute_calls(src))
        assert policy.unsupported(task) == [], op
        if op in MATMUL | CONV:
            assert "tl.dot(" in src or "tl.sum(acc, axis=0)" in src or depthwise(task), op
            if depthwise(task):  # one input channel a group: the window's taps on CUDA cores
                assert "for r0 in range(" in src and "tl.dot(" not in src, op


def depthwise(task: Task) -> bool:
    """A single-op convolution task with one input channel a group (and several groups)."""
    from kernelgym.ops.catalog import conv_groups

    g = task.graph
    node, cin = g.nodes[0], g.in_shapes(0)[0][1]
    return node.op in CONV and conv_groups(node.params, cin) == cin > 1


def test_every_launch_grid_is_a_tuple(catalog_sources):
    """Regression: a one-axis row-kernel grid returned an int (`(cdiv(m, BLOCK_M))`), which the
    interpreter accepts and Triton 3.6's launcher on a GPU rejects ("object of type 'int' has no
    len()"); so did a GEMV's without split-K. Every grid of every catalog op and of row kernels of
    each kind must give a tuple."""
    import triton

    class Meta(dict):
        def __missing__(self, key):
            return 16

    policy = CompilerPolicy()
    sources = [src for _, src in catalog_sources.values()]
    for expr, shape in [("torch.linalg.vector_norm(x, dim=0)", "2048, 64"),   # split rows
                        ("torch.sum(x, dim=-1)", "3, 40000"),                # split contiguous rows
                        ("torch.std(x, dim=-1)", "100, 97"),                 # short rows
                        ("torch.softmax(x, dim=-2)", "64, 300, 2")]:         # non-innermost rows
        sources.append(policy.compile(Task.from_source(expr_task(expr, shape))))
    assert any("SPLIT_R=" in s for s in sources) and any("SPLIT_K=" not in s for s in sources)
    grids = [line.split("=", 1)[1].split("#")[0] for src in sources for line in src.splitlines()
             if line.strip().startswith("grid = lambda meta:")]
    assert len(grids) >= len(sources)
    for text in grids:
        grid = eval(text, {"triton": triton})(Meta())  # noqa: S307 - the compiler's own output
        assert isinstance(grid, tuple) and all(isinstance(g, int) for g in grid), text


def test_every_catalog_op_is_judged_ok_in_strict_mode(evaluator, catalog_sources):
    """Each single-op task compiled from its graph, and again from its source alone (traced),
    judged in one batch."""
    names = sorted(catalog_sources)
    policy = CompilerPolicy()
    traced = [Task.from_source(catalog_sources[n][0].source) for n in names]
    assert all(t.graph is None for t in traced)
    pairs = [catalog_sources[n] for n in names] + [(t, policy.compile(t)) for t in traced]
    verdicts = judge(evaluator, pairs)
    assert failures(names + [f"{n} (traced)" for n in names], verdicts) == {}
    assert all(v.kernels for v in verdicts)


# -- sampled tasks ------------------------------------------------------------------------------
def test_sampled_tasks_at_difficulties_2_and_3_are_ok(evaluator):
    policy = CompilerPolicy()
    tasks = [sample_task(d, s) for d in (2, 3) for s in (11, 12, 13)]
    pairs = [(t, policy.propose(t, n=1)[0]) for t in tasks]
    verdicts = judge(evaluator, pairs, seed=5)
    assert failures([f"{t.id} {t.ops}" for t in tasks], verdicts) == {}


def test_row_anchors_feed_their_epilogue_a_value_not_an_expression(evaluator):
    """Regression: a normalisation row (softmax, layer_norm, ...) fused with an epilogue whose
    formula multiplies its argument (mish: x * tanh(softplus(x))) substituted the row's
    unparenthesised expression, so `a - b * t` was computed instead of `(a - b) * t`."""
    from policies.compiler.ir import NORMALIZE, SCAN

    policy = CompilerPolicy()
    names, pairs = [], []
    for op in sorted(NORMALIZE | SCAN):
        task = sample_task(2, 2, ops=[op, "mish"])
        g = task.graph
        assert g.ops == (op, "mish") and g.edges() == [(0, 1)] and default_partition(g) == [[0, 1]]
        names.append(op)
        pairs.append((task, policy.compile(task)))
    for d, s in ((2, 1229), (3, 1251)):  # layer_norm -> mish; group_norm -> log_softmax -> hardswish
        names.append(f"d{d}_s{s}")
        pairs.append((sample_task(d, s), policy.compile(sample_task(d, s))))
    assert failures(names, judge(evaluator, pairs, seed=4)) == {}


# -- fusion ---------------------------------------------------------------------------------------
def test_matmul_epilogue_is_one_kernel_with_tl_dot():
    task = chain_task()
    assert default_partition(task.graph) == [[0, 1, 2]]
    src = CompilerPolicy().compile(task)
    (name,) = kernel_defs(src)
    body = src.split(f"def {name}(", 1)[1].split("\nclass ModelNew", 1)[0]
    assert "tl.dot(" in body and "tl.erf(" in body and "* 3.0" in body  # matmul, gelu, mul_scalar
    # only the output is allocated: the intermediate values never reach memory
    assert forward_calls(src).count("torch.empty") == 1


# KernelBench level 2 #33 (Gemm, scale, batch norm) and #52's tail (a convolution, then a batch norm)
# at tiny sizes: neither 37 rows nor 5 / 7 channels fill a tile, so every edge is masked
GEMM_SCALE_BN = module_task("self.bn(self.gemm(x) * self.scale)", "x", "torch.randn(37, 40)",
                            "self.gemm = nn.Linear(40, 5)\n        self.scale = nn.Parameter(torch.randn(5))\n"
                            "        self.bn = nn.BatchNorm1d(5)")
CONV_BN_EPILOGUE = module_task("self.bn(self.conv(x))", "x", "torch.randn(2, 3, 9, 7)",
                               "self.conv = nn.Conv2d(3, 7, 3)\n        self.bn = nn.BatchNorm2d(7)")


def test_epilogue_parameters_are_loaded_once_per_column(evaluator):
    """A per-channel parameter in a product's or convolution's epilogue (bias, scale, a batch
    norm's statistics) is loaded at its own shape, masked by the column mask, and broadcast by the
    arithmetic: loaded at the tile's shape (``+ zero2``) it held a register per lane, and Gemm +
    BatchNorm spilled about 1 KB a thread on sm_90. Masked rows then hold the parameter, not 0,
    and are never stored."""
    policy = CompilerPolicy()
    names, pairs = [], []
    for name, source, col in (("gemm_scale_bn", GEMM_SCALE_BN, "(rn[None, :] < 5)"),
                              ("conv_bn", CONV_BN_EPILOGUE, "(rc[None, :] < 7)")):
        task = Task.from_source(source)
        src = policy.compile(task)
        (kernel,) = kernel_defs(src)
        assert "zero2" not in src, name
        params = re.findall(r"= tl\.load\((\w+)_ptr \+ r[nc]\[None, :\], mask=(.*?), other=0\.0\)", src)
        assert len(params) >= 4 and {m for _, m in params} == {col}, (name, params)
        names.append(name)
        pairs.append((task, src))
    assert failures(names, judge(evaluator, pairs, seed=6)) == {}


@pytest.mark.parametrize("ops,seed,nodes", [
    (["softmax"], 1, 1),                    # a softmax row
    (["exp", "sum"], 2, 2),                 # exp fused into the reduction's loads
    (["relu", "exp", "neg"], 2, 3),         # an elementwise chain
    (["layer_norm", "relu"], 0, 2),         # a norm row with an epilogue
])
def test_rows_and_chains_are_one_kernel(ops, seed, nodes):
    task = sample_task(len(ops), seed, ops=ops)
    g = task.graph
    assert len(g.nodes) == nodes and len(g.edges()) == nodes - 1  # a chain
    src = CompilerPolicy().compile(task)
    assert len(kernel_defs(src)) == 1 and len(launches(src)) == 1
    assert forward_calls(src).count("torch.empty") == 1


def test_less_fusion_means_more_kernels():
    task = chain_task()
    policy = CompilerPolicy()
    src = policy.compile(task, partition=[[0], [1], [2]])
    assert len(kernel_defs(src)) == 3 and forward_calls(src).count("torch.empty") == 3


# -- partitions and launch configs ---------------------------------------------------------------
def test_candidate_partitions_are_valid_distinct_and_each_compiles_ok(evaluator):
    task = chain_task()
    g = task.graph
    parts = candidate_partitions(g)
    assert parts[0] == default_partition(g) and len(parts) >= 3
    assert len({repr(p) for p in parts}) == len(parts)
    for p in parts:
        assert sorted(i for grp in p for i in grp) == list(range(len(g.nodes))), p
        assert partition_problem(g, p) is None
    assert candidate_partitions(g, limit=2) == parts[:2]
    policy = CompilerPolicy()
    srcs = [policy.compile(task, partition=p) for p in parts]
    assert [len(kernel_defs(s)) for s in srcs] == [len(p) for p in parts]
    assert len(set(srcs)) == len(srcs)
    # the same task with launch configs: global, per kernel (index and name) and both
    configs = [{"BLOCK": 64, "num_warps": 2}, {"kernels": {0: {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 16}}},
               {"BLOCK_R": 16, "kernels": {kernel_defs(srcs[0])[0]: {"num_stages": 2}}}]
    srcs += [policy.compile(task, partition=parts[-1], config=configs[0]),
             policy.compile(task, config=configs[1]), policy.compile(task, config=configs[2])]
    assert "BLOCK=64" in srcs[-3] and "num_warps=2" in srcs[-3]
    assert "BLOCK_M=32, BLOCK_N=32, BLOCK_K=16" in srcs[-2] and "num_stages=2" in srcs[-1]
    verdicts = judge(evaluator, [(task, s) for s in srcs], seed=3)
    assert failures([str(i) for i in range(len(srcs))], verdicts) == {}


@pytest.mark.parametrize("partition,message", [
    ([[0, 1]], r"nodes \[2\] are in no group"),
    ([[0, 1], [1, 2]], "node 1 is in groups 0 and 1"),
    ([[0, 2], [1]], "re-enters the group"),
    ([[0], [1, 2, 7]], "out of range"),
    ([["0"], [1, 2]], "must be ints"),
    ("012", "a partition is a list of groups"),
])
def test_invalid_partitions_raise_partition_error(partition, message):
    with pytest.raises(PartitionError, match=message):
        CompilerPolicy().compile(chain_task(), partition=partition)


def test_two_anchors_cannot_share_a_kernel():
    task = sample_task(2, 0, ops=["linear", "softmax"])
    g = task.graph
    assert sorted(g.ops) == ["linear", "softmax"] and g.edges() == [(0, 1)]
    assert len(default_partition(g)) == 2
    with pytest.raises(PartitionError, match="both need their own loop structure"):
        CompilerPolicy().compile(task, partition=[[0, 1]])


@pytest.mark.parametrize("config,message", [
    ({"BLOK": 64}, "unknown config key 'BLOK'"),
    ({"BLOCK": 48}, r"config\['BLOCK'\] = 48 is not a power of two"),
    ({"BLOCK": 1 << 17}, "is not a power of two in"),
    ({"BLOCK": "64"}, r"config\['BLOCK'\] must be an int, got '64'"),
    ({"num_warps": True}, "must be an int"),
    ({"num_warps": 3}, "num_warps must be a power of two <= 32, got 3"),
    ({"num_stages": 0}, "num_stages must be in 1..8, got 0"),
    ({"kernels": [1]}, r"config\['kernels'\] must map a kernel index or name"),
    ({"kernels": {0: {"kernels": {}}}}, "cannot nest 'kernels'"),
    ({"kernels": {0: {"BLOCK_Q": 2}}}, "unknown config key 'BLOCK_Q'"),
    ([("BLOCK", 64)], "config must be a mapping"),
])
def test_bad_configs_are_rejected_with_clear_messages(config, message):
    with pytest.raises(CompileError, match=message):
        check_config(config)
    with pytest.raises(CompileError, match=message):
        CompilerPolicy(config=config)
    with pytest.raises(CompileError, match=message):
        CompilerPolicy().compile(chain_task(), config=config)


def test_dot_blocks_below_16_are_refused():
    with pytest.raises(CompileError, match="tl.dot needs blocks of at least 16"):
        CompilerPolicy().compile(chain_task(), config={"BLOCK_K": 8})
    # a pointwise kernel accepts small blocks
    assert "BLOCK=8" in CompilerPolicy().compile(chain_task(), partition=[[0], [1, 2]], config={"BLOCK": 8})


def test_policy_default_config_merges_under_the_call_config():
    """The call's per-kernel keys merge with the policy's for the same kernel (regression: the
    call's kernel entry used to replace the policy's whole entry)."""
    policy = CompilerPolicy(config={"num_warps": 2, "kernels": {"0": {"BLOCK_M": 32}}})
    src = policy.compile(chain_task(), config={"kernels": {"0": {"BLOCK_N": 32}}})
    assert "BLOCK_M=32, BLOCK_N=32" in src and "num_warps=2" in src


def test_propose_gives_distinct_candidates_and_skips_history():
    task = chain_task()
    policy = CompilerPolicy()
    first = policy.propose(task, n=4)
    assert len(first) == 4 and len(set(first)) == 4 and first[0] == policy.compile(task)
    again = policy.propose(task, n=2, history=[Attempt(source=first[0], verdict={"status": "ok"})])
    assert len(again) == 2 and first[0] not in again
    assert policy.propose(task, n=0) == []


# -- lenient fallback and unsupported ops ---------------------------------------------------------
def test_lenient_torch_op_runs_in_torch_and_is_ok_in_lenient_mode(evaluator):
    task = chain_task()
    policy = CompilerPolicy(mode="lenient", torch_ops={"gelu"})
    assert policy.unsupported(task) == ["gelu"] and CompilerPolicy().unsupported(task) == []
    src = policy.compile(task)
    assert "gelu in torch (lenient fallback)" in src
    assert torch_compute_calls(src), forward_calls(src)
    assert len(kernel_defs(src)) == 1  # linear -> mul_scalar still fused, gelu left out
    lenient, strict = judge(evaluator, [(task, src), (task, src)], mode="lenient", seed=1)[0], \
        judge(evaluator, [(task, src)], mode="strict", seed=1)[0]
    assert lenient.status == "ok", (lenient.status, lenient.reasons, lenient.error)
    assert strict.status == "hack_detected" and any("torch_compute" in r for r in strict.reasons), strict.reasons


def test_torch_ops_need_lenient_mode_and_a_triton_kernel():
    with pytest.raises(ValueError, match="needs mode='lenient'"):
        CompilerPolicy(torch_ops={"relu"})
    with pytest.raises(ValueError, match="mode must be"):
        CompilerPolicy(mode="fast")
    task = single_op_task("relu")
    with pytest.raises(CompileError, match="every op would run in torch"):
        CompilerPolicy(mode="lenient", torch_ops={"relu"}).compile(task)


def test_an_op_without_lowering_is_named(monkeypatch):
    """An op the compiler cannot write (simulated by removing relu's lowering): strict mode names
    it, `unsupported` lists it; lenient mode computes it in torch when the fallback allows it."""
    from policies import compiler

    monkeypatch.setattr(compiler, "SUPPORTED", SUPPORTED - {"relu"})
    task = sample_task(2, 0, ops=["relu", "exp"])
    assert CompilerPolicy().unsupported(task) == ["relu"]
    with pytest.raises(CompileError, match="no lowering for op.s. relu"):
        CompilerPolicy().compile(task)
    monkeypatch.setattr(compiler, "TORCH_FALLBACK", frozenset({"relu"}))
    with pytest.raises(CompileError, match="strict mode: op.s. relu have no Triton lowering"):
        CompilerPolicy().compile(task)
    assert "relu in torch (lenient fallback)" in CompilerPolicy(mode="lenient").compile(task)


# -- tracing hand-written tasks -------------------------------------------------------------------
def test_traced_kernelbench_files_compile_and_are_ok(evaluator):
    g = graph_from_source(LINEAR_RELU)
    assert g.ops == ("linear", "relu", "mul_scalar")
    assert [s.key for s in g.state] == ["fc.weight", "fc.bias"]
    g2 = graph_from_source(CONV_BN)
    assert g2.ops == ("conv2d", "batch_norm", "gelu", "flatten", "transpose", "softmax", "mul")
    assert graph_from_source(MATMUL_STATE).ops == ("matmul", "add", "tanh")
    assert graph_from_source(GEMM_T_SUM).ops == ("transpose", "matmul", "sigmoid", "mul_scalar", "add",
                                                  "div_scalar", "sum")
    policy = CompilerPolicy()
    tasks = [Task.from_source(src) for src in (LINEAR_RELU, CONV_BN, MATMUL_STATE, GEMM_T_SUM)]
    srcs = [policy.compile(t) for t in tasks]
    assert len(kernel_defs(srcs[0])) == 1 and "def __init__(self, in_features, out_features)" in srcs[0]
    assert 'self.add_module("fc", nn.Module())' in srcs[0]
    assert len(kernel_defs(srcs[2])) == 1 and "def __init__(self, k: int=16, n: int=12)" in srcs[2]
    assert policy.compile(LINEAR_RELU) == srcs[0]  # a source string works as a task
    for s in srcs:
        assert torch_compute_calls(s) == []
    verdicts = judge(evaluator, list(zip(tasks, srcs)), seed=2)
    assert failures(["linear_relu", "conv_bn", "matmul_state", "gemm_t_sum"], verdicts) == {}


def test_calls_outside_the_catalog_are_reported_by_name():
    with pytest.raises(TraceError) as info:
        graph_from_source(NOT_IN_CATALOG)
    msg = str(info.value)
    assert "fft" in msg and "function torch.sort has no catalog op" in msg
    # each unsupported call once; neither the supported relu nor what only depends on the
    # unsupported calls (.real, .values, the add, the output) is blamed
    assert msg.count("no catalog op") == 3 and msg.count(";") == 1, msg
    for innocent in ("relu", ".real", "values", "add", "output"):
        assert innocent not in msg.split(": ", 1)[1], (innocent, msg)
    with pytest.raises(CompileError, match="fft"):  # TraceError is a CompileError for the policy's callers
        CompilerPolicy().compile(Task.from_source(NOT_IN_CATALOG))
    # a matmul the catalog has no op for (a vector operand) is named with its ranks, not guessed
    vector = MATMUL_STATE.replace("torch.randn(8, 16)", "torch.randn(16)")
    with pytest.raises(TraceError, match="matmul of ranks 1 and 2"):
        graph_from_source(vector)


IDIOM = '''
import torch
import torch.nn as nn


class Model(nn.Module):
    def forward(self, x):
        BODY


def get_inputs():
    return [torch.randn(2, 3, 4, 5)]


def get_init_inputs():
    return []
'''


@pytest.mark.parametrize("body,ops", [
    ("return x.view(x.shape[0], -1)", ("flatten",)),
    ("b, c, h, w = x.shape\n        return x.reshape(b, c, h * w).softmax(-1)", ("flatten", "softmax")),
    ("return x.permute(0, *range(2, x.dim()), 1)", ("permute",)),
    ("return x / x.size(-1) ** 0.5", ("div_scalar",)),
    ("out = x\n        for i in range(x.shape[1]):\n            out = out * 2\n        return out",
     ("mul_scalar",) * 3),
    ("return torch.max(x, dim=1)[0] + x.min(-1, keepdim=True).values.sum(1)", ("amax", "amin", "sum", "add")),
    ("return torch.linalg.vector_norm(torch.nn.functional.logsigmoid(x), dim=1)", ("logsigmoid", "norm")),
    ("return x.flatten(2).mT.flatten(1).T", ("flatten", "transpose", "flatten", "transpose")),
])
def test_size_idioms_trace_with_concrete_sizes(body, ops):
    """Sizes are numbers while tracing, so the usual KernelBench reshapes, loops over sizes and
    scale factors trace (plain torch.fx failed on every one of these but torch.flatten-like calls)."""
    assert graph_from_source(IDIOM.replace("BODY", body)).ops == ops


def test_sampler_sources_of_every_catalog_op_trace_back_to_the_same_ops(catalog_sources):
    """Tracing the emitted source of each single-op task (the graph ignored) gives the sampler's
    ops, up to exact equivalents."""
    def equivalent(node) -> str:
        if node.op == "merge_last":  # x.reshape(*x.shape[:-2], -1)
            return "flatten"
        if node.op == "pow_scalar" and node.params["c"] in (2, 0.5):
            return {2: "square", 0.5: "sqrt"}[node.params["c"]]
        return node.op

    for op, (task, _) in catalog_sources.items():
        traced = graph_from_source(task.source).ops
        expected = tuple(equivalent(n) for n in task.graph.nodes)
        assert traced == expected, (op, traced, expected)


def test_untraceable_forward_is_reported():
    with pytest.raises(TraceError, match="torch.fx cannot trace Model.forward.*control flow"):
        graph_from_source(PYTHON_LOOP)
    with pytest.raises(TraceError, match=r"getitem.*indexing.*\[0\] or .values"):  # cummax's indices
        graph_from_source(IDIOM.replace("BODY", "return torch.cummax(x, 1)[1].float()"))
    with pytest.raises(TraceError, match="running the reference failed"):
        graph_from_source(LINEAR_RELU.replace("return [32, 16]", "return [32, -16]"))
    with pytest.raises(TraceError, match="running the traced graph failed"):
        graph_from_source(LINEAR_RELU.replace("return [32, 16]", "return [31, 16]"))


# -- determinism ---------------------------------------------------------------------------------
DIGEST = """
import hashlib, sys
from kernelgym.sampler import sample_task
from kernelgym.task import Task
from policies.compiler import CompilerPolicy
src = sys.stdin.read()
tasks = [sample_task(d, s) for d in (1, 2, 3) for s in (0, 1)] + [Task.from_source(src)]
h = hashlib.sha256()
for t in tasks:
    for c in CompilerPolicy().propose(t, n=3):
        h.update(c.encode())
print(h.hexdigest())
"""


def test_same_task_gives_byte_identical_source_across_processes():
    tasks = [sample_task(d, s) for d in (1, 2, 3) for s in (0, 1)] + [Task.from_source(CONV_BN)]
    h = hashlib.sha256()
    for t in tasks:
        a, b = CompilerPolicy().propose(t, n=3), CompilerPolicy().propose(t, n=3)
        assert a == b
        for c in a:
            h.update(c.encode())
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", DIGEST], check=False, input=CONV_BN, capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == h.hexdigest()
