"""Extern anchors (lenient mode): the convolution / product runs as the vendor call on the
reference's weights, the ops after it as ONE fused Triton kernel (and those before it as one),
and the evaluator's lenient verdict holds. Hand-written KernelBench-style level-2 problems at
tiny sizes, judged under the interpreter."""

from __future__ import annotations

import re

import pytest

from kernelgym.task import Task

compiler = pytest.importorskip("policies.compiler")
from policies.compiler import CompileError, CompilerPolicy  # noqa: E402
from policies.compiler.extern import default_extern, extern_choices, extern_problem  # noqa: E402
from tests.policies._tasks import module_task  # noqa: E402

HEAD = '''
import torch
import torch.nn as nn
import torch.nn.functional as F


class Model(nn.Module):
'''

CONV_SCALE_MIN = HEAD + '''
    def __init__(self, in_channels, out_channels, kernel_size, scale_factor):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size)
        self.scale_factor = scale_factor

    def forward(self, x):
        x = self.conv(x)
        x = x * self.scale_factor
        return torch.min(x, dim=1, keepdim=True)[0]


def get_inputs():
    return [torch.randn(2, 3, 8, 8)]


def get_init_inputs():
    return [3, 4, 3, 2.0]
'''

CONVT_BN_TANH_POOL_GN = HEAD + '''
    def __init__(self):
        super().__init__()
        self.conv_transpose = nn.ConvTranspose2d(3, 4, kernel_size=3, stride=2, padding=1)
        self.batch_norm = nn.BatchNorm2d(4)
        self.tanh = nn.Tanh()
        self.max_pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.group_norm = nn.GroupNorm(num_groups=2, num_channels=4)

    def forward(self, x):
        x = self.conv_transpose(x)
        x = self.batch_norm(x)
        x = self.tanh(x)
        x = self.max_pool(x)
        return self.group_norm(x)


def get_inputs():
    return [torch.randn(2, 3, 5, 5)]


def get_init_inputs():
    return []
'''

GEMM_CHAIN = HEAD + '''
    def __init__(self):
        super().__init__()
        self.gemm = nn.Linear(24, 16)

    def forward(self, x):
        x = self.gemm(x)
        x = x * 0.5
        x = torch.sigmoid(x) + x
        return F.relu(x)


def get_inputs():
    return [torch.randn(8, 24)]


def get_init_inputs():
    return []
'''

PROLOGUE_CONV = HEAD + '''
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)

    def forward(self, x):
        x = torch.relu(x * 2.0 + 1.0)
        return torch.tanh(self.conv(x))


def get_inputs():
    return [torch.randn(2, 3, 6, 6)]


def get_init_inputs():
    return []
'''

LONE_CONV = HEAD + '''
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x)


def get_inputs():
    return [torch.randn(1, 3, 6, 6)]


def get_init_inputs():
    return []
'''


DEPTHWISE_DILATED_NO_BIAS = HEAD + '''
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, groups=4, dilation=2, padding=1, bias=False)

    def forward(self, x):
        return torch.relu(self.conv(x)) * 2.0


def get_inputs():
    return [torch.randn(2, 4, 9, 9)]


def get_init_inputs():
    return []
'''


def _launches(src: str) -> list[str]:
    """Names of the Triton kernels forward launches, in order."""
    return re.findall(r"^\s+(k\d+_\w+)\[grid\]", src, flags=re.M)


def _plain(src: str) -> str:
    """`src` without the channels-last conversions of extern convolutions' operands and results."""
    return re.sub(r"\.contiguous\(memory_format=torch\.channels_last(_3d)?\)", "", src)


def _vendor_calls(src: str) -> list[str]:
    fwd = src[src.index("def forward"):]
    return re.findall(r"(F\.conv\w+|F\.linear|torch\.matmul|torch\.addmm|torch\.bmm)\(", fwd)


@pytest.mark.parametrize("source, vendor", [(CONV_SCALE_MIN, "F.conv2d"),
                                            (CONVT_BN_TANH_POOL_GN, "F.conv_transpose2d"),
                                            (DEPTHWISE_DILATED_NO_BIAS, "F.conv2d")])
def test_conv_extern_one_vendor_call_one_fused_kernel_ok(evaluator, source, vendor):
    task = Task.from_source(source)
    policy = CompilerPolicy("lenient")
    assert policy.extern_nodes(task) == {0}   # lenient default: convolutions extern
    src = policy.compile(task)
    assert _vendor_calls(src) == [vendor], src
    assert len(_launches(src)) == 1, src      # the whole chain after the convolution: one kernel
    strict = CompilerPolicy("strict").compile(task)
    assert _vendor_calls(strict) == [] and strict != src
    verdicts = evaluator.evaluate_batch([(task, src), (task, src)], backend="interpret", mode="lenient", seed=3)
    assert verdicts[0].status == "ok", (verdicts[0].status, verdicts[0].error[:500], verdicts[0].reasons)
    # strict mode judges the vendor call as torch compute: extern anchors are lenient-only
    strict_verdict = evaluator.evaluate(task, src, "interpret", "strict", seed=3)
    assert strict_verdict.status != "ok"


