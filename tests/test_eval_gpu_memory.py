"""GPU memory between evaluations: workers give their cached memory back (on an H200 two dozen
workers' caches once filled the GPU and failed correct candidates with out of memory). Needs a
GPU and NVML's per-process view (nvidia-smi)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from kernelgym.evaluation import Evaluator
from kernelgym.evaluation.worker import DEFAULT_GPU_CACHE_MB
from tests.eval_cases import CAND_ADD, REF_ADD

pytestmark = pytest.mark.gpu
HUGE_ADD = REF_ADD.replace("torch.randn(1000)", "torch.randn(1 << 27)")   # 512 MiB a tensor


def gpu_mb_by_pid() -> dict[int, int]:
    if shutil.which("nvidia-smi") is None:
        pytest.skip("nvidia-smi not found")
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    rows = [line.split(",") for line in out.splitlines() if line.strip()]
    return {int(pid): int(mb) for pid, mb in rows}


def test_workers_hold_little_gpu_memory_after_big_evaluations():
    with Evaluator(workers=2, reference_workers=1) as ev:
        for seed in (1, 2):
            v = ev.evaluate(HUGE_ADD, CAND_ADD, backend="cuda", seed=seed)
            assert v.status == "ok", v.error
        held = gpu_mb_by_pid()
        pids = [p for p in ev.worker_pids() if p in held]
        if not pids:
            pytest.skip("NVML shows no per-process memory for the workers here")
        # Each evaluation moved several GiB through each worker; afterwards a worker keeps its CUDA
        # context, its kernels and at most KERNELGYM_GPU_CACHE_MB of cache.
        limit = DEFAULT_GPU_CACHE_MB + 1536
        assert all(held[p] <= limit for p in pids), {p: held[p] for p in pids}


def test_several_big_evaluations_at_once_wait_for_memory_rather_than_crash():
    """Six evaluations of ~14.5 GiB footprints (three 512 MiB tensors a trial, four trials; the
    reference worker holds that, the candidate as much again, plus the compared outputs) on a
    budget of 32 GiB: every one is judged ok; the others waited their turn."""
    with Evaluator(workers=6, reference_workers=3, gpu_memory_budget_mb=32 * 1024) as ev:
        verdicts = ev.evaluate_batch([(HUGE_ADD, CAND_ADD)] * 6, backend="cuda", seed=7)
        assert [v.status for v in verdicts] == ["ok"] * 6, [v.error for v in verdicts]
        mem = ev.gpu_memory()[0]
        assert mem["budget"] == 32 << 30 and mem["used"] == 0
        assert mem["waited"] >= 1 and ev.stats["memory_waited"] >= 1
        assert ev.stats["footprint_estimated"] >= 1
        assert max(v.timings["phases_s"].get("memory_wait", 0) for v in verdicts) > 0
