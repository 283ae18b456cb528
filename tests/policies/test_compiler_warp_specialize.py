"""Warp-specialised product loops (config ``{"tma": True, "warp_specialize": True}``): a product
kernel whose tl.dot operands are both TMA descriptor loads writes its k loop as
``tl.range(..., warp_specialize=BLOCK_M <= 64)``; elsewhere (a pointer operand, split-K, an fp32 b
that is not k-major) the loop stays as it was and the kernel's docstring says why. Judged under
the interpreter (where the loop is a plain range) with the sm_90 compile, and compiled for sm_90
here to see Triton's warp groups."""

from __future__ import annotations

import pytest

from kernelgym.task import Task
from tests._tasks import model_source

compiler = pytest.importorskip("policies.compiler")

WS = {"tma": True, "warp_specialize": True}
# fp32 x @ W.T (linear): both operands k-major, so TF32 wgmma takes them from the TMA buffers
LINEAR = model_source("return self.fc(x)", inputs="return [torch.randn(40, 32)]", init="self.fc = nn.Linear(32, 24)")
# a @ b.T with both inputs in memory (b's transpose read through a descriptor over b)
A_BT = model_source("return a @ b.T", args="a, b", inputs="return [torch.randn(40, 64), torch.randn(36, 64)]")
# fp16 a @ b: half-precision wgmma takes an n-major b too
HALF = model_source("return a @ b", args="a, b", inputs="return [torch.randn(40, 16, dtype=torch.float16), "
                    "torch.randn(16, 40, dtype=torch.float16)]")   # 80-byte rows
# fp32 a @ b: b (k, n) is n-major, which Triton 3.9's warp-specialised TF32 wgmma cannot lower
MATMUL = model_source("return a @ b", args="a, b", inputs="return [torch.randn(40, 16), torch.randn(16, 36)]")
# one 16 x 16 tile and k = 1024: split-K, whose span loop Triton 3.9's Hopper pass fails on
SPLIT = model_source("return self.fc(x)", inputs="return [torch.randn(16, 1024)]", init="self.fc = nn.Linear(1024, 16)")
# a fused prologue: a by pointers
PROLOGUE = model_source("return self.fc(torch.relu(x))", inputs="return [torch.randn(12, 32)]",
                        init="self.fc = nn.Linear(32, 20)")
HEADER = "tl.range(0, {k}, BLOCK_K, warp_specialize=BLOCK_M <= 64)"


def ws_source(task: Task, config: dict | None = None) -> str:
    return compiler.CompilerPolicy().compile(task, config=WS if config is None else config)


def doc_line(src: str) -> str:
    return next(line for line in src.splitlines() if "TMA loads" in line)


@pytest.fixture(scope="module")
def verdicts(evaluator):
    tasks = {"linear": Task.from_source(LINEAR), "a_bt": Task.from_source(A_BT),
             "half": Task.from_source(HALF)}
    pairs = [(t, ws_source(t)) for t in tasks.values()]
    return dict(zip(tasks, zip([s for _, s in pairs], evaluator.evaluate_batch(pairs, "interpret", "strict", seed=7))))


@pytest.mark.parametrize("name, k", [("linear", 32), ("a_bt", 64), ("half", 16)])
def test_warp_specialised_products_are_judged_ok(verdicts, name, k):
    src, v = verdicts[name]
    assert v.status == "ok", (v.status, v.reasons, v.error)
    assert v.ptx and v.ptx["ok"], v.ptx   # the sm_90 compile of the warp-specialised kernel
    assert f"for k0 in {HEADER.format(k=k)}:" in src
    assert len([line for line in src.splitlines() if "_desc.load([" in line]) == 2
    assert doc_line(src).endswith('k loop warp-specialised while BLOCK_M <= 64"""')
    # the default row tile is the one Triton's Hopper pass specialises
    assert "_BLOCK_M = 64" in src


def test_loops_that_cannot_be_warp_specialised_stay_plain():
    cases = {
        "an operand by pointers": Task.from_source(PROLOGUE),
        "split-K": Task.from_source(SPLIT),
        "fp32 b is not k-major": Task.from_source(MATMUL),
    }
    for why, task in cases.items():
        src = ws_source(task)
        assert "warp_specialize" not in src and "tl.range(" not in src, why
        assert doc_line(src).endswith(f'k loop not warp-specialised: {why}"""'), (why, doc_line(src))
        # the kernel is the TMA one: warp_specialize changes nothing but the docstring
        assert src.replace(f"; k loop not warp-specialised: {why}", "") == ws_source(task, {"tma": True})
    split = ws_source(cases["split-K"])
    assert "SPLIT_K=" in split and "for k0 in range(k_lo, k_lo + " in split


