"""The pipeline's building blocks without worker processes: holding a worker (always given back,
replaced when it must be), the dataclasses read from worker replies, and the evaluator's options."""

from __future__ import annotations

import types

import pytest

from kernelgym.evaluation.options import EvaluatorOptions
from kernelgym.evaluation.pipeline import Run
from kernelgym.evaluation.pool import WorkerFailure
from kernelgym.evaluation.stages import Ended, ReferenceRun, Timed, ptx_cache_key


class FakeWorker:
    def __init__(self, name: str) -> None:
        self.name, self.dead = name, False


class FakePool:
    """Hands out workers and records each one given back and whether it was to be replaced."""

    def __init__(self) -> None:
        self.released: list[tuple[str, bool]] = []
        self.taken = 0

    def acquire(self) -> FakeWorker:
        self.taken += 1
        return FakeWorker(f"w{self.taken}")

    def release(self, w: FakeWorker, recycle: bool = False) -> None:
        self.released.append((w.name, recycle))


def run() -> Run:
    return Run(types.SimpleNamespace(skip_static_guards=False), "interpret", "strict", 1, 3, 10.0)


def test_a_held_worker_goes_back_to_its_pool_however_the_stage_ends():
    r, pool = run(), FakePool()
    with r.hold(pool, "candidate_wait") as held:
        assert held.worker.name == "w1" and not held.recycle
    with pytest.raises(KeyError), r.hold(pool, "candidate_wait"):
        raise KeyError("a pipeline bug")             # given back, not replaced
    with pytest.raises(WorkerFailure), r.hold(pool, "candidate_wait"):
        raise WorkerFailure("crash", "worker process died")   # replaced
    with r.hold(pool, "candidate_wait") as held:
        held.recycle = True                          # the stage says it is unfit
    with r.hold(pool, "candidate_wait") as held:
        held.worker.dead = True                      # died without a failure raised here
    assert pool.released == [("w1", False), ("w2", False), ("w3", True), ("w4", True), ("w5", True)]
    assert r.phases["candidate_wait"] >= 0
    assert set(r.phases) >= {"release", "worker_restart"}   # a timed release names which it was


def test_an_untimed_hold_of_a_taken_worker_adds_no_release_phase():
    r, pool = run(), FakePool()
    w = pool.acquire()
    with pytest.raises(WorkerFailure), r.holding(pool, w, timed_release=False):
        raise WorkerFailure("timeout", "too slow")
    assert pool.released == [("w1", True)] and "release" not in r.phases and "worker_restart" not in r.phases


def test_reference_run_reads_the_reference_reply():
    reply = {"status": "ok", "stored": True, "ops": {"aten::add": 1}, "aliases_input": False, "seeds": [5, 6, 7],
             "gpu_peak_bytes": 1024, "output_bytes": 64, "outputs": [[{"dtype": "float32", "shape": [4]}]] * 3,
             "input_dtypes": ["float32"], "fingerprints": {"init_inputs": "a", "state_dict": "b", "trials": []}}
    ref = ReferenceRun.from_reply(reply, 4)
    assert (ref.trials, ref.seeds, ref.stored, ref.gpu_peak_bytes, ref.output_bytes) == (4, [5, 6, 7], True, 1024, 64)
    assert ref.ops == {"aten::add": 1} and ref.baseline is None and ref.fingerprints["state_dict"] == "b"
    cpu = ReferenceRun.from_reply({**reply, "gpu_peak_bytes": None, "output_bytes": None, "stored": False}, 3)
    assert cpu.gpu_peak_bytes is None and cpu.output_bytes == 0 and not cpu.stored
    with pytest.raises(KeyError):
        ReferenceRun.from_reply({"status": "ok"}, 3)   # a reply without seeds is a pipeline error


