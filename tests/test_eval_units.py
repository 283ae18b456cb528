"""Units that need no worker: codec, extraction, format check, comparison, tolerances."""

from __future__ import annotations

import contextlib
import math
import types

import pytest
import torch

from kernelgym.evaluation import codec
from kernelgym.evaluation.check import compare_trial, reference_problem
from kernelgym.evaluation.extract import (
    MAX_CANDIDATE_BYTES,
    FormatError,
    check_format,
    code_blocks,
    extract_code,
)
from kernelgym.evaluation.tolerances import table, tolerance_for


def test_codec_roundtrip_all_dtypes_and_structures():
    value = {
        "a": [torch.randn(3, 4), torch.arange(5, dtype=torch.int64), torch.ones(2, dtype=torch.bfloat16)],
        "b": (1, 2.5, None, "s", True, float("nan")),
        "c": torch.empty(0, 3),
        "d": torch.float16,
        "e": torch.tensor([True, False]),
        7: torch.randn(2, 3).t(),  # non-contiguous
    }
    back = codec.decode(codec.encode(value))
    assert set(back) == set(value)
    for x, y in zip(value["a"], back["a"]):
        assert x.dtype == y.dtype and torch.equal(x, y)
    assert back["b"][:5] == (1, 2.5, None, "s", True) and math.isnan(back["b"][5])
    assert back["c"].shape == (0, 3) and back["d"] is torch.float16
    assert torch.equal(back[7], value[7])


def test_codec_rejects_unknown_objects_and_malformed_messages():
    with pytest.raises(codec.CodecError):
        codec.encode({"f": object()})
    blob = codec.encode({"t": torch.randn(4)})
    for bad in (b"", b"junk" * 10, blob[:-3], blob[:4] + b"\xff" * 8 + blob[12:]):
        with pytest.raises(codec.CodecError):
            codec.decode(bad)


def test_extract_fenced_reply_prefers_block_with_modelnew():
    reply = "Here you go:\n```python\nimport math\n```\nand\n```python\nclass ModelNew:\n    pass\n```\nDone."
    ex = extract_code(reply)
    assert ex.code.strip() == "class ModelNew:\n    pass"
    assert ex.notes and "markdown fence" in ex.notes[0]
    assert extract_code("class ModelNew: pass\n").notes == []


def test_code_blocks_scans_fences_as_commonmark_does():
    """The one fence scanner (the evaluator's extraction and the LLM policies' reply parsing): a
    block's text is the reply's byte for byte, a closing fence may be longer than its opening one,
    a fence left open at the end is a block marked unclosed, and a backtick fence's info string
    holds no backticks."""
    reply = "Intro\r\n```Python extra\r\ns = '\u2028'\r\n````\r\n~~~\n```\nx = 1\n~~~\n```py\ncut"
    blocks = code_blocks(reply)
    assert [(b.lang, b.code, b.closed) for b in blocks] == [
        ("python", "s = '\u2028'\r\n", True), ("", "```\nx = 1\n", True), ("py", "cut", False)]
    assert reply[blocks[0].start:].startswith("```Python")
    # not an opening line (a backtick in a backtick fence's info string), so the last line opens one
    assert [(b.code, b.closed) for b in code_blocks("```python `x`\ncode\n```\n")] == [("", False)]
    assert [b.code for b in code_blocks("```python\n")] == [""]     # opened; nothing came yet
    assert code_blocks("```python") == [] and code_blocks("no fences\n") == []
    # The evaluator judges a CRLF reply's block (the closing "```\r" closes it).
    assert extract_code("```python\r\nclass ModelNew: pass\r\n```\r\n").code == "class ModelNew: pass\r\n"


def test_extract_unterminated_fence_and_limits():
    assert "ModelNew" in extract_code("```python\nclass ModelNew: pass\n").code
    with pytest.raises(FormatError, match="empty"):
        extract_code("   \n")
    with pytest.raises(FormatError, match="larger"):
        extract_code("#" * (MAX_CANDIDATE_BYTES + 1))


@pytest.mark.parametrize("src,msg", [
    ("this is not python at all!", "syntax error"),
    ("import torch\nclass Model: pass\n", "no top-level `ModelNew`"),
    ("def f():\n    class ModelNew: pass\n", "no top-level `ModelNew`"),
])
def test_check_format_errors(src, msg):
    with pytest.raises(FormatError, match=msg):
        check_format(src)