def test_warp_specialize_needs_tma_and_is_validated():
    task = Task.from_source(LINEAR)
    policy = compiler.CompilerPolicy()
    default = policy.compile(task)
    # without tma no operand is a descriptor: the kernel is the default one, its docstring says so
    alone = policy.compile(task, config={"warp_specialize": True})
    assert "TensorDescriptor" not in alone and "warp_specialize=" not in alone
    assert alone.replace('; k loop not warp-specialised: an operand by pointers', "") == default
    assert policy.compile(task, config={"tma": True, "warp_specialize": False}) == policy.compile(task, config={"tma": True})
    assert policy.compile(task, config={"tma": True, "kernels": {"0": {"warp_specialize": True}}}) == ws_source(task)
    with pytest.raises(compiler.CompileError, match=r"config\['warp_specialize'\] must be true or false .* got 1"):
        policy.compile(task, config={"warp_specialize": 1})
    with pytest.raises(compiler.CompileError, match=r"config\['warp_specialize'\] must be true or false .* got 'on'"):
        policy.compile(task, config={"kernels": {"k0_linear": {"warp_specialize": "on"}}})
    with pytest.raises(compiler.CompileError, match="tma, warp_specialize or 'kernels'"):
        policy.compile(task, config={"warp_specialise": True})


def test_sm90_compile_warp_specialises_a_64_row_tile():
    """Each launch recorded on the meta device (descriptors typed as Triton types them) and
    compiled for sm_90 on this CPU: with BLOCK_M 64 Triton splits the loop into a TMA producer and
    wgmma consumer warp groups (12 warps for num_warps 4); with BLOCK_M 128 the kernel asks for
    none (Triton 3.9's pass would split the rows between two consumers and fail)."""
    from benchmarks.dot_smem import compile_sm90, record_launches

    task = Task.from_source(A_BT)
    src = ws_source(task)
    assert "x0_desc.load([pid_m * BLOCK_M, k0])" in src and "x1_desc.load([pid_n * BLOCK_N, k0]).T" in src
    (launch,) = record_launches(task, src)
    assert launch["signature"]["x0_desc"] == "tensordesc<fp32[64, 32]>", launch["signature"]
    ws = compile_sm90(launch)
    assert "ttg.warp_specialize" in ws.asm["ttgir"] and ws.metadata.num_warps == 12
    assert "cp.async.bulk.tensor" in ws.asm["ptx"] and "wgmma" in ws.asm["ptx"]
    (launch,) = record_launches(task, ws_source(task, WS | {"BLOCK_M": 128}))
    plain = compile_sm90(launch)
    assert "ttg.warp_specialize" not in plain.asm["ttgir"] and plain.metadata.num_warps == 4
    assert "cp.async.bulk.tensor" in plain.asm["ptx"]


def test_search_seeds_a_warp_specialised_candidate():
    """Where the search seeds its TMA candidate it also seeds the warp-specialised one, when that
    differs (a product with both operands descriptors): fp32 linear yes, fp32 a @ b no."""
    from policies.search import SearchPolicy
    from tests.policies.test_search import FakeEvaluator

    def judge(src):
        return "ok", (3.0 if "warp_specialize=" in src else 2.0 if "TensorDescriptor" in src else 1.0)

    for task_src, seeded in ((LINEAR, True), (MATMUL, False)):
        r = SearchPolicy(compiler.CompilerPolicy(), budget_evals=4, evaluator=FakeEvaluator(judge, workers=4),
                         backend="cuda", tma=True).search(Task.from_source(task_src))
        seeds = [e for e in r.log if e["origin"] == "tma_ws"]
        assert len(seeds) == int(seeded), r.log
        assert [e for e in r.log if e["origin"] == "tma"]
        if seeded:
            assert seeds[0]["changes"] == {"config": WS}
            assert "warp_specialize=BLOCK_M <= 64" in r.best_source
    r = SearchPolicy(compiler.CompilerPolicy(), budget_evals=4, evaluator=FakeEvaluator(judge, workers=4),
                     backend="cuda", tma=False).search(Task.from_source(LINEAR))
    assert not [e for e in r.log if e["origin"] in ("tma", "tma_ws")]


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["bench_linear", "linear", "a_bt"])
def test_warp_specialised_candidates_are_correct_on_the_gpu(evaluator, name):
    """On a Hopper GPU: a warp-specialised linear at a bench-like size and the small products with
    ragged edges, judged ok and timed."""
    bench = model_source("return self.fc(x)", inputs="return [torch.randn(2048, 4096)]",
                         init="self.fc = nn.Linear(4096, 4096)")
    task = Task.from_source({"bench_linear": bench, "linear": LINEAR, "a_bt": A_BT}[name])
    src = ws_source(task)
    assert "warp_specialize=BLOCK_M <= 64" in src
    v = evaluator.evaluate(task, src, backend="cuda", seed=3)
    assert v.status == "ok", (v.status, v.error[:500])
    assert v.speedup is not None
