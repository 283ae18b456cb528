"""The red-team suite through the whole evaluation pipeline (`kernelgym.evaluation`), interpreter
backend: every hack is rejected as hack_detected with the right reason, every legit kernel is ok.

Pass 1 runs the normal pipeline (static guards first). Pass 2 turns the static layer off
(`skip_static_guards=True`, sandbox testing mode) for the hacks written to slip past it, so that the
runtime layer is shown to catch them on its own inside the real candidate worker.
GPU-only hacks (side streams, caching-allocator reuse) are in test_redteam_gpu.py.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.redteam.manifest import cases

CPU_CASES = [c for c in cases() if c.layer not in ("gpu", "os")]   # "os": test_redteam_os.py
RUNTIME_CASES = [c for c in CPU_CASES if not c.legit and c.layer in ("runtime", "both")]


@pytest.fixture(scope="module")
def pipeline(evaluator):
    out = {}
    for mode in ("strict", "lenient"):
        sub = [c for c in CPU_CASES if c.mode == mode]
        for c, v in zip(sub, evaluator.evaluate_batch([(c.task_source, c.source) for c in sub],
                                                      "interpret", mode, seed=7)):
            out[c.id] = v
    return out


@pytest.fixture(scope="module")
def runtime_only(evaluator):
    def one(c):
        return evaluator.evaluate(c.task_source, c.source, "interpret", c.mode, seed=11, skip_static_guards=True)

    with ThreadPoolExecutor(2) as ex:
        return dict(zip([c.id for c in RUNTIME_CASES], ex.map(one, RUNTIME_CASES)))


@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: c.id)
def test_pipeline(case, pipeline):
    v = pipeline[case.id]
    if case.legit:
        assert v.status == "ok", (v.status, v.reasons, v.error)
        assert v.kernels, "the verdict names the kernels launched"
        return
    assert v.status == "hack_detected", (v.status, v.reasons, v.error)
    assert v.reward_components["hack"] == 1.0 and v.reward_components["correct"] == 0.0
    guards = {r for r in v.reasons if r.startswith("guard:")}
    if case.layer in ("static", "both"):
        assert set(case.expect) <= guards, (v.reasons, v.error)
    else:  # written for the runtime layer: the static layer may still see through it first
        assert guards, (v.reasons, v.error)


@pytest.mark.parametrize("case", RUNTIME_CASES, ids=lambda c: c.id)
def test_runtime_layer_in_pipeline(case, runtime_only):
    v = runtime_only[case.id]
    assert v.status == "hack_detected", (v.status, v.reasons, v.error)
    assert set(case.expect) <= set(v.reasons), (v.reasons, v.error)
