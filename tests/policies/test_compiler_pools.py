"""Pools and normalisations as KernelBench writes them: every window argument (padding, dilation,
ceil_mode, count_include_pad, divisor_override, rectangular windows, per-dim strides), 1-D to 3-D
pools, adaptive average pools to any output size, eval-mode batch norm, instance norm with and
without affine and group norm on 5-D inputs. Each hand-written task is traced to catalog ops,
compiled in strict mode and judged under the Triton interpreter against PyTorch."""

from __future__ import annotations

import pytest

from kernelgym.ops import get_op
from kernelgym.task import Task
from tests.policies._tasks import module_task

compiler = pytest.importorskip("policies.compiler")
from policies.compiler import CompilerPolicy, TraceError, graph_from_source  # noqa: E402


def source(layer: str, forward: str, shape: str) -> str:
    return module_task(forward, "x", f"torch.randn({shape})", f"self.layer = {layer}")


# name: (module in __init__ (or nn.Identity()), forward expression, input shape, traced ops, params
# the pool / norm node must carry)
CASES = {
    # KernelBench level 1 #41: padding and dilation
    "max_pool1d_pad_dilation": ("nn.MaxPool1d(kernel_size=4, stride=1, padding=2, dilation=3)", "self.layer(x)",
                                "2, 3, 19", ("max_pool1d",), {"padding": 2, "dilation": 3}),
    "max_pool2d_rect_ceil": ("nn.MaxPool2d((2, 3), stride=(1, 2), padding=(1, 0), ceil_mode=True)",
                             "self.layer(x)", "2, 3, 6, 9", ("max_pool2d",), {"kernel": (2, 3), "stride": (1, 2)}),
    # level 1 #43 at a tiny size: kernel 3, stride 2, padding 1, dilation 3
    "max_pool3d": ("nn.MaxPool3d(kernel_size=3, stride=2, padding=1, dilation=3)", "self.layer(x)",
                   "2, 2, 9, 8, 10", ("max_pool3d",), {"dilation": 3}),
    "max_pool3d_ceil": ("nn.MaxPool3d(2, ceil_mode=True)", "self.layer(x)", "1, 2, 5, 4, 3", ("max_pool3d",),
                        {"ceil_mode": True}),
    "avg_pool1d_pad": ("nn.AvgPool1d(kernel_size=4, stride=1, padding=2)", "self.layer(x)", "2, 3, 17",
                       ("avg_pool1d",), {"count_include_pad": True}),
    "avg_pool2d_ceil_exclude_pad": ("nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)",
                                    "self.layer(x)", "2, 2, 8, 7", ("avg_pool2d",), {"count_include_pad": False}),
    "avg_pool2d_ceil_include_pad": ("nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True)", "self.layer(x)",
                                    "2, 2, 8, 7", ("avg_pool2d",), {"ceil_mode": True}),
    "avg_pool2d_divisor": ("nn.Identity()", "F.avg_pool2d(x, 2, divisor_override=3)", "1, 2, 6, 6",
                           ("avg_pool2d",), {"divisor_override": 3}),
    # level 1 #46 at a tiny size
    "avg_pool3d": ("nn.AvgPool3d(kernel_size=3, stride=2, padding=1)", "self.layer(x)", "2, 2, 6, 7, 8",
                   ("avg_pool3d",), {"kernel": 3}),
    # a big window: a runtime loop instead of an unrolled one
    "avg_pool2d_big_window": ("nn.AvgPool2d(11)", "self.layer(x)", "1, 2, 23, 12", ("avg_pool2d",), {"kernel": 11}),
    "adaptive_1d_global": ("nn.AdaptiveAvgPool1d(1)", "self.layer(x)", "2, 5, 9", ("adaptive_avg_pool1d",), {}),
    "adaptive_3d_global": ("nn.AdaptiveAvgPool3d((1, 1, 1))", "self.layer(x)", "2, 3, 4, 5, 3",
                           ("adaptive_avg_pool3d",), {}),
    "adaptive_2d_non_dividing": ("nn.Identity()", "F.adaptive_avg_pool2d(x, (2, 3))", "2, 3, 5, 7",
                                 ("adaptive_avg_pool2d_windows",), {"size": (2, 3)}),
    "adaptive_3d_none": ("nn.AdaptiveAvgPool3d((2, None, 3))", "self.layer(x)", "1, 2, 5, 4, 8",
                         ("adaptive_avg_pool3d_windows",), {"size": (2, 4, 3)}),
    "adaptive_1d_upsample": ("nn.AdaptiveAvgPool1d(7)", "self.layer(x)", "2, 3, 5",
                             ("adaptive_avg_pool1d_windows",), {"size": 7}),
    "batch_norm3d": ("nn.BatchNorm3d(3, eps=1e-3)", "self.layer(x)", "2, 3, 4, 3, 5", ("batch_norm",), {"eps": 1e-3}),
    "instance_norm3d_affine": ("nn.InstanceNorm3d(3, affine=True)", "self.layer(x)", "2, 3, 4, 3, 5",
                               ("instance_norm",), {"affine": True}),
    "instance_norm2d": ("nn.InstanceNorm2d(4)", "self.layer(x)", "2, 4, 5, 6", ("instance_norm",), {"affine": False}),
    "instance_norm_fn_affine": ("nn.Identity()", "F.instance_norm(x, weight=self.w, bias=self.b)",
                                "2, 4, 9", ("instance_norm",), {"affine": True}),
    "group_norm5d": ("nn.GroupNorm(2, 4)", "self.layer(x)", "2, 4, 3, 4, 5", ("group_norm",), {"groups": 2}),
    # level 2 patterns: pools fused with what comes before and after
    "relu_max_pool_scale": ("nn.MaxPool2d(kernel_size=3, stride=2, padding=1)", "self.layer(torch.relu(x)) * 2.0",
                            "2, 3, 9, 9", ("relu", "max_pool2d", "mul_scalar"), {}),
    "avg_pool3d_sum": ("nn.AvgPool3d(kernel_size=2)", "torch.sum(self.layer(x), dim=1)", "2, 3, 4, 4, 6",
                       ("avg_pool3d", "sum"), {}),
    "bn_max_pool_global": ("nn.BatchNorm2d(3)",
                           "F.adaptive_avg_pool2d(F.max_pool2d(self.layer(x), 2), (1, 1))",
                           "2, 3, 8, 10", ("batch_norm", "max_pool2d", "adaptive_avg_pool2d"), {}),
}