def test_gemm_extern_when_asked_chain_fused_ok(evaluator):
    task = Task.from_source(GEMM_CHAIN)
    policy = CompilerPolicy("lenient")
    assert policy.extern_nodes(task) == frozenset()   # products stay in Triton by default
    assert policy.extern_choices(task) == [[], [0]]
    src = policy.compile(task, extern=[0])
    assert _vendor_calls(src) == ["F.linear"] and "self.gemm.weight, self.gemm.bias" in src, src
    assert len(_launches(src)) == 1, src
    assert _vendor_calls(CompilerPolicy("lenient", extern="all").compile(task)) == ["F.linear"]
    v = evaluator.evaluate(task, src, "interpret", "lenient", seed=5)
    assert v.status == "ok", (v.status, v.error[:500], v.reasons)


def test_prologue_one_kernel_before_the_vendor_call(evaluator):
    task = Task.from_source(PROLOGUE_CONV)
    src = CompilerPolicy("lenient").compile(task)
    fwd = src[src.index("def forward"):]
    launches = _launches(src)
    assert _vendor_calls(src) == ["F.conv2d"] and len(launches) == 2, src
    assert "self.conv.weight, None" in _plain(fwd)   # bias=False: no bias argument
    assert fwd.index(launches[0]) < fwd.index("F.conv2d(") < fwd.index(launches[1])
    v = evaluator.evaluate(task, src, "interpret", "lenient", seed=6)
    assert v.status == "ok", (v.status, v.error[:500], v.reasons)


def test_lone_convolution_stays_in_triton():
    # a vendor call alone would leave every compute op of the reference in torch
    task = Task.from_source(LONE_CONV)
    policy = CompilerPolicy("lenient")
    prog = policy.program(task)
    assert default_extern(prog) == frozenset() and extern_choices(prog) == [frozenset()]
    assert "no Triton kernel" in extern_problem(prog, [0])
    assert policy.extern_choices(task) == []
    with pytest.raises(CompileError, match="no Triton kernel"):
        policy.compile(task, extern=[0])
    assert _vendor_calls(policy.compile(task)) == []


def test_extern_bad_input_and_strict_mode():
    task = Task.from_source(CONV_SCALE_MIN)
    policy = CompilerPolicy("lenient")
    with pytest.raises(CompileError, match="node 1 .mul_scalar. has no vendor call"):
        policy.compile(task, extern=[1])
    with pytest.raises(CompileError, match="not a node index"):
        policy.compile(task, extern=[7])
    with pytest.raises(CompileError, match="node indices"):
        policy.compile(task, extern="conv")
    with pytest.raises(ValueError, match="extern must be"):
        CompilerPolicy("lenient", extern="some")
    with pytest.raises(ValueError, match="need mode='lenient'"):
        CompilerPolicy("strict", extern=[0])
    strict = CompilerPolicy("strict")
    assert strict.extern_nodes(task) == frozenset() and strict.extern_choices(task) == []
    with pytest.raises(CompileError, match="strict mode"):
        strict.compile(task, extern=[0])
    # an explicit partition that fuses the extern anchor with its epilogue is refused by name
    with pytest.raises(compiler.PartitionError, match="runs in torch"):
        policy.compile(task, partition=[[0, 1, 2]])
    assert _vendor_calls(policy.compile(task, extern="none")) == []


MATMUL_WEIGHT_T = HEAD + '''
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(16, 24))

    def forward(self, x):
        x = torch.matmul(x, self.weight.T)
        return torch.sum(x / 2, dim=1, keepdim=True) * 1.5


def get_inputs():
    return [torch.randn(8, 24)]


def get_init_inputs():
    return []
'''


def test_extern_product_reads_the_transposed_weight_as_a_view(evaluator):
    task = Task.from_source(MATMUL_WEIGHT_T)
    policy = CompilerPolicy("lenient")
    assert policy.extern_choices(task) == [[], [0, 1]]   # the product with the transpose it reads
    src = policy.compile(task, extern=[1])
    fwd = src[src.index("def forward"):]
    assert "v0 = self.weight.transpose(0, 1)" in fwd and "torch.matmul(x0, v0)" in fwd, fwd
    assert len(_launches(src)) == 1, src   # no copy kernel for the transpose
    with pytest.raises(CompileError, match="node 0 .transpose. has no vendor call"):
        policy.compile(task, extern=[0])
    v = evaluator.evaluate(task, src, "interpret", "lenient", seed=7)
    assert v.status == "ok", (v.status, v.error[:500], v.reasons)


def test_extern_product_of_a_state_tensor_names_it():
    task = Task.from_source(MATMUL_WEIGHT_T.replace("self.weight.T", "self.weight")
                            .replace("torch.randn(16, 24)", "torch.randn(24, 16)"))
    src = CompilerPolicy("lenient", extern="all").compile(task)
    assert "torch.matmul(x0, self.weight)" in src and len(_launches(src)) == 1, src


