"""Strided transposed convolutions by phases (`policies.compiler.conv_phases`): each class of output
positions ``o % stride`` is a dense implicit GEMM over its own taps, with no parity masks. The tap
tables are checked against the definition; the kernels are judged under the interpreter (with the
evaluator's sm_90 PTX check) on small tasks covering 1-3 dims, strides 2-4, padding, output
padding, even kernels, groups, dilation (phases without taps too), bias on/off and fusions."""

from __future__ import annotations

import itertools
import re

import pytest

from kernelgym.task import Task
from tests.policies._tasks import module_task

compiler = pytest.importorskip("policies.compiler")
from policies.compiler.conv_phases import phase_taps  # noqa: E402


def test_phase_taps_match_the_definition():
    """Output o reads input i through tap r exactly when i * stride + r * dilation - padding == o."""
    for kernel, stride, padding, dilation in itertools.product((1, 2, 3, 4, 5), (1, 2, 3, 4), (0, 1, 2, 3), (1, 2, 3)):
        tables = phase_taps(kernel, stride, padding, dilation)
        assert len(tables) == stride
        for o in range(-3, 3 * stride + 3):
            q, ph = divmod(o, stride)
            t = tables[ph]
            got = {(q + t.shift - j * t.back, t.first + j * t.step) for j in range(t.count)}
            want = {((o + padding - r * dilation) // stride, r) for r in range(kernel)
                    if (o + padding - r * dilation) % stride == 0}
            assert got == want, (kernel, stride, padding, dilation, o, t)


def test_phase_taps_name_bad_arguments():
    with pytest.raises(ValueError, match="stride 0"):
        phase_taps(3, 0, 1, 1)


def _task(layer: str, expr: str = "self.conv(x)", shape: str = "2, 4, 5, 5", args: str = "x",
          inputs: str | None = None) -> Task:
    return Task.from_source(module_task(expr, args, inputs or f"torch.randn({shape})", f"self.conv = nn.{layer}"))


# name: the task (layer, forward expression, input shape or inputs)
CASES = {
    "1d_stride3_dilated_output_padding": _task(
        "ConvTranspose1d(4, 3, 3, stride=3, padding=1, output_padding=2, dilation=2)", shape="2, 4, 7"),
    "1d_one_input_channel_even_kernel": _task("ConvTranspose1d(1, 3, 4, stride=2)", shape="2, 1, 9"),
    "2d_even_kernel_grouped_epilogue": _task(
        "ConvTranspose2d(4, 6, 4, stride=2, padding=1, groups=2)", "torch.tanh(self.conv(x) - 0.5)", "2, 4, 5, 6"),
    "2d_mixed_strides_no_bias": _task(
        "ConvTranspose2d(3, 5, 3, stride=(2, 3), padding=(0, 1), output_padding=(1, 0), bias=False)",
        shape="1, 3, 9, 8"),
    # gcd(dilation, stride) = 2: the odd phases get no tap (bias and epilogue only)
    "2d_dilation_sharing_a_factor_with_stride": _task(
        "ConvTranspose2d(3, 4, 3, stride=4, dilation=2, padding=2)", "torch.sigmoid(self.conv(x))", "2, 3, 4, 4"),
    "3d_output_padding_residual": _task(
        "ConvTranspose3d(4, 4, 3, stride=2, padding=1, output_padding=1)", "torch.relu(self.conv(x)) + y",
        args="x, y", inputs="torch.randn(1, 4, 3, 4, 3), torch.randn(1, 4, 6, 8, 6)"),
    "3d_even_kernel_prologue": _task("ConvTranspose3d(4, 2, 4, stride=2, padding=1)", "self.conv(x * 2.0)",
                                     "2, 4, 2, 3, 2"),
    # regression: a sub-grid of one position made the output's phase mask a scalar tensor
    "1d_one_position_sub_grid": _task("ConvTranspose1d(2, 3, 3, stride=4)", "torch.tanh(self.conv(x))", "1, 2, 1"),
    # a pool fused before the convolution (KernelBench level 2 problem 38's form)
    "2d_pool_prologue": _task("ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1)",
                              "torch.clamp(self.conv(F.avg_pool2d(x, 2)), -0.5, 0.5)", "2, 3, 6, 8"),
    # a phase's sub-grid of 8 x 8 >= CONV_TILE_MIN: tiles inside one image (pid_b)
    "2d_tiles_per_image": _task("ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1)",
                                "self.conv(x) * 0.5", "2, 2, 8, 8"),
}


@pytest.fixture(scope="module")
def sources():
    policy = compiler.CompilerPolicy()
    return {name: policy.compile(task) for name, task in CASES.items()}


def test_phase_kernels_have_no_parity_masks(sources):
    for name, src in sources.items():
        assert "ph = pid_p % " in src, name
        masks = [line for line in src.splitlines() if "a_mask = " in line]
        assert masks and not any("%" in line for line in masks), (name, masks)
    assert "pid_b = pid_t //" in sources["2d_tiles_per_image"]


def test_phase_kernels_reduce_over_their_own_taps_only(sources):
    """3-D, kernel 3, stride 2, padding 1: the eight classes reduce over 4 x (1 .. 8) products, not
    the gather form's 4 x 27."""
    loops = sorted(int(k) for k in re.findall(r"for k0 in range\(0, (\d+), BLOCK_K\)",
                                              sources["3d_output_padding_residual"]))
    assert loops == [4, 8, 8, 8, 16, 16, 16, 32]


def test_phase_kernels_are_judged_ok(evaluator, sources):
    names = sorted(CASES)
    jobs = [(CASES[n], sources[n]) for n in names]
    small = compiler.CompilerPolicy().compile(CASES["2d_tiles_per_image"],
                                              config={"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16})
    verdicts = evaluator.evaluate_batch([*jobs, (CASES["2d_tiles_per_image"], small)], backend="interpret", seed=5)
    bad = {n: (v.status, v.error[:400]) for n, v in zip([*names, "small_blocks"], verdicts) if v.status != "ok"}
    assert bad == {}


@pytest.mark.parametrize("layer", [
    "ConvTranspose2d(4, 3, 3, stride=1, padding=1)",             # stride 1: no phases to split
    "ConvTranspose2d(4, 8, 3, stride=2, groups=4, bias=False)",  # one input channel a group: taps kernel
])
def test_other_transposed_convolutions_keep_their_kernels(layer):
    src = compiler.CompilerPolicy().compile(_task(layer))
    assert "ph = pid_p" not in src


# -- on a GPU, at KernelBench level 2 sizes (problems 26 and 5: 3-D kernel 3 and 2-D kernel 4, stride 2) ----

GPU_CASES = {
    "3d_kernel3_add_hardswish": (
        "ConvTranspose3d(32, 64, 3, stride=2, padding=1, output_padding=1)", "(lambda v: v * F.hardswish(v))"
        "(self.conv(x) + y)", "x, y", "torch.randn(128, 32, 16, 16, 16), torch.randn(128, 64, 32, 32, 32)"),
    "2d_kernel4_subtract_tanh": (
        "ConvTranspose2d(64, 64, 4, stride=2, padding=1, output_padding=1)", "torch.tanh(self.conv(x) - 0.5)", "x",
        "torch.rand(32, 64, 256, 256)"),
}


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(GPU_CASES))
def test_kernelbench_sized_phase_kernels_on_the_gpu(evaluator, name, capsys):
    layer, expr, args, inputs = GPU_CASES[name]
    task = _task(layer, expr, args=args, inputs=inputs)
    src = compiler.CompilerPolicy().compile(task)
    assert "ph = pid_p % " in src
    v = evaluator.evaluate(task, src, backend="cuda", seed=3)
    assert v.status == "ok", (v.status, v.error[:500])
    with capsys.disabled():
        print(f"\n{name}: speedup {v.speedup:.2f}x over eager")
