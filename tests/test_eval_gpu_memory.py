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
