"""GPU memory admission and task-sized host limits: evaluations wait for memory rather than crash
beside each other, one bigger than the whole budget runs alone, and a task's sizes come from the
meta device before anything real is built (CPU tests; the GPU test is in test_eval_gpu_memory.py)."""

from __future__ import annotations

import threading
import time

import pytest

from kernelgym.evaluation import footprint
from kernelgym.evaluation.pool import MemoryBudget, Role, Worker, WorkerFailure, host_memory_limit
from kernelgym.evaluation.reference import estimate_footprint

MiB = 1 << 20


class Tracker:
    """Runs fake evaluations of given footprints on a budget and records what was held at once."""

    def __init__(self, budget: MemoryBudget):
        self.budget, self.lock = budget, threading.Lock()
        self.held, self.max_held, self.max_holders, self.holders = 0, 0, 0, 0
        self.alone_ok: list[bool] = []
        self.order: list[str] = []

    def evaluate(self, name: str, footprint: int, seconds: float = 0.05) -> None:
        with self.budget.reserve(footprint):
            with self.lock:
                self.order.append(name)
                self.held += footprint
                self.holders += 1
                self.max_held = max(self.max_held, self.held)
                self.max_holders = max(self.max_holders, self.holders)
                if footprint > self.budget.budget:
                    self.alone_ok.append(self.holders == 1)
            time.sleep(seconds)
            with self.lock:
                if footprint > self.budget.budget:
                    self.alone_ok.append(self.holders == 1)
                self.held -= footprint
                self.holders -= 1


def run_all(tracker: Tracker, jobs: list[tuple[str, int]], stagger: float = 0.0) -> None:
    threads = []
    for name, n in jobs:
        threads.append(threading.Thread(target=tracker.evaluate, args=(name, n)))
        threads[-1].start()
        time.sleep(stagger)
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "an evaluation never got its memory (deadlock)"


def test_evaluations_wait_for_memory_instead_of_sharing_it_beyond_the_budget():
    tracker = Tracker(MemoryBudget(100 * MiB))
    run_all(tracker, [(f"e{i}", 40 * MiB) for i in range(8)])
    assert len(tracker.order) == 8
    assert tracker.max_held <= 100 * MiB and tracker.max_holders == 2   # two of 40 fit, never three
    assert tracker.budget.waited >= 5 and tracker.budget.used == 0 and tracker.budget.holders == 0


def test_an_evaluation_bigger_than_the_budget_runs_alone_without_deadlock():
    tracker = Tracker(MemoryBudget(100 * MiB))
    # small ones running, then a huge one, then more small ones behind it
    run_all(tracker, [("a", 30 * MiB), ("b", 30 * MiB), ("huge", 500 * MiB), ("c", 30 * MiB), ("d", 30 * MiB)],
            stagger=0.01)
    assert sorted(tracker.order) == ["a", "b", "c", "d", "huge"]
    assert tracker.alone_ok == [True, True]           # nothing beside it, from start to end
    assert tracker.order.index("huge") < tracker.order.index("c")   # arrival order: not overtaken, not starved
    assert tracker.budget.alone == 1


def test_resize_never_waits_and_later_requests_wait_for_the_growth():
    budget = MemoryBudget(100 * MiB)
    with budget.reserve(30 * MiB) as a, budget.reserve(30 * MiB) as b:
        a.resize(60 * MiB)
        b.resize(60 * MiB)                             # both grew (measured): overcommitted, no deadlock
        assert budget.used == 120 * MiB
        assert not budget.acquire(1 * MiB, timeout=0.1)   # a newcomer waits until holders leave
        b.resize(10 * MiB)
    assert budget.used == 0
    assert budget.acquire(100 * MiB, timeout=1) and budget.used == 100 * MiB
    budget.release(100 * MiB)
    with pytest.raises(ValueError, match="> 0"):
        MemoryBudget(0)


def test_host_memory_limit_follows_the_task_and_the_machine():
    gib = 1 << 30
    assert host_memory_limit(8 * gib, 5 * gib, 100 * gib) == 18 * gib          # base + 2 x task
    assert host_memory_limit(8 * gib, 5 * gib, 12 * gib) == 12 * gib           # capped by the machine
    assert host_memory_limit(8 * gib, 5 * gib, 2 * gib) == 8 * gib             # never below the base
    assert host_memory_limit(8 * gib, None, None) == 8 * gib
    assert host_memory_limit(None, 5 * gib, 100 * gib) is None                 # no limit stays none
    assert host_memory_limit(8 * gib, 5 * gib, None, multiple=3) == 23 * gib


