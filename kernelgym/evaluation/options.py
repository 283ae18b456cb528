"""An `Evaluator`'s settings as one value: `EvaluatorOptions`, checked when it is made.

`Evaluator(EvaluatorOptions(...))` and `Evaluator(workers=..., timeout=..., ...)` are the same; the
Ray pool (`kernelgym.cluster`) hands the settings that decide verdicts (`verdict_settings`) to the
evaluators of its actors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from kernelgym.evaluation.pool import GpuLock
from kernelgym.evaluation.protocol import bench_budget


@dataclass(frozen=True)
class EvaluatorOptions:
    """Settings of an `Evaluator`; a bad value is a ValueError naming it.

    workers: candidate workers per backend (default min(cpu_count, 16)); reference_workers default
    to half of that and ptx_workers (interpreter only: an sm_90 compile costs about as much as the
    interpreted run) to half (at least 1). On the cuda backend both are spread over `devices` (GPU
    indices as this process sees them; default every visible GPU), at least one of each per GPU.
    memory_limit_mb: memory limit per candidate/ptx worker process tree (what it allocated,
    `proctree.memory_use`; resident size is the cheap first test), polled by the parent (over it:
    killed, verdict `crash`); reference_memory_limit_mb the same for reference workers
    (default max(memory_limit_mb, 8192)). timeout: wall seconds per phase (import,
    construct, each trial, timing). baseline_timeout: seconds for the eager and torch.compile
    baselines. gpu_memory_fraction: per-worker `torch.cuda.set_per_process_memory_fraction`
    (default 2 / candidate workers of its GPU). bench: timing budget (`timing.DEFAULT_BENCH` keys:
    warmup_ms, rep_ms, min_reps, max_reps, replay_ms). reference_cache_mb: device memory a
    reference worker may keep reference outputs in between an evaluation's reference job and its
    comparisons (more is rebuilt from the seed). recycle_on_failure: on the cuda backend, after a
    non-ok verdict, "always" replaces the worker; "probe" (default) replaces it unless a probe
    kernel and a device sync still succeed in it (sticky CUDA errors fail every later call, so a
    context that passes is not poisoned); crashes, timeouts and tainted workers are always
    replaced. skip_static_guards: run candidates the static guards would reject -- only for
    testing the sandbox itself. gpu_lock_policy: how correctness runs and timings share a GPU
    (`admission.GpuLock`): "writers_first" (default) or "phase_fair". precompile_workers: on the cuda
    backend, CPU-only processes that compile each candidate's kernels for the GPU's target while its
    reference job runs (`precompile.Precompiler`), so that the candidate worker, the scarcer
    resource, loads them from Triton's cache instead of compiling (0: off). os_sandbox: OS-level
    confinement (`sandbox`: Landlock, then a seccomp filter) of every process that runs candidate
    code: "auto" (default; where the machine lacks it, one warning and ``versions["os_sandbox"] ==
    "false"`` in verdicts), "require" (refuse to start without both) or "off".

    GPU memory: on the cuda backend an evaluation is admitted onto its GPU by its footprint
    (`footprint.evaluation_footprint`; before the task has run once, from a meta-device estimate of
    its weights, inputs, outputs and a forward's temporaries, then from the reference worker's
    measured peak), and waits while the GPU's budget is taken, so an out-of-memory never comes from
    a neighbour. gpu_memory_budget_mb: the budget per GPU (default `footprint.gpu_budget_bytes` of
    the GPU's memory). One evaluation over the whole budget runs alone. Host memory: for a sized
    task a worker's limit is its configured one (memory_limit_mb / reference_memory_limit_mb) plus
    host_memory_multiple x the task's host bytes (`footprint.host_task_bytes`), capped by what the
    machine has available (MemAvailable plus the worker's own resident memory), never below the
    configured one. one_trial_on_gpu: a task too large for its GPU's budget (KernelBench level 1's
    norms on 7 GiB inputs: every trial's inputs and outputs did not fit the reference worker)
    keeps one trial on the GPU at a time in both workers -- the others' inputs and outputs on the
    host, compared there, timed on one input set: "auto" (default: when the footprint is over the
    budget), "always" (tests) or "never".
    """

    workers: int | None = None
    reference_workers: int | None = None
    ptx_workers: int | None = None
    memory_limit_mb: float | None = 8192
    timeout: float = 120.0
    baseline_timeout: float = 600.0
    gpu_memory_fraction: float | None = None
    skip_static_guards: bool = False
    ptx_check: bool = True
    bench: dict[str, Any] | None = None
    recycle_on_failure: str = "probe"
    reference_memory_limit_mb: float | None = None
    reference_cache_mb: float = 2048
    devices: Sequence[int] | None = None
    gpu_lock_policy: str = "writers_first"
    precompile_workers: int = 0
    gpu_memory_budget_mb: float | None = None
    host_memory_multiple: float = 2.0
    os_sandbox: str = "auto"
    one_trial_on_gpu: str = "auto"

    # The settings that decide verdicts (limits, timeouts, checks): what the evaluator of a Ray actor
    # takes from the caller's evaluator (its pool sizes and devices are the actor's own).
    VERDICT_SETTINGS: ClassVar[tuple[str, ...]] = (
        "memory_limit_mb", "timeout", "baseline_timeout", "skip_static_guards", "ptx_check", "bench",
        "recycle_on_failure", "reference_memory_limit_mb", "os_sandbox", "host_memory_multiple")

    def __post_init__(self) -> None:
        from kernelgym.evaluation import sandbox

        sandbox.check_mode(self.os_sandbox)   # first: "require" must refuse before anything starts
        if self.gpu_memory_fraction is not None and not 0 < self.gpu_memory_fraction <= 1:
            raise ValueError(f"gpu_memory_fraction must be in (0, 1], got {self.gpu_memory_fraction}")
        bench_budget(dict(self.bench or {}))  # unknown keys fail here, not in the first timing
        if self.recycle_on_failure not in ("probe", "always"):
            raise ValueError("recycle_on_failure must be 'probe' or 'always'")
        if self.devices is not None:
            devices = [int(d) for d in self.devices]
            if not devices or len(set(devices)) != len(devices) or min(devices) < 0:
                raise ValueError(f"devices must be distinct GPU indices >= 0, got {devices}")
        GpuLock(self.gpu_lock_policy)  # an unknown policy fails here
        p = self.precompile_workers
        if isinstance(p, bool) or not isinstance(p, int) or p < 0:
            raise ValueError(f"precompile_workers must be an int >= 0, got {p!r}")
        if self.gpu_memory_budget_mb is not None and not self.gpu_memory_budget_mb > 0:
            raise ValueError(f"gpu_memory_budget_mb must be > 0, got {self.gpu_memory_budget_mb}")
        if not self.host_memory_multiple >= 0:
            raise ValueError(f"host_memory_multiple must be >= 0, got {self.host_memory_multiple}")
        if self.one_trial_on_gpu not in ("auto", "always", "never"):
            raise ValueError(f"one_trial_on_gpu must be 'auto', 'always' or 'never', got {self.one_trial_on_gpu!r}")

    def verdict_settings(self) -> EvaluatorOptions:
        """These options with only `VERDICT_SETTINGS` kept (the rest at their defaults)."""
        return EvaluatorOptions(**{k: getattr(self, k) for k in self.VERDICT_SETTINGS})

    def replace(self, **changes: Any) -> EvaluatorOptions:
        """A copy with `changes` (field names; an unknown one is a TypeError naming it)."""
        return dataclasses.replace(self, **changes)
