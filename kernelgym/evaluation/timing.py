"""GPU timing, run inside a worker: median of many runs, L2 flushed, inputs rotated, device synced.

Like `triton.testing.do_bench` (CUDA events, L2 flush by zeroing a 256 MB buffer between runs,
warmup, run count from a time budget), with two changes: the inputs rotate through the trial
input sets, and the whole device is synchronised before every run and before its end event is
recorded (``torch.cuda.synchronize()``), so work left on other streams cannot spill out of (or
into) a timed window. That adds the same small constant (a host sync and one event launch, a few
microseconds) to candidate and baseline alike. Host wall time per run is recorded too.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

L2_FLUSH_BYTES = 256 * 1024 * 1024


def summarize(values: list[float]) -> dict[str, float]:
    """median/mean/min/max/p20/p80 in ms, and `spread` = (p80 - p20) / median."""
    v = sorted(values)
    n = len(v)

    def q(p: float) -> float:
        return v[min(n - 1, max(0, round(p * (n - 1))))]

    med = statistics.median(v)
    return {
        "median_ms": med, "mean_ms": statistics.fmean(v), "min_ms": v[0], "max_ms": v[-1],
        "p20_ms": q(0.2), "p80_ms": q(0.8), "n": n, "spread": (q(0.8) - q(0.2)) / med if med > 0 else 0.0,
    }


def bench(fn: Callable[[list[Any]], Any], input_sets: list[list[Any]], *, warmup_ms: float = 25.0,
          rep_ms: float = 100.0, min_reps: int = 30, max_reps: int = 1000) -> dict[str, Any]:
    """Time `fn(inputs)` on the current CUDA device; returns event and wall statistics in ms."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("timing needs a CUDA device")
    cache = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    k = len(input_sets)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(5):
        cache.zero_()
        fn(input_sets[i % k])
    torch.cuda.synchronize()
    est_ms = max((time.perf_counter() - t0) * 1000 / 5, 1e-3)
    n_warm = max(1, int(warmup_ms / est_ms))
    n_rep = max(min_reps, min(max_reps, int(rep_ms / est_ms)))
    for i in range(n_warm):
        fn(input_sets[i % k])
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    walls = []
    for i in range(n_rep):
        cache.zero_()  # L2 flush
        torch.cuda.synchronize()  # nothing of the flush or earlier runs is still running
        w0 = time.perf_counter()
        starts[i].record()
        fn(input_sets[i % k])
        # The whole device, not just the current stream: work the forward left on other streams is
        # finished before the end event is recorded, so it is counted.
        torch.cuda.synchronize()
        ends[i].record()
        walls.append((time.perf_counter() - w0) * 1000)
    torch.cuda.synchronize()
    times = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    return {**summarize(times), "wall": summarize(walls), "warmup_runs": n_warm, "input_sets": k}
