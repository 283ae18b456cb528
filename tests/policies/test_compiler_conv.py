"""Convolution kernels: tiles of output positions stay inside one image when an image has enough of
them (their stores are then contiguous runs, which Triton coalesces; on an H200 a conv1d whose
tiles crossed images lost to cuDNN), small images share tiles, and BLOCK_K keeps the padding of
a short reduction small. Judged under the interpreter (with the evaluator's sm_90 PTX check)."""

from __future__ import annotations

import pytest

from kernelgym.task import Task
from tests._tasks import model_source
from tests.policies._tasks import module_task

compiler = pytest.importorskip("policies.compiler")
from policies.compiler.kernels import CONV_TILE_MIN, dot_block_k  # noqa: E402

# name: (module class, its arguments, input shape, output positions per image)
CASES = {
    "conv1d": ("Conv1d", "3, 5, kernel_size=3", "2, 3, 70", 68),
    "conv2d_pad_stride": ("Conv2d", "2, 4, kernel_size=3, stride=2, padding=1", "3, 2, 17, 17", 81),
    # stride 1 (strided ones go by phases: test_compiler_conv_phases.py)
    "conv_transpose2d": ("ConvTranspose2d", "2, 3, kernel_size=3", "2, 2, 7, 7", 81),
    "conv2d_small_images": ("Conv2d", "2, 4, kernel_size=3", "3, 2, 6, 6", 16),
    "conv2d_one_image": ("Conv2d", "2, 4, kernel_size=3", "1, 2, 10, 10", 64),
}


