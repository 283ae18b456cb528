"""GPU and host memory admission: how much an evaluation holds (its footprint, from the reference
build's measured peak or a meta-device estimate), how much of a GPU evaluations may share (its
budget), and which out-of-memory failures other evaluations' memory may have caused (those are
judged again with the GPU alone). Pure arithmetic; `admission.MemoryBudget` does the waiting.
"""

from __future__ import annotations

import re
from typing import Any

from kernelgym.evaluation.protocol import BACKEND_CUDA
from kernelgym.evaluation.verdict import Verdict

# GPU memory admission (`MemoryBudget`, one per GPU). Each worker process holds memory outside any
# evaluation's footprint: its CUDA context (about half a GiB) and the freed memory its allocator may
# keep cached (KERNELGYM_GPU_CACHE_MB, see worker.trim_gpu_cache); the budget is 90 % of the GPU
# less that much per worker on it, and at least a quarter of the GPU.
GPU_CONTEXT_BYTES = 512 << 20
# The L2 flush buffer of a timing (2 x L2, >= 64 MiB) and allocator rounding, per timing process.
TIMING_ALLOWANCE_BYTES = 256 << 20
# Share of the budget an evaluation reserves when its task could not be sized before it runs.
UNKNOWN_FOOTPRINT_SHARE = 0.25


def gpu_budget_bytes(total: int, workers_on_gpu: int, cache_keep: int) -> int:
    """Bytes of a GPU of `total` bytes that evaluations may reserve (see GPU_CONTEXT_BYTES)."""
    return max(total // 4, int(0.9 * total) - workers_on_gpu * (GPU_CONTEXT_BYTES + cache_keep))


# The candidate worker's GPU memory in units of the reference build's peak: the same weights,
# inputs and forward temporaries. The runtime guards' write checks hold at most 64 MiB a storage
# (`guards.runtime.storage.write_probe`): when they copied whole storages, six KernelBench level-2
# candidates ran out of memory under a 1x cap (session 14). At 2x (session 16, an H100, the
# level-2 search) nearly every level-2 evaluation was over the whole budget or waited for one
# that was: one problem judged in 540 s.
CANDIDATE_PEAKS = 1


def evaluation_footprint(reference_peak: int, output_bytes: int, trials: int, forward_peak: int = 0) -> int:
    """GPU bytes one evaluation holds at once, from the reference build's peak (weights, every
    trial's inputs and outputs, a forward's temporaries): the reference worker holds that; the
    candidate worker `CANDIDATE_PEAKS` times as much, plus the private pool of its timed CUDA
    graph (about one forward's temporaries, `forward_peak`), which is still alive while the final
    trial runs a forward eagerly beside it; the comparison brings the candidate's outputs of
    `trials` trials (and the final one) to the reference worker; each of the two timing processes
    needs its flush buffer. KernelBench level 2's 65 (a 4.46 GiB convolution output) failed its
    final trial at the cap without the graph's pool (session 17)."""
    return ((1 + CANDIDATE_PEAKS) * max(0, reference_peak) + max(0, forward_peak)
            + (trials + 1) * max(0, output_bytes) + 2 * TIMING_ALLOWANCE_BYTES)


def memory_account(reserved: int | None, method: str | None, reference_peak: int | None,
                   candidate_peak: int | None, one_trial: bool) -> dict[str, Any]:
    """An evaluation's GPU memory, for ``verdict.timings["gpu_memory"]``: the bytes it reserved
    (`evaluation_footprint` of a `method` "meta" estimate or a "measured" reference peak), the
    reference build's and the candidate session's allocator peaks (None where unknown), and
    ``reserved_per_peak``, the reservation over their sum: how far the footprint model is from
    what the two workers held (a figure above 1 is memory other evaluations waited for)."""
    held = (reference_peak or 0) + (candidate_peak or 0)
    ratio = round(reserved / held, 3) if reserved and held and None not in (reference_peak, candidate_peak) else None
    return {"reserved_bytes": reserved, "footprint_method": method, "reference_peak_bytes": reference_peak,
            "candidate_peak_bytes": candidate_peak, "reserved_per_peak": ratio, "one_trial": one_trial}


def estimated_reference_peak(fp: dict[str, Any], n_ref: int) -> int:
    """The reference build's peak from a meta-device estimate (`reference.estimate_footprint`)."""
    return fp["weight_bytes"] + n_ref * (fp["input_bytes"] + fp["output_bytes"]) + fp["forward_peak_bytes"]


def host_task_bytes(fp: dict[str, Any], n_ref: int) -> int:
    """Host bytes a worker may hold for a task beyond its own: the model built on the CPU, a copy
    of its weights and the candidate's (3 x weights), and every trial's inputs and outputs (a
    candidate's outputs are copied to the host; a comparison reads them from the file)."""
    return 3 * fp["weight_bytes"] + n_ref * (fp["input_bytes"] + fp["output_bytes"])


_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
_TRIED = re.compile(r"Tried to allocate ([\d.]+) (B|KiB|MiB|GiB|TiB)")
_TOTAL = re.compile(r"total capacity of ([\d.]+) (B|KiB|MiB|GiB|TiB)")


def oom_beside_others(v: Verdict) -> bool:
    """A GPU run that failed for lack of GPU memory where the allocation asked for was modest
    (under a quarter of the GPU, or not stated): other processes' memory may be the cause. A
    candidate asking for more than that (a 4 TB ``torch.empty``) keeps its verdict at once. A
    reference that failed so (`invalid_task`) is judged again too: a legitimate task must not
    become invalid because of its neighbours."""
    ref_failed = v.status == "invalid_task" and bool({"task:reference_error", "task:reference_crash"} & set(v.reasons))
    if v.backend != BACKEND_CUDA or not (v.status in ("crash", "runtime_error") or ref_failed) \
            or "sandbox:memory" in v.reasons:
        return False
    text = v.error or ""
    if "out of memory" not in text.lower() and "cudaErrorMemoryAllocation" not in text:
        return False
    if "DefaultCPUAllocator" in text:   # host memory: no other evaluation's GPU footprint is the cause
        return False
    tried, total = _TRIED.search(text), _TOTAL.search(text)
    if tried and total:
        return float(tried[1]) * _UNITS[tried[2]] < 0.25 * float(total[1]) * _UNITS[total[2]]
    return not tried or float(tried[1]) * _UNITS[tried[2]] < 2**34   # 16 GiB when the total is not stated


def reference_over_host_limit(v: Verdict) -> bool:
    """A reference worker killed over its host-memory limit (`task:reference_memory`): judged again
    alone, in a fresh worker, before the task is called invalid. A worker reused across tasks
    keeps memory of earlier ones, and its limit is this task's: on an H100, four small level-1
    KernelBench matmuls became `invalid_task` so (session 14)."""
    return v.status == "invalid_task" and v.reasons == ["task:reference_memory"]
