"""Shared memory of tl.dot kernels: the estimate (`policies.smem`), the compiler fitting launches
under the budget, the search's launch moves staying under it, and Triton's own figure for sm_90.

KernelBench level 2 problem 38 (an average pool fused into a transposed 3-D convolution) once
compiled to a launch needing 327680 bytes, over the 232448 an H100 block may use. Its window of 8
taps is now a loop inside the k loop (`pools.UNROLL_TAPS`: unrolled, it also spilled registers),
which Triton does not pipeline; `POOL_CONV_T` below keeps the kind of kernel that still grows
with the stages: a 2 x 2 pool (4 taps, unrolled) fused into a transposed 2-D convolution's operand."""

from __future__ import annotations

import ast
import textwrap

import pytest

from kernelgym.task import Task
from policies.launch import find_knobs, variants
from policies.smem import (
    SMEM_BUDGET,
    estimate_function,
    fit_launch,
    launch_estimates,
    over_budget,
)
from tests._tasks import model_source

compiler = pytest.importorskip("policies.compiler")

HW_LIMIT = 232448   # an H100 / H200 block's shared memory

POOL_CONV_T = model_source(
    """x = self.avg_pool(x)
        x = self.conv_transpose(x)
        x = torch.clamp(x, 0.0, 1.0)
        b, c, h, w = x.shape
        x = torch.softmax(x.view(b, c, -1), dim=2).view(b, c, h, w)
        return x * self.scale""",
    "x", "return [torch.rand(1, 16, 32, 32)]",
    # stride 1: the gather form, whose k loop reads all 4 pool taps a step (a strided transposed
    # convolution goes by phases, `conv_phases`, with far smaller k steps)
    """self.avg_pool = nn.AvgPool2d(2)
        self.conv_transpose = nn.ConvTranspose2d(16, 64, 3, stride=1, padding=1)
        self.scale = nn.Parameter(torch.ones(1, 64, 1, 1))""")
# Per k step: 4 pool-tap tiles of 128 x 32 fp32 and a 32 x 64 weight tile, pipelined over
# num_stages - 1 buffers; the TF32 operands (the pooled one computed) staged once (a convolution's
# products are plain TF32).
POOL_CONV_T_SMEM = {s: (s - 1) * (4 * 128 * 32 * 4 + 32 * 64 * 4) + (128 * 32 * 4 + 32 * 64 * 4) for s in (3, 4)}


def conv_launch(src: str):
    (est,) = [e for e in launch_estimates(src) if "conv_transpose2d" in e.kernel]
    return est


FOUR_STAGES = {"num_stages": 4}


def test_fused_pool_conv_transpose_is_fitted_under_the_budget():
    task = Task.from_source(POOL_CONV_T)
    # the default launch (3 stages) fits
    assert conv_launch(compiler.CompilerPolicy().compile(task)).estimate.bytes == POOL_CONV_T_SMEM[3] <= SMEM_BUDGET
    raw = compiler.CompilerPolicy(smem_budget=None).compile(task, config=FOUR_STAGES)
    before = conv_launch(raw)
    assert (before.num_stages, before.constexprs) == (4, {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32})
    assert before.estimate.bytes == POOL_CONV_T_SMEM[4] > SMEM_BUDGET
    src = compiler.CompilerPolicy().compile(task, config=FOUR_STAGES)
    after = conv_launch(src)
    # one stage fewer fits: the tiles stay
    assert (after.num_stages, after.constexprs) == (3, before.constexprs)
    assert after.estimate.bytes <= SMEM_BUDGET and not over_budget(src)
    assert "launch fitted to shared memory (num_stages 4 -> 3)" in src
    # a config asking for more stages and wider tiles is fitted too
    big = compiler.CompilerPolicy().compile(task, config={"num_stages": 5, "BLOCK_N": 128})
    assert not over_budget(big) and conv_launch(big).constexprs["BLOCK_N"] == 128


def test_kernels_that_fit_keep_their_config():
    """A plain convolution's launch is unchanged by the check (its estimate is far under the budget)."""
    task = Task.from_source(model_source("return self.conv(x)", "x", "return [torch.randn(2, 8, 12, 12)]",
                                         "self.conv = nn.Conv2d(8, 64, 3)"))
    assert compiler.CompilerPolicy().compile(task) == compiler.CompilerPolicy(smem_budget=None).compile(task)


def test_fitted_candidate_is_judged_ok(evaluator):
    task = Task.from_source(POOL_CONV_T)
    src = compiler.CompilerPolicy().compile(task)
    (v,) = evaluator.evaluate_batch([(task, src)], backend="interpret", seed=3)
    assert v.status == "ok", (v.status, v.error[:400])