def test_compare_trial_reasons():
    ref = [torch.ones(4, 4)]
    assert compare_trial(0, 1, ref, [torch.ones(4, 4) + 1e-4]).ok
    assert compare_trial(0, 1, ref, [torch.ones(16)]).reason == "check:shape"
    assert compare_trial(0, 1, ref, [torch.ones(4, 4, dtype=torch.float64)]).reason == "check:dtype"
    r = compare_trial(0, 1, ref, [torch.ones(4, 4) * 1.5])
    assert r.reason == "check:mismatch" and r.mismatched == 16 and r.max_abs_err == pytest.approx(0.5)
    nan = torch.ones(4, 4)
    nan[1, 1] = float("nan")
    assert compare_trial(0, 1, ref, [nan]).reason == "check:nan"
    inf = torch.ones(4, 4)
    inf[0, 0] = float("inf")
    assert compare_trial(0, 1, ref, [inf]).reason == "check:nan"
    assert compare_trial(0, 1, ref, [ref[0], ref[0]]).reason == "check:output_count"
    ints = [torch.arange(5)]
    assert compare_trial(0, 1, ints, [torch.arange(5)]).ok
    assert compare_trial(0, 1, ints, [torch.arange(5) + (torch.arange(5) == 3)]).reason == "check:mismatch"


@pytest.mark.parametrize("slice_elems", [1 << 24, 7])
def test_compare_trial_in_slices_gives_the_whole_tensor_figures(monkeypatch, slice_elems):
    """Compared a few elements at a time (as a multi-GiB output is), every count and maximum is
    the whole tensor's, wherever the bad elements sit (a transposed, non-contiguous output too)."""
    from kernelgym.evaluation import check

    monkeypatch.setattr(check, "COMPARE_SLICE", slice_elems)
    ref = torch.linspace(-2, 2, 60).reshape(6, 10)
    out = ref.clone()
    out[0, 0] += 0.5
    out[5, 9] -= 3.0          # the largest error, in the last slice
    out[2, 3] *= 1.001        # within tolerance
    r = compare_trial(0, 1, [ref], [out])
    assert r.reason == "check:mismatch" and r.mismatched == 2 and r.max_abs_err == pytest.approx(3.0)
    nan = ref.clone()
    nan[4, 7] = float("nan")
    r = compare_trial(0, 1, [ref], [nan])
    assert r.reason == "check:nan" and r.mismatched == 1
    t = ref.t().contiguous().t()   # same values, column-major
    assert compare_trial(0, 1, [ref], [t]).ok
    ints = torch.arange(50)
    bad = ints.clone()
    bad[[3, 49]] += 2
    r = compare_trial(0, 1, [ints], [bad])
    assert r.reason == "check:mismatch" and r.mismatched == 2 and r.max_abs_err == 2.0
    flags = torch.arange(30) % 3 == 0
    assert compare_trial(0, 1, [flags], [flags.clone()]).ok
    assert compare_trial(0, 1, [flags], [~flags]).mismatched == 30


def test_reference_problem_and_tolerances():
    assert reference_problem([[torch.ones(2)], [torch.ones(2), torch.arange(3)]]) is None
    nan = torch.tensor([1.0, float("nan")])
    assert reference_problem([[torch.ones(2)], [torch.arange(3), nan]]) == "trial 1: reference output 1 contains NaN"
    assert reference_problem([[nan], ["<dict>"]]) == "trial 1: reference output 0 is <dict>, not a tensor"
    assert reference_problem([[3.0]]) == "trial 0: reference output 0 is float, not a tensor"
    assert tolerance_for(torch.float32) == {"atol": 1e-2, "rtol": 1e-2}
    assert tolerance_for(torch.int32) == {"atol": 0.0, "rtol": 0.0}
    assert tolerance_for("bfloat16")["atol"] > tolerance_for("float16")["atol"]
    assert "float32" in table()


class _FakeCuda:
    def __init__(self, reserved: int, allocated: int, initialized: bool = True):
        self.reserved, self.allocated, self.initialized, self.emptied = reserved, allocated, initialized, 0

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return self.initialized

    def memory_reserved(self) -> int:
        return self.reserved

    def memory_allocated(self) -> int:
        return self.allocated

    def empty_cache(self) -> None:
        self.emptied += 1
        self.reserved = self.allocated