def case_task(name: str) -> Task:
    cls, args, shape, _ = CASES[name]
    return Task.from_source(module_task("F.relu(self.conv(x)) + 0.5", "x", f"torch.randn({shape})",
                                        f"self.conv = nn.{cls}({args})"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_conv_tiles_and_verdicts(evaluator, name):
    task = case_task(name)
    per_image = CASES[name][3] >= CONV_TILE_MIN
    policy = compiler.CompilerPolicy()
    src = policy.compile(task)
    batched = int(CASES[name][2].split(",")[0]) > 1
    assert ("pid_b = pid_p //" in src) == (per_image and batched), src
    # with tiles of its own, an image's output offset is its base plus a contiguous run of positions
    assert ("rc[None, :] * %d + rp[:, None]" % CASES[name][3] in src) == per_image, src
    small = policy.compile(task, config={"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16})
    verdicts = evaluator.evaluate_batch([(task, src), (task, small)], backend="interpret", seed=4)
    assert [v.status for v in verdicts] == ["ok", "ok"], [(v.status, v.error[:400]) for v in verdicts]


@pytest.mark.parametrize("k, block", [(9, 16), (16, 16), (27, 32), (32, 32), (39, 16), (48, 16), (64, 32),
                                      (80, 16), (200, 32), (211, 32), (1000, 32)])
def test_dot_block_k_pads_least(k, block):
    assert dot_block_k(k) == block


def test_dot_block_k_pads_least_over_several_reductions():
    # a ConvTranspose3d's phase classes (3 input channels, kernel 3, stride 2): 144 padded products
    # a row with 16, 256 with 32; alike reductions choose as one does
    assert dot_block_k(24, 12, 12, 12, 6, 6, 6, 3) == 16
    assert dot_block_k(64, 64) == dot_block_k(64) == 32 and dot_block_k(39, 39) == 16


# -- every argument of nn.Conv* / F.conv*, traced from KernelBench-style sources --------------------


def conv_task(layers: str, body: str, shape: str, cin: int, cout: int) -> str:
    return model_source(body, "x", f"return [torch.randn({shape})]", layers,
                        ", in_channels: int, out_channels: int", f"[{cin}, {cout}]")


# name: (source, the traced ops, params of node 0 that the tracer must carry)
TRACED = {
    "conv3d_asymmetric_grouped_dilated_no_bias": (conv_task(
        "self.conv = nn.Conv3d(in_channels, out_channels, (3, 2, 1), stride=(1, 2, 1), padding=(1, 0, 2), "
        "dilation=(2, 1, 1), groups=2, bias=False)", "return self.conv(x)", "2, 4, 5, 6, 3", 4, 6),
        ("conv3d",), {"kernel": (3, 2, 1), "stride": (1, 2, 1), "padding": (1, 0, 2), "dilation": (2, 1, 1),
                      "groups": 2, "bias": False}),
    "conv_transpose3d_output_padding_grouped": (conv_task(
        "self.conv = nn.ConvTranspose3d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1, "
        "groups=2)", "return torch.relu(self.conv(x))", "1, 4, 3, 2, 4", 4, 2),
        ("conv_transpose3d", "relu"), {"output_padding": (1, 1, 1), "groups": 2, "bias": True}),
    "depthwise_separable": (conv_task(
        "self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)\n"
        "        self.pointwise = nn.Conv2d(in_channels, out_channels, kernel_size=1)",
        "return self.pointwise(self.depthwise(x))", "2, 5, 9, 8", 5, 7),
        ("conv2d", "conv2d"), {"groups": 5, "kernel": (3, 3), "bias": False}),
    "depthwise_multiplier_asymmetric": (conv_task(
        "self.conv = nn.Conv2d(in_channels, out_channels, (3, 1), stride=(2, 1), dilation=(1, 2), "
        "groups=in_channels)", "return self.conv(x) * 2.0", "1, 3, 10, 6", 3, 6),
        ("conv2d", "mul_scalar"), {"groups": 3, "stride": (2, 1), "dilation": (1, 2)}),
    "conv_transpose2d_one_channel_a_group": (conv_task(
        "self.conv = nn.ConvTranspose2d(in_channels, out_channels, (2, 3), stride=(2, 1), padding=(0, 1), "
        "groups=in_channels, bias=False)", "return self.conv(x)", "2, 3, 4, 5", 3, 6),
        ("conv_transpose2d",), {"groups": 3, "output_padding": (0, 0), "bias": False}),
    "functional_conv2d_grouped_dilated": (conv_task(
        "self.weight = nn.Parameter(torch.randn(out_channels, in_channels // 4, 3, 3) * 0.3)",
        "return F.conv2d(x, self.weight, None, 1, (2, 1), (2, 1), 4)", "2, 8, 7, 6", 8, 8),
        ("conv2d",), {"groups": 4, "padding": (2, 1), "dilation": (2, 1), "bias": False}),
    "functional_conv_transpose1d_dilated": (conv_task(
        "self.weight = nn.Parameter(torch.randn(in_channels, out_channels, 3) * 0.3)\n"
        "        self.bias = nn.Parameter(torch.randn(out_channels))",
        "return F.conv_transpose1d(x, self.weight, self.bias, stride=3, padding=1, output_padding=2, dilation=2)",
        "2, 3, 7", 3, 4),
        ("conv_transpose1d",), {"stride": (3,), "output_padding": (2,), "dilation": (2,), "bias": True}),
    # regression: a length-1 output dim made the taps kernel's window masks Python bools
    "conv_transpose2d_one_channel_a_group_width_one": (conv_task(
        "self.conv = nn.ConvTranspose2d(in_channels, out_channels, 5, padding=2, groups=in_channels, bias=False)",
        "return self.conv(x) - 1.0", "3, 4, 6, 1", 4, 4),
        ("conv_transpose2d", "add_scalar"), {"groups": 4, "bias": False}),
    "conv1d_padding_same_and_valid": (conv_task(
        "self.a = nn.Conv1d(in_channels, out_channels, 5, padding='same', dilation=2)\n"
        "        self.b = nn.Conv1d(out_channels, out_channels, 3, padding='valid')",
        "return self.b(self.a(x))", "2, 3, 20", 3, 4),
        ("conv1d", "conv1d"), {"padding": (4,), "dilation": (2,)}),
}


@pytest.mark.parametrize("name", sorted(TRACED))
def test_conv_arguments_trace_to_catalog_params(name):
    from policies.compiler.trace import graph_from_source

    source, ops, params = TRACED[name]
    g = graph_from_source(source)
    assert g.ops == ops
    assert {k: g.nodes[0].params[k] for k in params} == params


def test_traced_convolutions_are_judged_ok(evaluator):
    """Every traced form above compiled (strict) and judged under the interpreter in one batch."""
    names = sorted(TRACED)
    tasks = [Task.from_source(TRACED[n][0]) for n in names]
    policy = compiler.CompilerPolicy()
    verdicts = evaluator.evaluate_batch([(t, policy.compile(t)) for t in tasks], backend="interpret", seed=2)
    bad = {n: (v.status, v.error[:300]) for n, v in zip(names, verdicts) if v.status != "ok"}
    assert bad == {}


@pytest.mark.parametrize("layer, message", [
    ("nn.Conv2d(in_channels, out_channels, 3, padding=1, padding_mode='reflect')", "padding_mode='reflect'"),
    ("nn.Conv2d(in_channels, out_channels, 4, padding='same')", "padding='same' for kernel (4, 4) and dilation (1, 1)"),
])
@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_unsupported_conv_arguments_are_named(layer, message):
    from policies.compiler.trace import TraceError, graph_from_source

    with pytest.raises(TraceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        graph_from_source(conv_task(f"self.conv = {layer}", "return self.conv(x)", "1, 2, 8, 8", 2, 3))


# -- on a GPU, at sizes like KernelBench's (level 1 problems 61, 72, 80, 82, 85, 87) -----------------

GPU_CASES = {
    "depthwise_3x3": ("nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)",
                      "16, 64, 256, 256", 64, 64),
    "depthwise_3x7": ("nn.Conv2d(in_channels, in_channels, (3, 7), groups=in_channels, bias=False)",
                      "32, 128, 128, 256", 128, 128),
    "dilated_asymmetric": ("nn.Conv2d(in_channels, out_channels, (5, 9), padding=(2, 4), dilation=(2, 3), bias=False)",
                           "8, 32, 128, 128", 32, 64),
    "pointwise": ("nn.Conv2d(in_channels, out_channels, 1, bias=False)", "16, 64, 256, 256", 64, 128),
    "conv3d_asymmetric": ("nn.Conv3d(in_channels, out_channels, (3, 5, 7), bias=False)", "8, 3, 16, 64, 64", 3, 64),
    "conv_transpose3d_grouped": ("nn.ConvTranspose3d(in_channels, out_channels, 3, stride=2, padding=1, "
                                 "output_padding=1, groups=4, bias=False)", "8, 32, 12, 24, 24", 32, 32),
}


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(GPU_CASES))
def test_kernelbench_sized_convolutions_on_the_gpu(evaluator, name, capsys):
    layer, shape, cin, cout = GPU_CASES[name]
    task = Task.from_source(conv_task(f"self.conv = {layer}", "return self.conv(x)", shape, cin, cout))
    v = evaluator.evaluate(task, compiler.CompilerPolicy().compile(task), backend="cuda", seed=3)
    assert v.status == "ok", (v.status, v.error[:500])
    with capsys.disabled():
        print(f"\n{name}: speedup {v.speedup:.2f}x over eager")


def test_a_pool_fused_into_a_one_by_one_convolution_of_one_position(evaluator):
    """KernelBench level 3's SqueezeNet at small sizes: a ceil-mode max pool down to 1 x 1 read by a
    1 x 1 convolution. Output coordinate and tap are both zero, so the pool's window started at a
    Python int and its window masks were Python bools beside tensors: the interpreter refused the
    load ("mask has unsupported dtype"). The coordinate is a tensor now."""
    task = Task.from_source(module_task(
        "F.relu(self.conv(F.max_pool2d(x, 3, stride=2, ceil_mode=True)))", "x", "torch.randn(2, 8, 3, 3)",
        "self.conv = nn.Conv2d(8, 6, kernel_size=1)"))
    src = compiler.CompilerPolicy().compile(task)
    assert "def k0_max_pool2d_conv2d_relu(" in src and "rp[:, None] * 0" in src   # the pool read by the conv
    v = evaluator.evaluate(task, src, backend="interpret", seed=1)
    assert v.status == "ok", v.error[:600]