def test_triton_sm90_shared_memory_of_the_fitted_kernel():
    """Compiled for sm_90 on this CPU (Triton bundles ptxas): the launch the compiler used to emit
    needs more than an H100 block has; the fitted one fits the budget, and the estimate bounds it."""
    pytest.importorskip("triton.backends.nvidia")
    from benchmarks.dot_smem import compile_shared, record_launches

    task = Task.from_source(POOL_CONV_T)
    figures = {}
    for budget in (None, SMEM_BUDGET):
        src = compiler.CompilerPolicy(smem_budget=budget).compile(task, config=FOUR_STAGES)
        (launch,) = [la for la in record_launches(task, src) if "conv_transpose2d" in la["kernel"]]
        try:
            figures[budget] = compile_shared(launch)
        except Exception as exc:  # noqa: BLE001 - no sm_90 toolchain here (e.g. ptxas missing)
            pytest.skip(f"sm_90 compile unavailable: {type(exc).__name__}: {exc}")
        assert figures[budget] <= conv_launch(src).estimate.bytes
    assert figures[None] > HW_LIMIT
    assert figures[SMEM_BUDGET] <= SMEM_BUDGET


def test_search_launch_moves_stay_under_the_budget():
    src = compiler.CompilerPolicy().compile(Task.from_source(POOL_CONV_T))
    conv = next(k for k in find_knobs(src) if k.kind == "num_stages" and "conv_transpose2d" in k.name)
    unchecked = variants(src, 200, smem_budget=None)
    over = [v for v in unchecked if over_budget(v.source)]
    assert any(v.changes == {conv.name: 4} for v in over)   # one stage more than the default
    checked = variants(src, 200)
    assert checked and not any(over_budget(v.source) for v in checked)
    assert not {v.source for v in over} & {v.source for v in checked}


# -- the estimate on hand-written kernels ----------------------------------------------------------

MATMUL = '''
@triton.jit
def mm(a_ptr, b_ptr, c_ptr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, 4096, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(a_ptr + rm[:, None] * 4096 + rk[None, :])
        b = tl.load(b_ptr + rk[:, None] * 4096 + rn[None, :])
        acc += tl.dot(A, B{precision})
    tl.store(c_ptr + rm[:, None] * 4096 + rn[None, :], acc)
'''


def fn_of(text: str) -> ast.FunctionDef:
    (fn,) = [n for n in ast.walk(ast.parse(textwrap.dedent(text))) if isinstance(n, ast.FunctionDef)]
    return fn


TILES = {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}


@pytest.mark.parametrize("operands, precision, element_bytes, stages, expected", [
    # the loop's figure; Triton 3.9's metadata.shared for sm_90 at these launches is the same
    # number except tf32x3 (65536) and ieee at 1 stage (benchmarks/NOTES.md)
    ("a, b", ', input_precision="tf32x3"', 4, 3, 2 * (16384 + 8192) + 16384 + 2 * 8192),
    ("a, b", ', input_precision="tf32"', 4, 3, 2 * (16384 + 8192) + (16384 + 8192)),
    ("a.to(tl.float16), b.to(tl.float16)", "", 2, 3, 2 * (8192 + 4096) + (8192 + 4096)),
    ("a.to(tl.float16), b.to(tl.float16)", "", 2, 4, 3 * (8192 + 4096) + (8192 + 4096)),
    # one stage: nothing pipelined, the operands staged
    ("a, b", ', input_precision="ieee"', 4, 1, 16384 + 8192),
])
def test_matmul_estimate(operands, precision, element_bytes, stages, expected):
    a, b = operands.split(", ")
    fn = fn_of(MATMUL.replace("A, B", f"{a}, {b}").replace("{precision}", precision))
    est = estimate_function(fn, TILES, stages, element_bytes)
    assert est.phases == {"loop 0": expected, "store": 128 * 64 * 4}   # the accumulator's layout change
    assert est.bytes == max(est.phases.values())