def test_ended_and_timed_defaults():
    e = Ended.from_reply({"status": "ended", "tainted": True, "cuda_ok": None, "findings": [{"name": "x"}]})
    assert e.tainted and e.cuda_ok is None and not e.dead and e.findings == [{"name": "x"}]
    assert Ended(dead=True).findings == [] and Ended().cuda_ok is None
    t = Timed("runtime_error", "boom")
    assert (t.timings, t.speedup, t.reasons, t.ended) == ({}, None, [], None)


def test_ptx_cache_key_depends_on_source_mode_and_launches():
    launches = [{"kernel": "add", "signature": "*fp32"}]
    k = ptx_cache_key("src", "strict", launches)
    assert k == ptx_cache_key("src", "strict", [dict(launches[0])])
    assert len({k, ptx_cache_key("src", "lenient", launches), ptx_cache_key("src2", "strict", launches),
                ptx_cache_key("src", "strict", [])}) == 4


def test_evaluator_options_are_checked_when_made():
    for bad, what in [({"gpu_memory_fraction": 0}, "gpu_memory_fraction"), ({"bench": {"rep": 1}}, "timing option"),
                      ({"recycle_on_failure": "never"}, "recycle_on_failure"), ({"devices": [0, 0]}, "devices"),
                      ({"gpu_lock_policy": "fifo"}, "GPU lock policy"), ({"precompile_workers": -1}, "precompile"),
                      ({"gpu_memory_budget_mb": 0}, "gpu_memory_budget_mb"),
                      ({"host_memory_multiple": -1}, "host_memory_multiple"), ({"os_sandbox": "on"}, "os_sandbox")]:
        with pytest.raises(ValueError, match=what):
            EvaluatorOptions(**bad)
    with pytest.raises(TypeError, match="wrokers"):
        EvaluatorOptions().replace(wrokers=2)


def test_verdict_settings_keep_what_decides_verdicts_only():
    o = EvaluatorOptions(workers=7, devices=[1], timeout=5, bench={"rep_ms": 5}, os_sandbox="off", ptx_check=False)
    v = o.verdict_settings()
    assert (v.timeout, v.bench, v.os_sandbox, v.ptx_check) == (5, {"rep_ms": 5}, "off", False)
    assert v.workers is None and v.devices is None     # pool sizes and GPUs are each evaluator's own


def test_an_evaluator_takes_options_or_their_fields():
    from kernelgym.cluster.ray_pool import evaluator_options
    from kernelgym.evaluation import Evaluator

    with Evaluator(EvaluatorOptions(workers=3, timeout=7, os_sandbox="off")) as a, \
            Evaluator(workers=3, timeout=7, os_sandbox="off") as b, Evaluator(3, timeout=7, os_sandbox="off") as c:
        assert a.options == b.options == c.options
        assert (a.workers, a.reference_workers, a.timeout, a.reference_memory_limit_mb) == (3, 1, 7.0, 8192)
        assert evaluator_options(a) == a.options.verdict_settings()
    with Evaluator(EvaluatorOptions(workers=3), os_sandbox="off") as d:   # fields change the options given
        assert d.options.workers == 3 and d.os_sandbox == "off"
    with pytest.raises(TypeError, match="wrokers"):
        Evaluator(wrokers=2)
    with pytest.raises(TypeError, match="workers"):
        Evaluator(2, workers=3)
    assert evaluator_options(None) == EvaluatorOptions()


def test_the_evaluations_of_an_evaluator_share_its_counters_and_caches():
    from kernelgym.evaluation import Evaluator

    with Evaluator(workers=1, os_sandbox="off") as ev:
        assert ev.stats is ev.shared.stats and ev.shared.lock is ev._lock
        ev.shared.count("ptx_cache_hits")
        assert ev.stats["ptx_cache_hits"] == 1
        ev.shared.ptx_cache["k"] = {"ok": True}
        ev.shared.baselines[("t", "0:gpu", "float32")] = {"eager": {}}
        ev.clear_caches()
        assert not ev.shared.ptx_cache and not ev.shared.baselines
        assert next(ev.shared.keys) != next(ev.shared.keys)   # each reference store gets its own name
