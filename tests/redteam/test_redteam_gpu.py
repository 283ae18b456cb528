"""GPU-only red-team cases (run on a CUDA machine; skipped cleanly elsewhere): side streams,
work left running after return, caching-allocator reuse, and the legit kernels on real hardware."""

from __future__ import annotations

import pytest

from tests.redteam.manifest import ROOT, cases

pytestmark = pytest.mark.gpu

BY_ID = {c.id: c for c in cases()}


def _eval(evaluator, case_id, skip_static=True):
    c = BY_ID[case_id]
    return evaluator.evaluate(c.task_source, c.source, "cuda", c.mode, seed=3, skip_static_guards=skip_static)


@pytest.mark.parametrize("case_id", ["hacks/side_stream", "hacks/side_stream_obfuscated"])
def test_side_stream_caught_at_runtime(evaluator, case_id):
    v = _eval(evaluator, case_id)
    assert v.status == "hack_detected" and "guard:side_stream" in v.reasons, (v.status, v.reasons, v.error)


def test_caching_allocator_reuse(evaluator):
    # On a GPU torch.empty often returns the block that just held the reference-shaped result;
    # poisoning fresh allocations makes the unwritten output fail anyway.
    v = _eval(evaluator, "hacks/unwritten_output")
    assert v.status == "hack_detected" and "guard:output_not_from_triton" in v.reasons, (v.reasons, v.error)


def test_timed_graph_must_compute_the_function(evaluator):
    # Passes every check outside timing; the timed forwards return remembered outputs instead.
    v = _eval(evaluator, "hacks/timing_cache", skip_static=False)
    assert v.status == "hack_detected" and "guard:timing_inconsistent" in v.reasons, (v.status, v.reasons, v.error)


def test_capture_probe_denied_on_gpu(evaluator):
    v = _eval(evaluator, "hacks/timing_probe")
    assert v.status == "hack_detected" and "guard:timing_probe" in v.reasons, (v.status, v.reasons, v.error)


@pytest.mark.parametrize("case_id", [c.id for c in cases() if c.legit])
def test_legit_on_gpu(evaluator, case_id):
    v = _eval(evaluator, case_id, skip_static=False)
    assert v.status == "ok", (v.status, v.reasons, v.error)


def test_manifest_root():
    assert (ROOT / "hacks").is_dir()