def test_unrolled_loads_count_once_per_trip_and_outer_loops_are_not_pipelined():
    pooled = fn_of(MATMUL.replace("        a = tl.load(a_ptr + rm[:, None] * 4096 + rk[None, :])",
                                  "        a = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)\n"
                                  "        for t in tl.static_range(4):\n"
                                  "            a += tl.load(a_ptr + t + rm[:, None] * 4096 + rk[None, :])")
                   .replace("A, B", "a, b").replace("{precision}", ', input_precision="tf32x3"'))
    est = estimate_function(pooled, TILES, 3)
    assert est.bytes == 2 * (4 * 16384 + 8192) + 2 * (16384 + 8192) and est.unknown == 0
    # a load that reads nothing of the trip (a norm's parameter per channel) is one load, not 4
    scaled = fn_of(ast.unparse(pooled).replace(
        "a += tl.load(a_ptr + t + rm[:, None] * 4096 + rk[None, :])",
        "sc = tl.load(s_ptr + rk[None, :] + tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.int32))\n"
        "            a += tl.load(a_ptr + t + rm[:, None] * 4096 + rk[None, :]) * sc"))
    assert estimate_function(scaled, TILES, 3).bytes == est.bytes + 2 * 16384
    # one trip by the loop's constant bounds: nothing is pipelined
    once = fn_of(MATMUL.replace("range(0, 4096, BLOCK_K)", "range(0, 32, BLOCK_K)").replace("A, B", "a, b")
                 .replace("{precision}", ', input_precision="tf32x3"'))
    assert estimate_function(once, TILES, 3).phases["loop 0 dot 0"] == 16384 + 2 * 8192
    assert estimate_function(once, {**TILES, "BLOCK_K": 16}, 3).phases["loop 0"] == 2 * (8192 + 4096) + 8192 + 2 * 4096
    # bounds the walk cannot tell (a split-K program's share of k): pipelined
    split = fn_of(ast.unparse(once).replace("range(0, 32, BLOCK_K)", "range(tl.program_id(2) * 32, "
                                            "tl.program_id(2) * 32 + 32, BLOCK_K)"))
    assert estimate_function(split, TILES, 3).phases["loop 0"] == 2 * (16384 + 8192) + 16384 + 2 * 8192
    nested = fn_of(MATMUL.replace("        acc += tl.dot(A, B{precision})",
                                  "        for j in range(2):\n            acc += tl.sigmoid(acc)\n"
                                  "        acc += tl.dot(a, b)"))
    # a loop inside the k loop: Triton pipelines neither; the product's operands are staged once
    assert estimate_function(nested, TILES, 3).phases["loop 1 dot 0"] == 16384 + 8192
    assert estimate_function(fn_of(MATMUL.replace("acc += tl.dot(A, B{precision})", "acc += a")), TILES) is None
    own = fn_of(MATMUL.replace("range(0, 4096, BLOCK_K)", "tl.range(0, 4096, BLOCK_K, num_stages=5)")
                .replace("A, B", "a, b").replace("{precision}", ""))
    assert estimate_function(own, TILES, 2).phases["loop 0"] == 4 * (16384 + 8192) + (16384 + 8192)


def test_launch_estimates_read_the_launch_literals():
    src = "import triton\nimport triton.language as tl\n" + textwrap.dedent(
        MATMUL.replace("A, B", "a, b").replace("{precision}", ', input_precision="tf32x3"')) + textwrap.dedent('''
        def run(a, b, c):
            mm[(1, 1)](a, b, c, BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_stages=4)
            mm[(1, 1)](a, b, c, 64, 64, 32)
        ''')
    big, small = launch_estimates(src)
    assert (big.num_stages, big.constexprs) == (4, {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64})
    assert big.estimate.bytes == 3 * (32768 + 32768) + 32768 + 2 * 32768 > SMEM_BUDGET
    assert (small.num_stages, small.constexprs) == (3, {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32})
    assert [e.line for e in over_budget(src)] == [big.line]


def test_fit_launch_lowers_stages_then_block_k_then_the_wider_side():
    def estimate(blocks, stages):
        return stages * blocks["BLOCK_K"] * (blocks["BLOCK_M"] + blocks["BLOCK_N"])

    blocks = {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}
    assert fit_launch(estimate, blocks, 3, budget=10**9) == (blocks, 3)
    assert fit_launch(estimate, blocks, 3, budget=2 * 32 * 192) == (blocks, 2)
    assert fit_launch(estimate, blocks, 3, budget=16 * 192) == ({**blocks, "BLOCK_K": 16}, 1)
    assert fit_launch(estimate, blocks, 3, budget=16 * 128) == ({**blocks, "BLOCK_M": 64, "BLOCK_K": 16}, 1)
    assert fit_launch(estimate, {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}, 1, budget=100) is None
    # stages fixed (a recurrent layer's products launch at Triton's default): tiles only
    assert fit_launch(estimate, blocks, 3, budget=3 * 16 * 192, stages_fixed=True) == \
        ({**blocks, "BLOCK_K": 16}, 3)
    assert fit_launch(estimate, blocks, 3, budget=3 * 16 * 96, stages_fixed=True) == \
        ({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 16}, 3)   # 128 -> 64, then BLOCK_N on the tie


def test_search_checks_half_tasks_at_two_bytes_an_element():
    from policies.search import _element_bytes

    assert _element_bytes(Task.from_source(POOL_CONV_T)) == 4
    assert _element_bytes(Task.from_source(POOL_CONV_T, meta={"dtype": "float16"})) == 2


def test_policy_rejects_a_bad_budget():
    for bad in (0, -5, 1.5, True, "200k"):
        with pytest.raises(ValueError, match="smem_budget"):
            compiler.CompilerPolicy(smem_budget=bad)