def case_source(name: str) -> str:
    layer, forward, shape, _, _ = CASES[name]
    src = source(layer, forward, shape)
    if "self.w" in forward:  # an affine passed to F.instance_norm explicitly
        src = src.replace("        self.layer = nn.Identity()\n",
                          "        self.w = nn.Parameter(torch.randn(4))\n        self.b = nn.Parameter(torch.randn(4))\n")
    return src


@pytest.mark.parametrize("name", sorted(CASES))
def test_pool_and_norm_forms_trace_to_catalog_ops(name):
    _, _, _, ops, params = CASES[name]
    g = graph_from_source(case_source(name))
    assert g.ops == ops, (name, g.ops)
    node = next(n for n in g.nodes if get_op(n.op).category in ("pool", "norm"))
    for key, value in params.items():
        assert node.params[key] == value, (name, key, node.params)


def test_pool_and_norm_tasks_are_ok_in_strict_mode(evaluator):
    names = sorted(CASES)
    policy = CompilerPolicy()
    tasks = [Task.from_source(case_source(n)) for n in names]
    pairs = [(t, policy.compile(t)) for t in tasks]
    verdicts = evaluator.evaluate_batch(pairs, "interpret", "strict", "local", seed=3)
    bad = {n: f"{v.status} {v.reasons[:2]} {v.error[:300]}" for n, v in zip(names, verdicts) if v.status != "ok"}
    assert bad == {}


def test_a_pool_fuses_into_its_neighbours():
    """relu -> max_pool -> * 2 is one pointwise kernel (the relu computed per window element);
    avg_pool3d -> sum is one row kernel with the pool as its prologue."""
    policy = CompilerPolicy()
    for name in ("relu_max_pool_scale", "avg_pool3d_sum"):
        src = policy.compile(Task.from_source(case_source(name)))
        assert src.count("@triton.jit\ndef k") == 1, name


def test_small_windows_unroll_and_big_ones_loop():
    policy = CompilerPolicy()
    small = policy.compile(Task.from_source(case_source("max_pool3d")))
    big = policy.compile(Task.from_source(case_source("avg_pool2d_big_window")))
    assert "tl.static_range(3)" in small and "in range(11)" in big


@pytest.mark.parametrize("layer,message", [
    ("nn.MaxPool2d(2, return_indices=True)", "return_indices"),
    ("nn.InstanceNorm2d(3, track_running_stats=True)", "running statistics"),
])
def test_unsupported_pool_and_norm_forms_are_named(layer, message):
    forward = "self.layer(x)[0]" if "indices" in layer else "self.layer(x)"
    with pytest.raises(TraceError, match=message):
        graph_from_source(source(layer, forward, "2, 3, 4, 4"))


# KernelBench level 2 #72 (batch norm, then two 2 x 2 x 2 average pools) and #65 (a 4 x 4 average
# pool in a row kernel's chunk), at tiny sizes
POOL_OF_POOL = module_task("self.pool2(self.pool1(self.bn(x)))", "x", "torch.randn(2, 3, 9, 8, 8)",
                           "self.bn = nn.BatchNorm3d(3)\n        self.pool1 = nn.AvgPool3d(2)\n"
                           "        self.pool2 = nn.AvgPool3d(2)")
POOL_IN_A_ROW = module_task("torch.sum(torch.sigmoid(self.pool(x)), dim=[1, 2, 3])", "x", "torch.randn(2, 3, 16, 12)",
                            "self.pool = nn.AvgPool2d(4)")


def test_windows_unroll_within_a_tap_budget(evaluator):
    """An unrolled window's loads are issued together, a register each per lane a thread holds: a
    pool of a pool (8 x 8 taps) and a 16-tap window in a row chunk (4096 lanes) spilled registers
    on sm_90, so the inner window loops (`pools.UNROLL_TAPS`); the batch norm multiplies by its
    inverse deviation (one division per channel, not per tap)."""
    policy = CompilerPolicy()
    nested = policy.compile(Task.from_source(POOL_OF_POOL))
    assert "in tl.static_range(2)" in nested and "in range(2)" in nested
    assert "_rstd = 1.0 / tl.sqrt(" in nested and ") / tl.sqrt(" not in nested
    row = policy.compile(Task.from_source(POOL_IN_A_ROW))
    assert "in range(4)" in row and "static_range" not in row
    pairs = [(Task.from_source(s), src) for s, src in ((POOL_OF_POOL, nested), (POOL_IN_A_ROW, row))]
    verdicts = evaluator.evaluate_batch(pairs, "interpret", "strict", "local", seed=5)
    assert [(v.status, v.error[:300]) for v in verdicts] == [("ok", ""), ("ok", "")]