def test_footprint_model():
    gib = 1 << 30
    total = 80 * gib
    assert footprint.gpu_budget_bytes(total, 12, 1 * gib) == int(0.9 * total) - 12 * (footprint.GPU_CONTEXT_BYTES + gib)
    assert footprint.gpu_budget_bytes(total, 1000, gib) == total // 4               # at least a quarter
    fp = {"weight_bytes": 100, "input_bytes": 10, "output_bytes": 20, "forward_peak_bytes": 40}
    assert footprint.estimated_reference_peak(fp, 4) == 100 + 4 * 30 + 40
    assert footprint.host_task_bytes(fp, 4) == 300 + 4 * 30
    assert footprint.evaluation_footprint(1000, 20, 3) == 2000 + 80 + 2 * footprint.TIMING_ALLOWANCE_BYTES
    # the candidate's timed CUDA graph keeps a forward's temporaries beside the final trial's forward
    assert footprint.evaluation_footprint(1000, 20, 3, 300) == 2300 + 80 + 2 * footprint.TIMING_ALLOWANCE_BYTES



def test_memory_account_compares_the_reservation_with_the_workers_peaks():
    """`memory_account` (verdict.timings["gpu_memory"] on cuda): the reservation over the two
    workers' allocator peaks; no ratio while either peak is unknown; `Ended` reads the candidate's."""
    from kernelgym.evaluation.stages import Ended

    got = footprint.memory_account(3000, "measured", 1000, 500, False)
    assert got == {"reserved_bytes": 3000, "footprint_method": "measured", "reference_peak_bytes": 1000,
                   "candidate_peak_bytes": 500, "reserved_per_peak": 2.0, "one_trial": False}
    assert footprint.memory_account(3000, "meta", 1000, None, True)["reserved_per_peak"] is None
    assert footprint.memory_account(None, "unknown", 1000, 500, False)["reserved_per_peak"] is None
    assert Ended.from_reply({"gpu_peak_bytes": 123}).gpu_peak_bytes == 123
    assert Ended.from_reply({"gpu_peak_bytes": True}).gpu_peak_bytes is None
    assert Ended.from_reply({}).gpu_peak_bytes is None


SIZED_TASK = '''
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self, n, m):
        super().__init__()
        self.linear = nn.Linear(n, m)

    def forward(self, x):
        return torch.relu(self.linear(x)) * 2


def get_inputs():
    return [torch.randn(4096, 512)]


def get_init_inputs():
    return [512, 1024]
'''


def test_estimate_footprint_sizes_a_task_on_the_meta_device():
    fp = estimate_footprint({}, {"source": SIZED_TASK}, lambda phase: None)
    assert fp["status"] == "ok", fp
    assert fp["weight_bytes"] == (512 * 1024 + 1024) * 4
    assert fp["input_bytes"] == 4096 * 512 * 4 and fp["output_bytes"] == 4096 * 1024 * 4
    out = 4096 * 1024 * 4
    # linear, relu and the product each make an output of that size; at most two are alive at once
    assert 2 * out <= fp["forward_peak_bytes"] <= 3 * out


def test_estimate_footprint_reports_a_task_the_meta_device_cannot_run():
    src = SIZED_TASK.replace("return torch.relu(self.linear(x)) * 2", "return x * float(x.sum().item())")
    fp = estimate_footprint({}, {"source": src}, lambda phase: None)
    assert fp["status"] == "error" and fp["error"]


def test_a_request_may_carry_its_own_memory_limit():
    """A task-sized limit replaces the worker's own for one request (here a tiny one, so the worker
    is killed), and the next request has the worker's own again."""
    slow = "import time\ntime.sleep(3)\n" + SIZED_TASK
    w = Worker(Role("reference", "interpret"), memory_limit_mb=16384)
    try:
        w.wait_ready()
        assert w.request({"op": "footprint", "source": SIZED_TASK}, 60)["status"] == "ok"
        with pytest.raises(WorkerFailure) as info:
            w.request({"op": "footprint", "source": slow}, 60, memory_limit=1 * MiB)
        assert info.value.kind == "memory" and "memory limit of 1 MB" in str(info.value)
    finally:
        w.kill()


def _mapped_file_task(path: str, mb: int) -> str:
    """A task whose import maps `mb` MB of a file and reads every page (resident, not allocated)."""
    return (f"import mmap, time\nfh = open({path!r}, 'rb')\nm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)\n"
            f"s = sum(m[i] for i in range(0, {mb} << 20, 4096))\ntime.sleep(1.5)\n" + SIZED_TASK)