class _FakeDriver:
    """The few CUDA driver calls `set_sync_schedule` makes, over `devices` GPUs."""

    def __init__(self, devices: int, fail_init: bool = False):
        self.devices, self.fail_init, self.flags = devices, fail_init, {}

    def cuInit(self, flags):
        return 100 if self.fail_init else 0   # CUDA_ERROR_NO_DEVICE

    def cuDeviceGetCount(self, ref):
        ref._obj.value = self.devices
        return 0

    def cuDeviceGet(self, ref, ordinal):
        ref._obj.value = 10 + ordinal
        return 0

    def cuDevicePrimaryCtxSetFlags_v2(self, dev, flags):
        self.flags[dev.value] = flags
        return 0


def test_workers_set_how_cuda_waits_on_every_visible_gpu():
    from kernelgym.evaluation.worker import set_sync_schedule

    two = _FakeDriver(2)
    assert set_sync_schedule("block", two) and two.flags == {10: 4, 11: 4}   # CU_CTX_SCHED_BLOCKING_SYNC
    assert set_sync_schedule("spin", two) and two.flags == {10: 1, 11: 1}
    assert not set_sync_schedule("block", _FakeDriver(0))            # no GPU: nothing to set
    assert not set_sync_schedule("block", _FakeDriver(1, fail_init=True))
    with pytest.raises(ValueError, match="unknown CUDA sync schedule 'busy'"):
        set_sync_schedule("busy", two)


def test_a_bad_sync_schedule_fails_when_the_evaluator_is_made(monkeypatch):
    from kernelgym.evaluation import Evaluator

    monkeypatch.setenv("KERNELGYM_CUDA_SYNC", "sleepy")
    with pytest.raises(ValueError, match="KERNELGYM_CUDA_SYNC='sleepy'"):
        Evaluator(workers=1)


def test_workers_give_cached_gpu_memory_back_beyond_the_keep_limit():
    from kernelgym.evaluation.worker import trim_gpu_cache

    gib = 1 << 30
    busy = _FakeCuda(reserved=9 * gib, allocated=2 * gib)   # 7 GiB cached but unused (seen on an H200)
    assert trim_gpu_cache(gib, busy) and busy.emptied == 1 and busy.reserved == 2 * gib
    assert not trim_gpu_cache(gib, busy) and busy.emptied == 1   # nothing cached any more
    small = _FakeCuda(reserved=gib + 100, allocated=200)   # under the limit: the cache is kept (speed)
    assert not trim_gpu_cache(gib, small) and small.emptied == 0
    held = []

    @contextlib.contextmanager
    def hold(mode):
        held.append(mode)
        yield

    again = _FakeCuda(reserved=3 * gib, allocated=0)
    assert trim_gpu_cache(gib, again, hold=hold) and held == ["shared"]   # freed under the GPU lock
    cold = _FakeCuda(reserved=9 * gib, allocated=0, initialized=False)   # never touched CUDA
    assert not trim_gpu_cache(0, cold) and cold.emptied == 0
    import torch

    if not torch.cuda.is_available():
        assert not trim_gpu_cache(0)   # a CPU machine: nothing to do, and no error


def test_timing_method_notes_flag_unlike_timings():
    """A speedup from a CUDA-graph timing over an eager one (a forward that could not be captured)
    says so in the verdict's notes, with the capture error; like-for-like timings add nothing."""
    from kernelgym.evaluation.stages import timing_method_notes

    graph = {"median_ms": 0.1, "method": "cuda_graph"}
    eager = {"median_ms": 0.3, "method": "eager", "graph_error": "RuntimeError: capture failed"}
    assert timing_method_notes({"candidate": graph, "eager": graph, "compile": graph}) == []
    assert timing_method_notes({"candidate": graph}) == []
    notes = timing_method_notes({"candidate": graph, "eager": eager, "compile": graph})
    assert notes == ["timing methods differ: candidate cuda_graph, eager baseline eager "
                     "(capture failed, eager: RuntimeError: capture failed)"]
    notes = timing_method_notes({"candidate": {**eager, "graph_error": "x"}, "eager": graph, "compile": graph})
    assert len(notes) == 2 and all("candidate eager" in n and "candidate: x" in n for n in notes)