@pytest.mark.gpu
@pytest.mark.parametrize("source", [CONV_SCALE_MIN, CONVT_BN_TANH_POOL_GN])
def test_extern_conv_chain_ok_and_timed_on_the_gpu(evaluator, source):
    """At a bench-like size on a GPU: the cuDNN call plus one fused Triton kernel is ok in lenient
    mode and timed against eager and torch.compile."""
    bench = source.replace("torch.randn(2, 3, 8, 8)", "torch.randn(64, 3, 64, 64)") \
                  .replace("[3, 4, 3, 2.0]", "[3, 64, 3, 2.0]") \
                  .replace("torch.randn(2, 3, 5, 5)", "torch.randn(64, 3, 64, 64)")
    task = Task.from_source(bench)
    src = CompilerPolicy("lenient").compile(task)
    assert len(_vendor_calls(src)) == 1 and len(_launches(src)) == 1
    v = evaluator.evaluate(task, src, backend="cuda", mode="lenient", seed=3)
    assert v.status == "ok", (v.status, v.error[:500], v.reasons)
    assert v.speedup is not None and v.speedup_vs_compile is not None


def test_propose_offers_the_other_extern_set_after_the_partitions():
    task = Task.from_source(CONV_SCALE_MIN)
    policy = CompilerPolicy("lenient")
    n_parts = len(policy.candidate_partitions(task))   # around the policy's own extern anchors
    got = policy.propose(task, n=n_parts + 2)
    vendor = [bool(_vendor_calls(s)) for s in got]
    assert vendor[:n_parts] == [True] * n_parts and vendor[n_parts] is False, vendor
    assert len(set(got)) == len(got)


def _conv_task(forward: str, init: str, shape: str = "2, 3, 9, 9") -> Task:
    return Task.from_source(module_task(forward, "x", f"torch.randn({shape})", init))


# An extern convolution read by Triton kernels of every template: a pointwise chain, a padded
# max pool (masked taps -inf), a norm kept in registers, a Triton convolution's padded operand
# (masked lanes must stay 0), a transposed one, and a 1-D one read twice.
LATE_BIAS = {
    "pointwise": ("torch.relu(self.conv(x)) * 2.0", "self.conv = nn.Conv2d(3, 4, 3)"),
    "padded_max_pool": ("F.max_pool2d(self.conv(x), 3, stride=2, padding=1)", "self.conv = nn.Conv2d(3, 4, 3)"),
    "group_norm": ("self.gn(self.conv(x))", "self.conv = nn.Conv2d(3, 4, 3); self.gn = nn.GroupNorm(2, 4)"),
    "triton_conv_operand": ("self.c2(torch.relu(self.conv(x)))",
                            "self.conv = nn.Conv2d(3, 4, 3); self.c2 = nn.Conv2d(4, 5, 3, padding=1)"),
    "conv_transpose": ("torch.tanh(self.conv(x) - 0.5)", "self.conv = nn.ConvTranspose2d(3, 4, 3, stride=2)"),
    "read_twice": ("torch.sigmoid(y := self.conv(x)) * y", "self.conv = nn.Conv2d(3, 4, 3)"),
}


def test_an_extern_convolutions_bias_is_added_by_the_kernels_reading_it(evaluator):
    """cuDNN's call leaves the bias out and the fused kernel after it adds it (torch adds it in a
    pass of its own over the output); correct for every template that reads the output."""
    pairs = []
    for name, (forward, init) in sorted(LATE_BIAS.items()):
        task = _conv_task(forward, init)
        src = CompilerPolicy("lenient").compile(task, extern=[0])
        fwd = src[src.index("def forward"):]
        assert "self.conv.weight, None" in _plain(fwd) and "its bias is added by the kernels reading it" in fwd, (name, src)
        assert "v0_b = v0 + n0_b" in src, (name, src)
        pairs.append((task, src))
    verdicts = evaluator.evaluate_batch(pairs, backend="interpret", mode="lenient", seed=8)
    bad = [(name, v.status, v.error[:300]) for name, v in zip(sorted(LATE_BIAS), verdicts) if v.status != "ok"]
    assert not bad, bad


def test_a_convolution_output_or_one_read_by_a_vendor_call_keeps_its_bias():
    returned = _conv_task("(y := self.conv(x), torch.relu(y))", "self.conv = nn.Conv2d(3, 4, 3)")
    src = CompilerPolicy("lenient").compile(returned, extern=[0])
    assert "self.conv.weight, self.conv.bias" in _plain(src) and "n0_b" not in src
    chained = _conv_task("torch.relu(self.c2(self.conv(x)))",
                         "self.conv = nn.Conv2d(3, 4, 3); self.c2 = nn.Conv2d(4, 5, 3)")
    src = CompilerPolicy("lenient").compile(chained)
    assert "self.conv.weight, self.conv.bias" in _plain(src)     # read by the second vendor call
    assert "self.c2.weight, None" in _plain(src)                  # read by the relu kernel only