def test_the_memory_limit_charges_allocations_not_mapped_files(tmp_path):
    """Resident size counts mapped files (shared libraries, page cache): a worker is killed over
    what it allocated, and the message gives the account per process."""
    from kernelgym.evaluation.proctree import memory_use

    big = tmp_path / "big.bin"
    big.write_bytes(b"\1" * (256 * MiB))
    w = Worker(Role("reference", "interpret"), memory_limit_mb=16384)
    try:
        w.wait_ready()
        assert w.request({"op": "footprint", "source": SIZED_TASK}, 60)["status"] == "ok"
        own = memory_use(w.pid)
        if "anon" not in own:
            pytest.skip("/proc/PID/smaps_rollup is not readable here")
        limit = own["charged"] + 128 * MiB   # under what the mapped file makes resident
        reply = w.request({"op": "footprint", "source": _mapped_file_task(str(big), 256)}, 60, memory_limit=limit)
        assert reply["status"] == "ok"
        allocating = "import time\nb = bytearray(256 << 20)\ntime.sleep(1.5)\n" + SIZED_TASK
        with pytest.raises(WorkerFailure) as info:
            w.request({"op": "footprint", "source": allocating}, 60, memory_limit=limit)
        assert info.value.kind == "memory" and "MB allocated" in str(info.value) and "anon" in str(info.value)
    finally:
        w.kill()


def test_memory_use_splits_allocations_from_mapped_files():
    import os

    from kernelgym.evaluation.proctree import memory_use, tree_memory

    use = memory_use(os.getpid())
    if "anon" not in use:
        pytest.skip("/proc/PID/smaps_rollup is not readable here")
    assert use["charged"] == use["anon"] + use["shmem"] and use["file"] > 0
    total, account = tree_memory(os.getpid())
    assert total >= use["charged"] and f"{os.getpid()}: anon" in account
    assert memory_use(2**22 + 12345) == {}   # no such process


def test_a_gpus_budget_sets_aside_each_workers_context_and_kept_cache(monkeypatch):
    """Without `gpu_memory_budget_mb` the budget is 90 % of the GPU less each worker's context and
    the cache it may keep (`worker.DEFAULT_GPU_CACHE_MB`, or KERNELGYM_GPU_CACHE_MB): the same
    figure the workers trim their caches to."""
    from kernelgym.evaluation import Evaluator
    from kernelgym.evaluation.worker import DEFAULT_GPU_CACHE_MB

    gib = 1 << 30
    monkeypatch.delenv("KERNELGYM_GPU_CACHE_MB", raising=False)
    with Evaluator(workers=16, reference_workers=8) as ev:
        assert ev.memory_budget(0) is None   # nothing known of the GPU yet
        budget = ev.memory_budget(0, 80 * gib).budget
    assert budget == footprint.gpu_budget_bytes(80 * gib, 24, DEFAULT_GPU_CACHE_MB << 20)
    assert budget >= 50 * gib   # an 80 GiB H100 with 24 workers: 36 GiB when each kept 1 GiB
    monkeypatch.setenv("KERNELGYM_GPU_CACHE_MB", "1024")
    with Evaluator(workers=16, reference_workers=8) as ev:
        assert ev.memory_budget(0, 80 * gib).budget == footprint.gpu_budget_bytes(80 * gib, 24, gib)


def test_one_trial_on_the_gpu_keeps_every_verdict():
    """`one_trial_on_gpu="always"` (what "auto" picks for a task over its GPU's budget): each
    worker keeps one trial's inputs and outputs on the device at a time, the reference compares on
    the host and times on the first trial's inputs. Legitimate kernels stay ok and the reuse /
    mutation hacks are still caught (here on the interpreter: the same code path)."""
    from kernelgym.evaluation import Evaluator
    from tests.redteam.manifest import cases

    picked = {c.id: c for c in cases() if c.id in ("legit/relu_add", "legit/row_softmax", "legit/matmul",
                                                   "hacks/cached_output", "hacks/reused_buffer",
                                                   "hacks/mutate_parameter")}
    assert len(picked) == 6
    with pytest.raises(ValueError, match="one_trial_on_gpu"):
        Evaluator(workers=1, one_trial_on_gpu="sometimes")
    with Evaluator(workers=2, reference_workers=1, ptx_workers=1, memory_limit_mb=2048, timeout=60,
                   one_trial_on_gpu="always") as ev:
        verdicts = ev.evaluate_batch([(c.task_source, c.source) for c in picked.values()], backend="interpret",
                                     seed=5)
    for (name, case), v in zip(picked.items(), verdicts):
        if case.legit:
            assert v.status == "ok", (name, v.status, v.error[:300])
            assert len(v.trials) == 3 and all(t["ok"] for t in v.trials), (name, v.trials)
        else:
            assert v.status != "ok" and set(case.expect) & set(v.reasons), (name, v.status, v.reasons)