def test_baselines_are_the_best_of_spaced_repeats(monkeypatch):
    """A disturbed timing is only ever slower: each baseline is the least of several medians, eager
    and compiled taking turns, with every median kept; a compile failure keeps the eager one."""
    from kernelgym.evaluation import reference, timing
    from kernelgym.evaluation.jobs import GpuSections

    medians = iter([0.50, 0.07, 0.21, 0.09, 0.20, 0.08])   # eager, compile, eager, compile, ...
    calls = []

    def fake_bench(fn, inputs, stream=None, **opts):
        calls.append(fn)
        return {"median_ms": next(medians), "method": "cuda_graph"}

    monkeypatch.setattr(timing, "bench", fake_bench)
    monkeypatch.setattr(reference, "_stream", lambda state: None)
    monkeypatch.setattr(reference, "BASELINE_GAP_S", 0.0)
    state = {"gpu": GpuSections(None, None, enabled=False),
             "reference": {"model": lambda *a: None, "inputs": [[1]], "compiled": lambda *a: None}}
    out = reference.time_baselines(state, {"bench": {}}, lambda phase: None)
    assert out["eager"]["median_ms"] == 0.20 and out["eager"]["repeat_medians_ms"] == [0.50, 0.21, 0.20]
    assert out["compile"]["median_ms"] == 0.07 and out["compile"]["repeat_medians_ms"] == [0.07, 0.09, 0.08]
    assert len(calls) == 2 * reference.BASELINE_REPEATS

    medians = iter([0.3, 0.2])
    state["reference"]["compiled"] = None
    state["reference"]["compile_error"] = "BackendCompilerFailed: boom"
    out = reference.time_baselines(state, {"bench": {}, "repeats": 2}, lambda phase: None)
    assert out["eager"]["median_ms"] == 0.2 and out["compile_error"] == "BackendCompilerFailed: boom"
    assert "compile" not in out
    with pytest.raises(ValueError):
        reference.best_of([])


def test_inductor_autotuning_of_the_compiled_baseline_is_exclusive():
    """Inductor times each config of a compiled kernel at its first launch: that runs under the
    exclusive GPU lock (from inside the background section of the first compiled call), and the
    patch is undone afterwards."""
    from kernelgym.evaluation import codec
    from kernelgym.evaluation.jobs import GpuSections
    from kernelgym.evaluation.reference import autotune_exclusive

    sent, replies = [], []

    def send(blob):
        sent.append(codec.decode(blob)["mode"])
        if sent[-1] != "release":
            replies.append(codec.encode({"type": "granted"}))

    gpu = GpuSections(send, lambda: replies.pop(0), enabled=True, cuda=False)

    class Autotuner:
        def benchmark_all_configs(self, *args):
            return {"modes": list(sent), "args": args}

    original = Autotuner.benchmark_all_configs
    with gpu.hold("background"), autotune_exclusive(gpu, Autotuner):
        got = Autotuner().benchmark_all_configs(1, 2)
    assert got == {"modes": ["background", "release", "exclusive"], "args": (1, 2)}
    assert sent == ["background", "release", "exclusive", "release", "background", "release"]
    assert Autotuner.benchmark_all_configs is original

    # What Inductor timed and kept, per kernel, goes to the record (the fastest config is kept).
    class Launcher:
        def __init__(self, config):
            self.config = config

    class Tuner:
        def __init__(self):
            self.fn = types.SimpleNamespace(__name__="triton_red_fused_std_0")   # Inductor: a JITFunction

        def benchmark_all_configs(self, *args):
            return {Launcher("XBLOCK: 1, RBLOCK: 2048"): 0.8, Launcher("XBLOCK: 64, RBLOCK: 8"): 0.07}

    record: list = []
    with autotune_exclusive(gpu, Tuner, record=record):
        Tuner().benchmark_all_configs()
    assert record == [{"kernel": "triton_red_fused_std_0", "chosen": "XBLOCK: 64, RBLOCK: 8",
                       "configs_ms": {"XBLOCK: 64, RBLOCK: 8": 0.07, "XBLOCK: 1, RBLOCK: 2048": 0.8}}]
    with autotune_exclusive(gpu, object()):   # no autotuner to patch: nothing happens
        pass
    try:
        from torch._inductor.runtime.triton_heuristics import CachingAutotuner
    except Exception:  # noqa: BLE001
        return
    before = CachingAutotuner.benchmark_all_configs
    with autotune_exclusive(gpu):
        assert CachingAutotuner.benchmark_all_configs is not before
    assert CachingAutotuner.benchmark_all_configs is before
