"""Channels-last extern convolutions (lenient mode, `policies.compiler.layout`): a convolution
read only by pointwise kernels runs on channels-last operands, those kernels walk and write their
outputs channels-last, and the results match the reference under the interpreter; anything a
channels-last tensor would be read across the grain by keeps the convolution NCHW."""

from __future__ import annotations

import pytest

from kernelgym.task import Task

compiler = pytest.importorskip("policies.compiler")
from policies.compiler import CompilerPolicy  # noqa: E402
from policies.compiler.coords import strides  # noqa: E402
from policies.compiler.layout import channels_last  # noqa: E402
from tests.policies._tasks import module_task  # noqa: E402


def _task(forward: str, init: str, inputs: str) -> Task:
    return Task.from_source(module_task(forward, "x", inputs, init))


CL = "memory_format=torch.channels_last"
# (forward, init, input): each runs its convolution channels-last
CHANNELS_LAST = {
    "relu_bias": ("torch.relu(self.conv(x)) + self.b", "self.conv = nn.Conv2d(3, 5, 3); self.b = nn.Parameter(torch.randn(5, 1, 1))",
                  "torch.randn(2, 3, 9, 7)"),
    "padded_pool_chain": ("F.max_pool2d(torch.tanh(self.conv(x)), 3, stride=2, padding=1) * 2.0",
                          "self.conv = nn.Conv2d(3, 4, 3)", "torch.randn(2, 3, 10, 9)"),
    "two_outputs": ("(y := torch.relu(self.conv(x)), F.avg_pool2d(y, 2) * 2.0)",
                    "self.conv = nn.Conv2d(3, 4, 3)", "torch.randn(2, 3, 8, 8)"),
    "transposed_3d": ("torch.clamp(self.conv(x), -0.5, 0.5) / 2.0", "self.conv = nn.ConvTranspose3d(3, 4, 3, stride=2)",
                      "torch.randn(2, 3, 4, 5, 3)"),
    "grouped_strided": ("F.gelu(self.conv(x))", "self.conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)",
                        "torch.randn(2, 4, 11, 9)"),
    # row kernels over the channels alone: a row is C consecutive elements channels-last
    "channel_softmax": ("torch.sigmoid(torch.softmax(torch.relu(self.conv(x)), dim=1) * 2.0)",
                        "self.conv = nn.Conv2d(3, 20, 3)", "torch.randn(2, 3, 8, 8)"),
    "channel_min": ("torch.tanh(torch.min(self.conv(x), dim=1, keepdim=True)[0])", "self.conv = nn.Conv2d(3, 6, 3)",
                    "torch.randn(2, 3, 8, 8)"),
    "channel_logsumexp_3d": ("torch.relu(torch.logsumexp(self.conv(x), dim=1))", "self.conv = nn.Conv3d(3, 5, 2)",
                             "torch.randn(2, 3, 4, 5, 4)"),
}
# (forward, init, input): each keeps its convolution NCHW, and why
ROW_MAJOR = {
    "row_kernel_reader": ("self.gn(self.conv(x))", "self.conv = nn.Conv2d(3, 4, 3); self.gn = nn.GroupNorm(2, 4)",
                          "torch.randn(2, 3, 8, 8)"),
    "row_major_operand": ("self.conv(x) + x[:, :, 1:-1, 1:-1]", "self.conv = nn.Conv2d(4, 4, 3)",
                          "torch.randn(2, 4, 8, 8)"),
    "pixel_reduction": ("torch.mean(torch.relu(self.conv(x)), dim=(2, 3))", "self.conv = nn.Conv2d(3, 4, 3)",
                        "torch.randn(2, 3, 8, 8)"),
    "conv1d": ("torch.relu(self.conv(x))", "self.conv = nn.Conv1d(3, 4, 3)", "torch.randn(2, 3, 9)"),
}


def test_channels_last_strides():
    assert strides((2, 3, 4, 5), "channels_last") == [60, 1, 15, 3]
    assert strides((2, 3, 4, 5, 6), "channels_last") == [360, 1, 90, 18, 3]
    assert strides((2, 3, 4, 5)) == [60, 20, 5, 1]


def test_a_convolution_read_by_pointwise_kernels_runs_channels_last(evaluator):
    pairs = []
    for name, (forward, init, inputs) in sorted(CHANNELS_LAST.items()):
        task = _task(forward, init, inputs)
        src = CompilerPolicy("lenient").compile(task)
        fwd = src[src.index("def forward"):]
        fmt = CL + ("_3d" if "3d" in name else "")
        assert f"x0.contiguous({fmt})" in fwd and "; channels-last" in fwd, (name, src)
        if "logsumexp" not in name:   # (its output has one dim less: row-major)
            assert f"{fmt})\n" in fwd, (name, src)    # the kernel's output is allocated channels-last
        pairs.append((task, src))
    verdicts = evaluator.evaluate_batch(pairs, backend="interpret", mode="lenient", seed=11)
    bad = [(name, v.status, v.error[:300]) for name, v in zip(sorted(CHANNELS_LAST), verdicts) if v.status != "ok"]
    assert not bad, bad


def test_a_convolution_with_any_other_reader_stays_row_major(evaluator):
    pairs = []
    for name, (forward, init, inputs) in sorted(ROW_MAJOR.items()):
        task = _task(forward, init, inputs)
        src = CompilerPolicy("lenient").compile(task)
        assert "channels_last" not in src and "F.conv" in src, (name, src)
        pairs.append((task, src))
    verdicts = evaluator.evaluate_batch(pairs, backend="interpret", mode="lenient", seed=12)
    assert [v.status for v in verdicts] == ["ok"] * len(pairs), [(v.status, v.error[:300]) for v in verdicts]


def test_channels_last_needs_an_extern_convolution():
    task = _task(*CHANNELS_LAST["relu_bias"])
    policy = CompilerPolicy("lenient")
    prog = policy.program(task)
    groups, stored = policy._groups(prog, None, frozenset({0}))
    assert channels_last(prog, groups, stored, {0}) == {0, *stored[-1]}
    assert channels_last(prog, groups, stored, set()) == frozenset()
    assert "channels_last" not in CompilerPolicy("strict").compile(task)
    assert "channels_last" not in policy.compile(task, extern=[])
