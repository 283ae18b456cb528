"""The evaluation pipeline and the worker pools it runs on.

parent: extract code -> format check -> static guards -> REFERENCE worker (seeded model, inputs and
outputs, kept on the evaluation device; baselines) -> CANDIDATE worker (builds the same inputs from
the seeds, then import, construct, weights, trials, runtime guards) -> the candidate's outputs go
back to the same REFERENCE worker, which compares them on the device -> sm_90 ptx check in a PTX
worker (interpret backend) -> timing of a CUDA graph of the forward under the GPU's exclusive lock
(cuda backend, only when correct), a final fresh-input trial and a replay of the timed graph on
the same inputs, compared again -> Verdict.

Only metadata and the candidate's outputs cross process boundaries; the outputs go from the
candidate worker to the reference worker through a file the parent named (`codec`, "spill"), so
the parent relays a reference to them, never their bytes. On the cuda backend every GPU of the
machine is used (`devices`): workers are pinned to one GPU each, an evaluation runs on the least loaded GPU, each GPU has its
own lock (shared for correctness runs, exclusive for timing; workers hold it only around GPU
work, never while compiling) and its own baseline cache.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import itertools
import json
import os
import random
import re
import shutil
import signal
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Union

from kernelgym.evaluation.clusters import parse_cluster, remote_batch
from kernelgym.evaluation.extract import FormatError, check_format, extract_code
from kernelgym.evaluation.guards.static import check_source as static_check
from kernelgym.evaluation.pool import (
    GpuLock,
    MemoryBudget,
    Reservation,
    Role,
    RolePool,
    Worker,
    WorkerFailure,
    host_memory_limit,
    meminfo_bytes,
    rss_bytes,
    split_counts,
    tree_cpu_seconds,
)
from kernelgym.evaluation.protocol import (
    BACKEND_AUTO,
    BACKEND_CUDA,
    BACKEND_INTERPRET,
    BACKENDS,
    MODE_LENIENT,
    MODE_STRICT,
    MODES,
    SYNC_ENV,
    SYNC_SCHEDULES,
    TrialResult,
    bench_budget,
    trial_seed,
)
from kernelgym.evaluation.sandbox import SPILL_PREFIX
from kernelgym.evaluation.tolerances import tolerance_for
from kernelgym.evaluation.verdict import Verdict
from kernelgym.task import Task, TaskFormatError, check_source, source_hash

Reference = Union[Task, str]  # noqa: UP007 - a runtime alias, kept importable on Python 3.9 tools


# Longest an evaluation waits for its candidate's kernels to be compiled ahead (then the candidate
# worker compiles what is missing itself).
PRECOMPILE_WAIT_S = 10.0

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


def evaluation_footprint(reference_peak: int, output_bytes: int, trials: int) -> int:
    """GPU bytes one evaluation holds at once, from the reference build's peak (weights, every
    trial's inputs and outputs, a forward's temporaries): the reference worker holds that; the
    candidate worker about as much (the same weights and inputs, its forwards' temporaries); the
    comparison brings the candidate's outputs of `trials` trials (and the final one) to the
    reference worker; each of the two timing processes needs its flush buffer."""
    return 2 * max(0, reference_peak) + (trials + 1) * max(0, output_bytes) + 2 * TIMING_ALLOWANCE_BYTES


def estimated_reference_peak(fp: dict[str, Any], n_ref: int) -> int:
    """The reference build's peak from a meta-device estimate (`reference.estimate_footprint`)."""
    return fp["weight_bytes"] + n_ref * (fp["input_bytes"] + fp["output_bytes"]) + fp["forward_peak_bytes"]


def host_task_bytes(fp: dict[str, Any], n_ref: int) -> int:
    """Host bytes a worker may hold for a task beyond its own: the model built on the CPU, a copy
    of its weights and the candidate's (3 x weights), and every trial's inputs and outputs (a
    candidate's outputs are copied to the host; a comparison reads them from the file)."""
    return 3 * fp["weight_bytes"] + n_ref * (fp["input_bytes"] + fp["output_bytes"])


def _no_nvidia_device() -> bool:
    """True when this Linux machine surely has no GPU torch could use (no NVIDIA or ROCm device
    node), so `cuda_available` can answer without loading torch (seconds on a small CPU)."""
    import glob
    import sys

    if "torch" in sys.modules or not sys.platform.startswith("linux"):
        return False
    return not (glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd")
                or glob.glob("/proc/driver/nvidia/gpus/*"))


def cuda_available() -> bool:
    if _no_nvidia_device():
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


def cuda_device_count() -> int:
    """GPUs this process sees (0 without CUDA)."""
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001
        return 0


def timing_method_notes(timings: dict[str, Any]) -> list[str]:
    """Notes for a speedup whose two timings used different methods: a forward that could not be
    captured in a CUDA graph is timed eagerly, host launch gaps included, so its ratio to a graph
    timing is not like for like (the note carries the capture error)."""
    c = timings.get("candidate") or {}
    notes = []
    for who in ("eager", "compile"):
        b = timings.get(who) or {}
        if c.get("method") and b.get("method") and b["method"] != c["method"]:
            errors = [f"{name}: {t['graph_error']}" for name, t in (("candidate", c), (who, b)) if t.get("graph_error")]
            why = f" (capture failed, {'; '.join(errors)})" if errors else ""
            notes.append(f"timing methods differ: candidate {c['method']}, {who} baseline {b['method']}{why}")
    return notes


def resolve_backend(backend: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'interpret'."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend == BACKEND_AUTO:
        return BACKEND_CUDA if cuda_available() else BACKEND_INTERPRET
    if backend == BACKEND_CUDA and not cuda_available():
        raise ValueError("backend 'cuda' requested but no CUDA GPU is visible")
    return backend


def _versions() -> dict[str, str]:
    import platform

    from kernelgym.version import __version__

    return {"kernelgym": __version__, "python": platform.python_version()}


class Evaluator:
    """Worker pools plus settings; `evaluate` / `evaluate_batch` run the pipeline on them.

    workers: candidate workers per backend (default min(cpu_count, 16)); reference_workers default
    to half of that and ptx_workers (interpreter only: an sm_90 compile costs about as much as the
    interpreted run) to half (at least 1). On the cuda backend both are spread over `devices` (GPU
    indices as this process sees them; default every visible GPU), at least one of each per GPU.
    memory_limit_mb: resident-memory limit per candidate/ptx worker process tree, polled by the
    parent (over it: killed, verdict `crash`); reference_memory_limit_mb the same for reference
    workers (default max(memory_limit_mb, 8192)). timeout: wall seconds per phase (import,
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
    (`pool.GpuLock`): "writers_first" (default) or "phase_fair". precompile_workers: on the cuda
    backend, CPU-only processes that compile each candidate's kernels for the GPU's target while its
    reference job runs (`precompile.Precompiler`), so that the candidate worker, the scarcer
    resource, loads them from Triton's cache instead of compiling (0: off). os_sandbox: OS-level
    confinement (`sandbox`, Landlock) of every process that runs candidate code: "auto" (default;
    where the machine lacks it, one warning and ``versions["os_sandbox"] == "false"`` in
    verdicts), "require" (refuse to start without it) or "off". Use as a context manager or call
    `close()`; pools are also shut down at interpreter exit.

    GPU memory: on the cuda backend an evaluation is admitted onto its GPU by its footprint
    (`evaluation_footprint`; before the task has run once, from a meta-device estimate of its
    weights, inputs, outputs and a forward's temporaries, then from the reference worker's measured
    peak), and waits while the GPU's budget is taken, so an out-of-memory never comes from a
    neighbour. gpu_memory_budget_mb: the budget per GPU (default `gpu_budget_bytes` of the GPU's
    memory). One evaluation over the whole budget runs alone. Host memory: for a sized task a
    worker's limit is its configured one (memory_limit_mb / reference_memory_limit_mb) plus
    host_memory_multiple x the task's host bytes (`host_task_bytes`), capped by what the machine has
    available (MemAvailable plus the worker's own resident memory), never below the configured one.
    """

    def __init__(self, workers: int | None = None, *, reference_workers: int | None = None,
                 ptx_workers: int | None = None, memory_limit_mb: float | None = 8192,
                 timeout: float = 120.0, baseline_timeout: float = 600.0,
                 gpu_memory_fraction: float | None = None, skip_static_guards: bool = False,
                 ptx_check: bool = True, bench: dict[str, Any] | None = None,
                 recycle_on_failure: str = "probe", reference_memory_limit_mb: float | None = None,
                 reference_cache_mb: float = 2048, devices: Sequence[int] | None = None,
                 gpu_lock_policy: str = "writers_first", precompile_workers: int = 0,
                 gpu_memory_budget_mb: float | None = None, host_memory_multiple: float = 2.0,
                 os_sandbox: str = "auto"):
        from kernelgym.evaluation import sandbox

        # Checked first: "require" must refuse before anything starts.
        self.os_sandbox = sandbox.check_mode(os_sandbox)
        self.os_sandbox_report = sandbox.probe() if os_sandbox != "off" else sandbox.Report(False, why="off")
        if os_sandbox == "require" and not self.os_sandbox_report.active:
            raise RuntimeError(f"os_sandbox='require' but this machine cannot confine candidate code: "
                               f"{self.os_sandbox_report.why}")
        if os_sandbox == "auto" and not self.os_sandbox_report.active:
            sandbox.warn_unconfined(self.os_sandbox_report.why)

        self.workers = max(1, workers or min(os.cpu_count() or 1, 16))
        self.reference_workers = max(1, reference_workers or self.workers // 2)
        self.ptx_workers = max(1, ptx_workers or self.workers // 2)
        self.memory_limit_mb = memory_limit_mb
        # References also hold torch.compile/inductor state and a CUDA context: more headroom.
        self.reference_memory_limit_mb = reference_memory_limit_mb or (
            max(memory_limit_mb, 8192) if memory_limit_mb else None)
        self.timeout = float(timeout)
        self.baseline_timeout = float(baseline_timeout)
        if gpu_memory_fraction is not None and not 0 < gpu_memory_fraction <= 1:
            raise ValueError(f"gpu_memory_fraction must be in (0, 1], got {gpu_memory_fraction}")
        self.gpu_memory_fraction = gpu_memory_fraction
        self.skip_static_guards = skip_static_guards
        self.ptx_check = ptx_check
        self.bench = dict(bench or {})
        bench_budget(self.bench)  # unknown keys fail here, not in the first timing
        if recycle_on_failure not in ("probe", "always"):
            raise ValueError("recycle_on_failure must be 'probe' or 'always'")
        self.recycle_on_failure = recycle_on_failure
        if devices is not None:
            devices = [int(d) for d in devices]
            if not devices or len(set(devices)) != len(devices) or min(devices) < 0:
                raise ValueError(f"devices must be distinct GPU indices >= 0, got {devices}")
        self._devices: list[int] | None = list(devices) if devices is not None else None
        GpuLock(gpu_lock_policy)  # an unknown policy fails here
        sync = os.environ.get(SYNC_ENV)
        if sync and sync not in SYNC_SCHEDULES:  # else every GPU worker would die at its start
            raise ValueError(f"{SYNC_ENV}={sync!r}: expected one of {sorted(SYNC_SCHEDULES)}")
        self.gpu_lock_policy = gpu_lock_policy
        if isinstance(precompile_workers, bool) or not isinstance(precompile_workers, int) or precompile_workers < 0:
            raise ValueError(f"precompile_workers must be an int >= 0, got {precompile_workers!r}")
        self.precompile_workers = precompile_workers
        self._precompiler: Any = None
        self._precompile_threads: ThreadPoolExecutor | None = None
        self._pools: dict[Role, RolePool] = {}
        self._lock = threading.Lock()
        self._gpu_locks: dict[int, GpuLock] = {}
        self._inflight: dict[int, int] = {}
        self._baselines: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._baseline_locks: dict[tuple[str, str, str], threading.Lock] = {}
        self.reference_cache_bytes = int(reference_cache_mb * 2**20)
        # sm_90 compile-check results per (candidate source, launch signatures, mode).
        self._ptx_cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._keys = itertools.count()
        self.stats = {"reference_recomputed": 0, "ptx_cache_hits": 0, "baseline_cache_hits": 0,
                      "compare_elsewhere": 0, "rejudged_alone": 0, "precompiled": 0, "precompile_failed": 0,
                      "precompile_late": 0, "precompile_skipped": 0}
        # GPU evaluations share this; one judged again alone after running out of GPU memory
        # beside the others takes it exclusively (see `_oom_beside_others`).
        self._alone = GpuLock()
        self._spill_dir: str | None = None
        self._spills = itertools.count()
        if gpu_memory_budget_mb is not None and not gpu_memory_budget_mb > 0:
            raise ValueError(f"gpu_memory_budget_mb must be > 0, got {gpu_memory_budget_mb}")
        self.gpu_memory_budget_mb = gpu_memory_budget_mb
        if not host_memory_multiple >= 0:
            raise ValueError(f"host_memory_multiple must be >= 0, got {host_memory_multiple}")
        self.host_memory_multiple = float(host_memory_multiple)
        self._budgets: dict[int, MemoryBudget] = {}
        self._footprints: dict[tuple[str, int], dict[str, Any]] = {}
        self.stats.update({"memory_waited": 0, "memory_alone": 0, "footprint_estimated": 0,
                           "footprint_unknown": 0})
        self.closed = False
        self._running: weakref.WeakSet[_Run] = weakref.WeakSet()   # for `in_flight`
        _LIVE.add(self)

    def spill_path(self) -> str | None:
        """A fresh file name for a candidate worker's outputs (see `codec`): in a private folder, on
        /dev/shm where there is one; None (outputs travel inline) if no folder can be made."""
        with self._lock:
            if self._spill_dir is None:
                base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
                remove_stale_spill_dirs(base or tempfile.gettempdir())
                try:
                    self._spill_dir = tempfile.mkdtemp(prefix=f"{SPILL_PREFIX}{os.getpid()}-", dir=base)
                except OSError:
                    return None
                # also when the evaluator is dropped without close(), or at exit
                weakref.finalize(self, shutil.rmtree, self._spill_dir, True)
            return os.path.join(self._spill_dir, f"{next(self._spills)}.bin")

    # -- devices -----------------------------------------------------------------------------
    @property
    def devices(self) -> list[int]:
        """GPU indices the cuda backend spreads over (resolved on first use)."""
        with self._lock:
            if self._devices is None:
                n = cuda_device_count()
                self._devices = list(range(n)) if n else [0]
            return list(self._devices)

    def _device_share(self, role: str, device: int | None) -> int:
        """Pool size of `role` on `device` (None: the CPU pools)."""
        total = {"candidate": self.workers, "reference": self.reference_workers, "ptx": self.ptx_workers}[role]
        if device is None:
            return total
        devs = self.devices
        return split_counts(total, len(devs))[devs.index(device)]

    def gpu_lock(self, device: int) -> GpuLock:
        """The lock of one GPU (shared for correctness runs, exclusive for timing)."""
        with self._lock:
            if device not in self._gpu_locks:
                self._gpu_locks[device] = GpuLock(self.gpu_lock_policy)
            return self._gpu_locks[device]

    def _pick_device(self) -> int:
        """The GPU with the fewest evaluations in flight (ties: the lowest index)."""
        devs = self.devices
        with self._lock:
            d = min(devs, key=lambda x: (self._inflight.get(x, 0), devs.index(x)))
            self._inflight[d] = self._inflight.get(d, 0) + 1
            return d

    def memory_budget(self, device: int, total_bytes: int | None = None) -> MemoryBudget | None:
        """GPU `device`'s `MemoryBudget`, made on first use from `gpu_memory_budget_mb` or from the
        GPU's `total_bytes` (as a worker reports it); None while neither is known."""
        with self._lock:
            b = self._budgets.get(device)
            if b is None:
                if self.gpu_memory_budget_mb is not None:
                    n = int(self.gpu_memory_budget_mb * 2**20)
                elif total_bytes:
                    keep = int(float(os.environ.get("KERNELGYM_GPU_CACHE_MB", 1024)) * 2**20)
                    workers = split_counts(self.workers, len(self._devices or [device]))[0] + \
                        split_counts(self.reference_workers, len(self._devices or [device]))[0]
                    n = gpu_budget_bytes(int(total_bytes), workers, keep)
                else:
                    return None
                b = self._budgets[device] = MemoryBudget(n)
            return b

    def gpu_memory(self) -> dict[int, dict[str, int]]:
        """Per GPU: its budget, the bytes reserved now and at most, and how many evaluations waited
        for memory or ran alone (over the whole budget)."""
        with self._lock:
            budgets = sorted(self._budgets.items())
        return {d: {"budget": b.budget, "used": b.used, "peak_used": b.peak_used, "waited": b.waited,
                    "alone": b.alone} for d, b in budgets}

    def _done_device(self, device: int) -> None:
        with self._lock:
            self._inflight[device] = max(0, self._inflight.get(device, 0) - 1)

    # -- pools -------------------------------------------------------------------------------
    def pool(self, role: str, backend: str, device: int | None = None) -> RolePool:
        """The pool of `role` workers for `backend` (on the cuda backend: for GPU `device`, default the
        first of `devices`)."""
        if role not in ("candidate", "reference", "ptx"):
            raise ValueError(f"unknown worker role {role!r}")
        if backend == BACKEND_CUDA and role != "ptx":
            device = self.devices[0] if device is None else int(device)
            if device not in self.devices:
                raise ValueError(f"GPU {device} is not one of this evaluator's devices {self.devices}")
        else:
            device = None
        key = Role(role, backend, device, self.os_sandbox)
        size = self._device_share(role, device)
        frac = None
        if backend == BACKEND_CUDA and device is not None:
            # A reference worker runs the task, whose footprint the GPU's memory budget admits; a
            # candidate worker's cap is raised per evaluation to its footprint (candidate.set_gpu_limit).
            frac = self.gpu_memory_fraction or (0.9 if role == "reference" else
                                                min(0.9, max(0.05, 2.0 / self._device_share("candidate", device))))
        limit = self.reference_memory_limit_mb if role == "reference" else self.memory_limit_mb
        with self._lock:
            if self.closed:
                raise RuntimeError("Evaluator is closed")
            if key not in self._pools:
                self._pools[key] = RolePool(key, size, limit, frac)
            return self._pools[key]

    def warm(self, backend: str = BACKEND_AUTO) -> None:
        """Start every worker the backend uses now (otherwise they start on first use)."""
        backend = resolve_backend(backend)
        roles = ["reference", "candidate"] + (["ptx"] if backend == BACKEND_INTERPRET and self.ptx_check else [])
        devs: list[int | None] = list(self.devices) if backend == BACKEND_CUDA else [None]
        pools = [self.pool(r, backend, d) for r in roles for d in (devs if r != "ptx" else [None])]
        got = self._precompile_pool() if backend == BACKEND_CUDA else None
        if got is not None:
            got[0].warm()   # they import torch while the workers do
        with ThreadPoolExecutor(len(pools)) as ex:
            list(ex.map(lambda p: p.warm(), pools))

    def worker_pids(self) -> list[int]:
        with self._lock:
            return [pid for p in self._pools.values() for pid in p.pids()]

    def workers_started(self) -> dict[str, int]:
        """Worker processes started so far per role (first starts and replacements), for soak tests."""
        with self._lock:
            pools = list(self._pools.items())
        out: dict[str, int] = {}
        for role, pool in pools:
            out[role.name] = out.get(role.name, 0) + pool.started
        if self._precompiler is not None:
            out["precompile"] = self._precompiler.started
        return out

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by the live workers of each role ("candidate", "reference",
        "ptx", "precompile"), their subprocesses included; a worker replaced since takes its share
        with it."""
        with self._lock:
            pools = list(self._pools.items())
        out: dict[str, float] = {}
        for role, pool in pools:
            out[role.name] = out.get(role.name, 0.0) + sum(tree_cpu_seconds(pid) for pid in pool.pids())
        if self._precompiler is not None:
            out["precompile"] = sum(tree_cpu_seconds(pid) for pid in self._precompiler.pids())
        return out

    def _locks_by_gpu(self) -> list[tuple[int, GpuLock]]:
        with self._lock:
            return sorted(self._gpu_locks.items())

    def gpu_occupancy(self) -> dict[int, dict[str, float]]:
        """Per GPU, the seconds its lock has spent exclusive (timing), draining (a timing waits for
        shared holders), shared and idle since it was made (`GpuLock.occupancy`)."""
        return {d: lock.occupancy() for d, lock in self._locks_by_gpu()}

    def gpu_exclusive_spans(self, since: float = 0.0) -> dict[int, list[tuple[float, float]]]:
        """Per GPU, the (start, end) `time.perf_counter` seconds of its timings' exclusive holds that
        ended after `since` (`GpuLock.exclusive_spans`)."""
        return {d: lock.exclusive_spans(since) for d, lock in self._locks_by_gpu()}

    def gpu_capability(self, device: int) -> tuple[int, int] | None:
        """GPU `device`'s compute capability, as its started workers report it (None before any has
        started: the parent itself never initialises CUDA)."""
        with self._lock:
            pools = [p for r, p in self._pools.items() if r.backend == BACKEND_CUDA and r.device == device]
        for p in pools:
            cap = (p.ready_info() or {}).get("capability")
            if isinstance(cap, list) and len(cap) == 2:
                return int(cap[0]), int(cap[1])
        return None

    def precompile(self, reference_src: str, code: str, device: int, mode: str, seed: int) -> Future | None:
        """Start compiling `code`'s kernels on a CPU process for GPU `device`'s target (a future of the
        `Precompiler.precompile` report), or None: off, or the target not known yet (no worker of
        that GPU has started)."""
        cap = self.gpu_capability(device) if self.precompile_workers else None
        got = self._precompile_pool() if cap is not None else None
        if got is None:
            return None
        pre, threads = got
        arch = cap[0] * 10 + cap[1]
        return threads.submit(pre.precompile, reference_src, code, arch, mode=mode, seed=seed)

    def _precompile_pool(self) -> tuple[Any, ThreadPoolExecutor] | None:
        """The precompile processes and the threads that feed them, made on first use (None: off or closed)."""
        if not self.precompile_workers:
            return None
        from kernelgym.evaluation.precompile import Precompiler

        with self._lock:
            if self.closed:
                return None
            if self._precompiler is None:
                self._precompiler = Precompiler(self.precompile_workers, memory_limit_mb=self.memory_limit_mb,
                                                timeout=self.timeout, os_sandbox=self.os_sandbox)
                self._precompile_threads = ThreadPoolExecutor(self.precompile_workers,
                                                              thread_name_prefix="kernelgym-precompile")
            return self._precompiler, self._precompile_threads

    def clear_caches(self) -> None:
        """Forget cached baselines and ptx results (e.g. to re-time a baseline)."""
        with self._lock:
            self._baselines.clear()
            self._ptx_cache.clear()

    def close(self) -> None:
        """Shut every worker down (idempotent); no worker process outlives this call."""
        with self._lock:
            self.closed = True
            pools = list(self._pools.values())
            self._pools.clear()
        for p in pools:
            p.shutdown()
        with self._lock:
            pre, threads = self._precompiler, self._precompile_threads
            self._precompiler = self._precompile_threads = None
        if threads is not None:
            threads.shutdown(wait=False, cancel_futures=True)
        if pre is not None:
            pre.close()
        with self._lock:
            spill, self._spill_dir = self._spill_dir, None
        if spill:
            shutil.rmtree(spill, ignore_errors=True)

    def abort(self) -> None:
        """Kill every worker at once (no polite exit request, no waiting for a busy worker), then
        close: for an interrupted caller (Ctrl-C). Evaluations in flight end with a failure verdict."""
        with self._lock:
            pools = list(self._pools.values())
        for p in pools:
            for pid in p.pids():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
        self.close()

    def in_flight(self) -> list[tuple[str, float]]:
        """(phase, seconds since it began) of each evaluation running now, oldest first: what a
        caller shows while it waits (phase names as in ``verdict.timings['phases_s']``)."""
        now = time.monotonic()
        return [(r.phase_now[0], now - r.phase_now[1]) for r in sorted(list(self._running), key=lambda r: r.t0)]

    def __enter__(self) -> Evaluator:  # noqa: PYI034 - subclasses are not a use case
        return self

    # A pool of worker processes is a shared resource: copying it (gymnasium deep-copies env kwargs
    # in check_env and env.spec.make) must hand back the same pool, not fail or start another.
    def __copy__(self) -> Evaluator:
        return self

    def __deepcopy__(self, memo: dict) -> Evaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- API ---------------------------------------------------------------------------------
    def evaluate(self, reference: Reference, candidate: str, backend: str = BACKEND_AUTO, mode: str = MODE_STRICT, *,
                 seed: int | None = None, trials: int = 3, timeout: float | None = None,
                 task_id: str | None = None, skip_static_guards: bool | None = None) -> Verdict:
        """Judge one candidate; never raises for anything the candidate or reference does.

        `skip_static_guards` overrides the evaluator's setting for this call (sandbox tests only).
        """
        t0 = time.perf_counter()
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        backend = resolve_backend(backend)
        trials = max(3, int(trials))
        seed = random.SystemRandom().getrandbits(62) if seed is None else int(seed)

        def new_run() -> _Run:
            r = _Run(self, backend, mode, seed, trials, float(timeout or self.timeout))
            if skip_static_guards is not None:
                r.skip_static = skip_static_guards
            self._running.add(r)
            return r

        run = new_run()
        v = self._go(run, reference, candidate, task_id, "shared")
        if _oom_beside_others(v):
            # Other evaluations' memory may be why: judge it again with the GPU to itself (same
            # seed), so a neighbour's footprint never becomes this candidate's verdict.
            first, run = v, new_run()
            v = self._go(run, reference, candidate, task_id, "exclusive")
            self.stats["rejudged_alone"] += 1
            v.notes.append("judged again alone: the first run ran out of GPU memory beside other evaluations "
                           f"({first.error[:200]})")
        if v.status != "ok" and not v.reasons:
            # Every failure carries a machine-readable reason; a path that named none still says
            # which status it is, so counting reasons never misses a verdict.
            v.reasons.append(f"{v.status}:unclassified")
        v.duration_s = round(time.perf_counter() - t0, 4)
        phases = {k: round(x, 4) for k, x in run.phases.items()}
        phases["total"] = v.duration_s
        v.timings = {**(v.timings or {}), "phases_s": phases}
        return v.refresh_components()

    def _go(self, run: _Run, reference: Reference, candidate: str, task_id: str | None, alone: str) -> Verdict:
        hold = self._alone.hold(alone) if run.backend == BACKEND_CUDA else contextlib.nullcontext()
        try:
            with hold:
                return run.go(reference, candidate, task_id)
        except Exception as exc:  # noqa: BLE001 - a pipeline bug still yields a verdict
            import traceback

            v = run.verdict("runtime_error", f"internal evaluator error: {type(exc).__name__}: {exc}")
            v.reasons.append("internal:error")
            v.notes.append(traceback.format_exc(limit=5)[-1500:])
            return v
        finally:
            self._running.discard(run)

    def evaluate_batch(self, pairs: Sequence[tuple[Reference, str]], backend: str = BACKEND_AUTO, mode: str = MODE_STRICT,
                       cluster: str | None = None, *, seed: int | None = None, trials: int = 3,
                       timeout: float | None = None) -> list[Verdict]:
        """Evaluate many (reference, candidate) pairs in parallel over the pools, in input order.

        With `seed` set, pair i uses a seed derived from (seed, i), so a batch is reproducible.
        """
        kind, _ = parse_cluster(cluster)  # None: KERNELGYM_CLUSTER decides
        if kind != "local":
            return remote_batch(kind)(cluster, pairs, backend, mode, seed=seed, trials=trials, timeout=timeout,
                                      evaluator=self)
        backend = resolve_backend(backend)
        pairs = list(pairs)
        seeds = [None if seed is None else trial_seed(seed, 1000 + i) for i in range(len(pairs))]
        # Enough threads that every pool stage (reference, precompile, candidate, ptx) has evaluations queued.
        extra = self.ptx_workers if backend == BACKEND_INTERPRET and self.ptx_check else \
            self.precompile_workers if backend == BACKEND_CUDA else 0
        n_threads = max(1, min(len(pairs), self.workers + self.reference_workers + extra))

        def one(i: int) -> Verdict:
            ref, cand = pairs[i]
            return self.evaluate(ref, cand, backend, mode, seed=seeds[i], trials=trials, timeout=timeout)

        with ThreadPoolExecutor(n_threads, thread_name_prefix="kernelgym-eval") as ex:
            return list(ex.map(one, range(len(pairs))))


_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
_TRIED = re.compile(r"Tried to allocate ([\d.]+) (B|KiB|MiB|GiB|TiB)")
_TOTAL = re.compile(r"total capacity of ([\d.]+) (B|KiB|MiB|GiB|TiB)")


def remove_stale_spill_dirs(base: str) -> list[str]:
    """Remove output folders (`Evaluator.spill_path`) left in `base` by evaluator processes that are
    gone (killed before they could clean up; on /dev/shm they hold memory until a reboot)."""
    removed = []
    try:
        names = os.listdir(base)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(SPILL_PREFIX):
            continue
        pid = name[len(SPILL_PREFIX):].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue                      # its process still runs
        except ProcessLookupError:
            pass
        except OSError:
            continue                      # someone else's live process
        shutil.rmtree(os.path.join(base, name), ignore_errors=True)
        removed.append(name)
    return removed


def _oom_beside_others(v: Verdict) -> bool:
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


_LIVE: weakref.WeakSet[Evaluator] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for ev in list(_LIVE):
        ev.close()


class _Run:
    """One evaluation's pipeline state."""

    def __init__(self, ev: Evaluator, backend: str, mode: str, seed: int, trials: int, timeout: float):
        self.ev, self.backend, self.mode, self.seed, self.trials, self.timeout = ev, backend, mode, seed, trials, timeout
        self.device = "cuda" if backend == BACKEND_CUDA else "cpu"
        self.gpu_index: int | None = None
        self.versions = _versions()
        self.device_name = ""
        self.notes: list[str] = []
        self.task_id: str | None = None
        self.trial_seeds: list[int] = []
        self.tolerances: dict[str, Any] = {}
        self.skip_static = ev.skip_static_guards
        self.phases: dict[str, float] = {}
        self.phase_lock = threading.Lock()
        self.t0 = time.monotonic()
        self.phase_now: tuple[str, float] = ("format", self.t0)   # shown by `Evaluator.in_flight`
        self.aliases_input = False
        # The reference outputs of this evaluation live in one reference worker's store under `key`.
        self.ref_src = ""
        self.key = ""
        self.ref_worker: Worker | None = None
        self.dropped = False
        self.spills: list[str] = []   # the output files of this evaluation, removed at its end
        self.host_bytes: int | None = None   # the task's host bytes (sets the workers' memory limits)
        self.reservation: Reservation | None = None   # the GPU memory this evaluation holds
        self.footprint: dict[str, Any] = {}

    def _spill(self, w: Worker | None = None) -> dict[str, str]:
        """The request field naming a new file for the candidate worker's outputs (or none): in the
        worker's own output folder, the only one its OS sandbox lets it write to, when it has one."""
        path = (w.output_path() if w is not None and getattr(w, "output_dir", None) else None) \
            or self.ev.spill_path()
        if path is None:
            return {}
        self.spills.append(path)
        return {"spill": path}

    @contextlib.contextmanager
    def _ph(self, name: str) -> Iterator[None]:
        """Add the wall time of the block to phase `name` (reported in timings['phases_s'])."""
        t = time.perf_counter()
        before, self.phase_now = self.phase_now, (name, time.monotonic())
        try:
            yield
        finally:
            self._add(name, time.perf_counter() - t)
            self.phase_now = before

    def _add(self, name: str, seconds: float) -> None:
        if seconds:
            with self.phase_lock:   # the final comparison and the candidate's end run side by side
                self.phases[name] = self.phases.get(name, 0.0) + seconds

    def _req(self, w: Worker, msg: dict[str, Any], timeout: float, phase: str, raw: bool = False,
             lock_phase: str = "gpu_lock_wait") -> dict[str, Any]:
        """One worker request, timed as `phase`; transport time (encode, send, decode) also as 'ipc',
        time spent waiting for the GPU lock as `lock_phase` (and not as `phase`). With `raw`, the
        reply's tensors stay bytes for relaying, written to a spill file when one can be made."""
        w.last_ipc_s = w.lock_wait_s = 0.0
        gpu = self.ev.gpu_lock(self.gpu_index) if self.gpu_index is not None else None
        if raw:
            msg = {**msg, **self._spill(w)}
        t = time.perf_counter()
        self.phase_now = (phase, time.monotonic())
        try:
            return w.request(msg, timeout, gpu=gpu, raw_tensors=raw, spill=msg.get("spill"),
                             memory_limit=self._host_limit(w))
        finally:
            self._add(phase, time.perf_counter() - t - w.lock_wait_s)
            self._add(lock_phase, w.lock_wait_s)
            self._add("ipc", w.last_ipc_s)

    def _start(self, w: Worker, phase: str) -> dict[str, Any]:
        with self._ph(phase):
            return w.wait_ready()

    def _await_precompile(self, pre: Future) -> None:
        """Before the candidate worker is taken: wait (at most PRECOMPILE_WAIT_S) for a precompile
        that is running. One still queued behind others is dropped (the worker compiles instead), so
        a backlog of precompiles never holds an evaluation up; one that fails changes nothing else."""
        with self._ph("precompile_wait"):
            if pre.cancel():
                stat = "precompile_skipped"
            else:
                try:
                    rep = pre.result(timeout=PRECOMPILE_WAIT_S)
                    stat = "precompiled" if rep.get("ok") else "precompile_failed"
                except TimeoutError:
                    stat = "precompile_late"
                except Exception:  # noqa: BLE001 - e.g. the evaluator closed under it
                    stat = "precompile_failed"
        with self.ev._lock:
            self.ev.stats[stat] += 1

    def verdict(self, status: str, error: str = "", **kw: Any) -> Verdict:
        return Verdict(status=status, error=error[:4000], backend=self.backend, mode=self.mode,
                       device=self.device_name, seeds=[self.seed, *self.trial_seeds], task_id=self.task_id,
                       versions=dict(self.versions), notes=list(self.notes), tolerances=dict(self.tolerances), **kw)

    def go(self, reference: Reference, candidate: str, task_id: str | None) -> Verdict:
        # Reference.
        if isinstance(reference, Task):
            ref_src, self.task_id = reference.source, task_id or reference.id
        else:
            ref_src = reference
            try:
                check_source(ref_src, "<reference>")
            except TaskFormatError as exc:
                self.task_id = task_id
                return self.verdict("invalid_task", f"reference is not a KernelBench-format task: {exc.problem}",
                                    reasons=["task:format"])
            self.task_id = task_id or f"task-{source_hash(ref_src)}"
        # Candidate format.
        try:
            with self._ph("format"):
                ex = extract_code(candidate)
                self.notes += ex.notes
                check_format(ex.code)
        except FormatError as exc:
            return self.verdict("format_error", str(exc), reasons=["format:candidate"])
        code = ex.code
        # Static guards: nothing runs when they fire.
        if not self.skip_static:
            with self._ph("static_guards"):
                findings = static_check(code, self.mode)
            if findings:
                return self.verdict("hack_detected", "; ".join(f"{f.name}: {f.detail}" for f in findings)[:2000],
                                    reasons=_unique(f.reason for f in findings), compiled=False)
        else:
            self.notes.append("static guards skipped (sandbox testing mode)")
        if self.backend != BACKEND_CUDA:
            return self._run(ref_src, code)
        self.gpu_index = self.ev._pick_device()
        try:
            return self._run(ref_src, code)
        finally:
            self.ev._done_device(self.gpu_index)

    # -- stages ------------------------------------------------------------------------------
    def _pool(self, role: str) -> RolePool:
        return self.ev.pool(role, self.backend, self.gpu_index)

    def _run(self, ref_src: str, code: str) -> Verdict:
        if self.backend != BACKEND_CUDA:
            return self._run_admitted(ref_src, code)
        n_ref = self.trials + 1
        fp = self._footprint(ref_src, n_ref)
        budget = self.ev.memory_budget(self.gpu_index, fp.get("gpu_total_bytes"))
        if budget is None:
            return self._run_admitted(ref_src, code)
        need = fp.get("gpu_bytes") or int(budget.budget * UNKNOWN_FOOTPRINT_SHARE)
        t = time.perf_counter()
        with self._ph("memory_wait"):
            budget.acquire(need)
        self.reservation = Reservation(budget, need)
        stat = "memory_alone" if need > budget.budget else "memory_waited" if time.perf_counter() - t > 0.01 else None
        if stat:
            with self.ev._lock:
                self.ev.stats[stat] += 1
        if need > budget.budget:
            self.notes.append(f"ran alone on its GPU: footprint {need / 2**30:.1f} GiB over the GPU's memory "
                              f"budget of {budget.budget / 2**30:.1f} GiB")
        try:
            return self._run_admitted(ref_src, code)
        finally:
            budget.release(self.reservation.bytes)

    def _footprint(self, ref_src: str, n_ref: int) -> dict[str, Any]:
        """The task's sizes (cached per task): measured once it has run here, else the reference
        worker's meta-device estimate (`reference.estimate_footprint`); ``gpu_bytes`` is the
        evaluation's GPU footprint, absent when unknown. Sets this run's host-memory limits."""
        key = (source_hash(ref_src), n_ref)
        with self.ev._lock:
            fp = self.ev._footprints.get(key)
        if fp is None:
            pool = self._pool("reference")
            with self._ph("reference_wait"):
                w = pool.acquire()
            recycle = False
            try:
                self._start(w, "reference_worker_start")
                est = self._req(w, {"op": "footprint", "source": ref_src}, self.timeout, "footprint")
            except WorkerFailure as f:
                recycle, est = True, {"status": "error", "error": str(f)}
            finally:
                pool.release(w, recycle=recycle or w.dead)
            fp = {"gpu_total_bytes": est.get("gpu_total_bytes"), "method": "unknown"}
            if est.get("status") == "ok":
                sizes = {k: int(est[k]) for k in ("weight_bytes", "input_bytes", "output_bytes", "forward_peak_bytes")}
                fp.update(sizes, method="meta", host_bytes=host_task_bytes(sizes, n_ref),
                          gpu_bytes=evaluation_footprint(estimated_reference_peak(sizes, n_ref),
                                                         sizes["output_bytes"], self.trials))
                stat = "footprint_estimated"
            else:
                fp["error"] = str(est.get("error", ""))[:300]
                stat = "footprint_unknown"
            with self.ev._lock:
                self.ev._footprints.setdefault(key, fp)
                self.ev.stats[stat] += 1
        self.footprint = fp
        self.host_bytes = fp.get("host_bytes")
        return fp

    def _host_limit(self, w: Worker) -> int | None:
        """`w`'s resident-memory limit for this task's request (None: the worker's own): see Evaluator."""
        if not self.host_bytes or w.role.name not in ("reference", "candidate"):
            return None
        base_mb = self.ev.reference_memory_limit_mb if w.role.name == "reference" else self.ev.memory_limit_mb
        avail = meminfo_bytes("MemAvailable")
        return host_memory_limit(int(base_mb * 2**20) if base_mb else None, self.host_bytes,
                                 None if avail is None else avail + rss_bytes(w.pid), self.ev.host_memory_multiple)

    def _measured(self, ref: dict[str, Any], n_ref: int) -> None:
        """The reference build measured its peak: the task's footprint from now on, and this run's share."""
        peak = ref.get("gpu_peak_bytes")
        if not isinstance(peak, int) or self.reservation is None:
            return
        need = evaluation_footprint(peak, int(ref.get("output_bytes") or 0), self.trials)
        # never shrunk mid-run: the meta estimate may see temporaries the build freed
        if need > self.reservation.bytes:
            self.reservation.resize(need)
        key = (source_hash(self.ref_src), n_ref)
        with self.ev._lock:
            fp = self.ev._footprints.setdefault(key, {})
            fp.update(gpu_bytes=need, measured_peak_bytes=peak, method="measured")

    def _run_admitted(self, ref_src: str, code: str) -> Verdict:
        n_ref = self.trials + (1 if self.backend == BACKEND_CUDA else 0)  # +1: the post-timing trial
        # Cold pools: let the candidate (and ptx) workers import torch while the reference runs.
        self._pool("candidate").prestart()
        if self.backend == BACKEND_INTERPRET and self.ev.ptx_check:
            self.ev.pool("ptx", BACKEND_INTERPRET).prestart()
        self.ref_src = ref_src
        self.key = f"{source_hash(ref_src)}:{self.seed}:{n_ref}:{self.mode}:{os.getpid()}:{next(self.ev._keys)}"
        pre = self.ev.precompile(ref_src, code, self.gpu_index, self.mode, self.seed) \
            if self.gpu_index is not None else None
        try:
            ref = self._reference_job(ref_src, n_ref)
            if isinstance(ref, Verdict):
                return ref
            self._measured(ref, n_ref)
            if pre is not None:
                self._await_precompile(pre)
            self.trial_seeds = list(ref["seeds"])
            for outs in ref["outputs"]:
                for o in outs:
                    self.tolerances[o["dtype"]] = tolerance_for(o["dtype"])
            baseline = ref.pop("_baseline", None)
            self.aliases_input = bool(ref.get("aliases_input"))

            pool = self._pool("candidate")
            with self._ph("candidate_wait"):
                w = pool.acquire()
            recycle = False
            launches: list[dict[str, Any]] = []
            try:
                v, recycle, launches = self._candidate(w, code, ref, baseline)
            except WorkerFailure as f:
                v, recycle = self._failure_verdict(f), True
            finally:
                with self._ph("worker_restart" if recycle or w.dead else "release"):
                    pool.release(w, recycle=recycle or w.dead)
        finally:
            if pre is not None:
                pre.cancel()   # not started yet (the reference failed first): not needed any more
            self._forget_reference()
            for path in self.spills:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        if v.status in ("ok", "incorrect") and self.backend == BACKEND_INTERPRET and self.ev.ptx_check and launches:
            v = self._ptx(code, v, launches)
        return v

    def _ref_msg(self, n: int) -> dict[str, Any]:
        return {"key": self.key, "source": self.ref_src, "seed": self.seed, "trials": n, "device": self.device,
                "want_ops": self.mode == MODE_LENIENT, "store_bytes": self.ev.reference_cache_bytes}

    def _reference_job(self, src: str, n: int) -> dict[str, Any] | Verdict:
        pool = self._pool("reference")
        with self._ph("reference_wait"):
            w = pool.acquire()
        recycle = False
        try:
            self._start(w, "reference_worker_start")
            reply = self._req(w, {"op": "reference", **self._ref_msg(n)}, self.timeout, "reference")
            self.versions.update(w.info.get("versions", {}) if w.info else {})
            if reply.get("status") == "bad_output":
                return self.verdict("invalid_task", reply.get("error", ""), reasons=["task:reference_output"])
            if reply.get("status") != "ok":
                recycle = True
                return self.verdict("invalid_task", f"reference failed in {reply.get('stage', '?')}: "
                                    f"{reply.get('error', '')}", reasons=["task:reference_error"])
            reply["_n"] = n
            if reply.get("stored"):
                self.ref_worker = w
                w.claims += 1
            if self.backend == BACKEND_CUDA:
                with self._ph("baseline"):
                    reply["_baseline"] = self._baselines(w, src, reply)
            return reply
        except WorkerFailure as f:
            recycle = True
            what = {"timeout": "timed out", "memory": "ran out of memory", "crash": "crashed"}[f.kind]
            return self.verdict("invalid_task", f"reference {what}: {f}" + (f"\n{f.stderr}" if f.stderr else ""),
                                reasons=["task:reference_" + f.kind])
        finally:
            if not w.dead and not recycle:
                try:
                    self._req(w, {"op": "end_reference"}, self.timeout, "reference")
                except WorkerFailure:
                    recycle = True
            with self._ph("worker_restart" if recycle else "release"):
                pool.release(w, recycle=recycle)

    def _compare(self, ref: dict[str, Any], items: list[tuple[int, Any]], drop: bool) -> list[TrialResult]:
        """Candidate outputs judged against the reference in a reference worker (the one that stored
        them when it is still there, else any: it rebuilds them from the seed)."""
        pool = self._pool("reference")
        w = None
        with self._ph("compare_wait"):
            if self.ref_worker is not None:
                w = pool.acquire_worker(self.ref_worker, timeout=self.timeout)
            if w is None:
                self.ev.stats["compare_elsewhere"] += 1
                w = pool.acquire()
        recycle = False
        try:
            self._start(w, "reference_worker_start")
            reply = self._req(w, {"op": "compare", **self._ref_msg(ref["_n"]), "items": [[t, o] for t, o in items],
                                  "drop": drop}, self.timeout, "compare")
        except WorkerFailure as f:
            recycle = True
            raise _CompareFailed(f"the reference worker failed while comparing the outputs: {f}") from None
        finally:
            if w is self.ref_worker and (drop or recycle):
                self.ref_worker, self.dropped = None, True
                w.claims = max(0, w.claims - 1)
            pool.release(w, recycle=recycle or w.dead)
        if reply.get("status") != "ok":
            raise _CompareFailed(str(reply.get("error", "comparison failed")))
        if reply.get("recomputed"):
            self.ev.stats["reference_recomputed"] += 1
        return [TrialResult(**r) for r in reply["results"]]

    def _forget_reference(self) -> None:
        """Drop the stored reference if nothing compared it with drop (a failure before the end)."""
        w, self.ref_worker = self.ref_worker, None
        if w is None or self.dropped:
            return
        w.claims = max(0, w.claims - 1)
        pool = self._pool("reference")
        got = pool.acquire_worker(w, timeout=0)
        if got is None:
            return  # busy or gone: its store's LRU bound frees it later
        try:
            self._req(got, {"op": "drop", "key": self.key}, self.timeout, "release")
        except WorkerFailure:
            pool.release(got, recycle=True)
        else:
            pool.release(got)

    def _baselines(self, w: Worker, src: str, ref: dict[str, Any]) -> dict[str, Any]:
        name = (w.info or {}).get("device", "cuda")
        dtype = (ref.get("input_dtypes") or ["none"])[0]
        key = (source_hash(src), f"{self.gpu_index}:{name}", dtype)
        ref["_baseline_key"] = key
        with self.ev._lock:
            lock = self.ev._baseline_locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self.ev._baselines:
                try:
                    # The worker holds the GPU lock itself: none while torch.compile compiles,
                    # exclusive while timing.
                    self._req(w, {"op": "prepare_baseline"}, self.ev.baseline_timeout, "baseline")
                    res = self._req(w, {"op": "baseline", "bench": self.ev.bench}, self.ev.baseline_timeout,
                                    "baseline", lock_phase="timing_wait")
                except WorkerFailure as f:
                    res = {"status": "error", "error": f"baseline worker failed: {f}"}
                if res.get("status") != "ok":
                    return {"error": res.get("error", "baseline failed")}  # not cached: retried next time
                self.ev._baselines[key] = res
            else:
                self.ev.stats["baseline_cache_hits"] += 1
            return self.ev._baselines[key]

    def _check_inputs(self, ref: dict[str, Any], reply: dict[str, Any]) -> str:
        """Why the candidate worker's seeded inputs differ from the reference's ('' when equal)."""
        mine, theirs = ref.get("fingerprints") or {}, reply.get("fingerprints")
        if theirs is None:
            return ""
        for part in ("init_inputs", "state_dict"):
            if mine.get(part) != theirs.get(part):
                return f"get_init_inputs() / Model weights differ between two builds from seed {self.seed}"
        for t, (a, b) in enumerate(zip(mine.get("trials", []), theirs.get("trials", []))):
            if a != b:
                return f"get_inputs() gave different tensors for the same seed (trial {t})"
        return ""

    def _candidate(self, w: Worker, code: str, ref: dict[str, Any],
                   baseline: dict | None) -> tuple[Verdict, bool, list[dict[str, Any]]]:
        info = self._start(w, "candidate_worker_start")
        self.device_name = info.get("device", "")
        self.versions.update(info.get("versions", {}))
        reply = self._req(w, {
            "op": "candidate", "source": code, "mode": self.mode, "device": self.device, "task": self.ref_src,
            "seed": self.seed, "trial_seeds": self.trial_seeds, "n_check": self.trials,
            "reference_ops": ref.get("ops"), "reference_aliases_input": self.aliases_input,
            "gpu_limit_bytes": self.reservation.bytes if self.reservation else None,
        }, self.timeout, "candidate", raw=True)
        findings = list(reply.get("findings", []))
        kernels = list(reply.get("kernels", []))
        status = reply.get("status")
        results: list[TrialResult] = []
        reasons: list[str] = list(reply.get("reasons", []))
        error = str(reply.get("error", ""))
        outs = list(reply.get("outputs", []))[: self.trials]
        problem = self._check_inputs(ref, reply)
        if problem:
            self._end(w)
            return (self.verdict("invalid_task", f"the task's inputs are not a function of the seed: {problem}",
                                 reasons=["task:nondeterministic_inputs"]), True, [])
        if outs and status == "ran":
            try:
                results = self._compare(ref, list(enumerate(outs)), drop=False)
            except _CompareFailed as exc:
                status, error = "crash", str(exc)
                reasons.append("sandbox:crash")
        timings: dict[str, Any] = {}
        speedup = speedup_c = None
        ended: dict[str, Any] | None = None
        if status == "ran":
            bad = [r for r in results if not r.ok]
            status = "incorrect" if bad or len(results) < self.trials else "ok"
            if bad:
                reasons += _unique(r.reason for r in bad)
                error = bad[0].message
            if status == "ok" and self.backend == BACKEND_CUDA and not _hack(findings):
                status, error, timings, speedup, speedup_c, more, ended = self._time(w, ref, baseline, results)
                reasons += more
        elif status == "internal_error":
            status, error = "runtime_error", f"candidate result could not be returned: {error}"
            reasons.append("internal:candidate_result")
        if ended is None:
            ended = self._end(w)
        findings += ended.get("findings", [])
        tainted = bool(ended.get("tainted")) or bool(reply.get("fatal")) or ended.get("_dead", False)
        findings = _unique_findings(findings)
        hack = _hack(findings)
        if hack:
            reasons = _unique([*(f"guard:{f['name']}" for f in hack), *reasons])
            error = "; ".join(f"{f['name']}: {f['detail']}" for f in hack)[:2000] + (f" | {error}" if error else "")
            status = "hack_detected"
        compiled = status not in ("compile_error",) and reply.get("stage") != "import"
        v = self.verdict(status, error, reasons=_unique(reasons), compiled=compiled,
                         correct=status == "ok", trials=[r.to_dict() for r in results], kernels=kernels,
                         timings=timings, speedup=speedup, speedup_vs_compile=speedup_c)
        # A sticky CUDA error poisons the context: after a failure on the GPU the worker is retired
        # (recycle_on_failure="always") or kept only if a probe kernel still runs ("probe").
        failed_gpu = self.backend == BACKEND_CUDA and status != "ok"
        if failed_gpu and self.ev.recycle_on_failure == "probe" and not ended.get("_dead"):
            failed_gpu = not ended.get("cuda_ok", False)
        # A worker whose probe fails is retired whatever the verdict (e.g. its RNG left unusable).
        failed_gpu = failed_gpu or ended.get("cuda_ok") is False
        recycle = tainted or status == "crash" or failed_gpu or w.dead or w.has_descendants()
        return v, recycle, list(reply.get("launches", []))

    def _time(self, w: Worker, ref: dict[str, Any], baseline: dict | None, results: list[TrialResult]
              ) -> tuple[str, str, dict, float | None, float | None, list[str], dict[str, Any] | None]:
        """Time the candidate, check its final trial and graph replay: (status, error, timings,
        speedup, speedup vs torch.compile, reasons, the `_end` reply when the candidate was ended
        here, else None)."""
        keep = random.SystemRandom().randrange(1 << 30)  # which captured forward the final check replays
        # One request times the candidate and runs the final trial (see candidate.time_candidate).
        reply = self._req(w, {"op": "time", "bench": self.ev.bench, "keep": keep}, self.timeout, "timing",
                          raw=True, lock_phase="timing_wait")
        if reply.get("status") != "timed":
            return reply.get("status", "runtime_error"), reply.get("error", ""), {}, None, None, [], None
        stats = reply["stats"]
        final_s = reply.get("final_s")
        if isinstance(final_s, (int, float)) and 0 <= final_s <= self.phases.get("timing", 0.0):
            self._add("timing", -final_s)
            self._add("final_trial", final_s)
        rep2 = reply.get("final") if isinstance(reply.get("final"), dict) else {}
        if rep2.get("status") != "ran":
            return (rep2.get("status", "runtime_error"), "final trial: " + rep2.get("error", ""), {}, None, None,
                    [], None)
        outs = list(rep2.get("outputs", []))
        # The candidate's part is over: its worker ends it (guard, probe) while the reference worker
        # compares, so the scarcer candidate worker is free sooner.
        ending = self._end_in_background(w)
        try:
            checked = self._compare(ref, [(self.trials, o) for o in outs[:2]], drop=True)
        except _CompareFailed as exc:
            return "crash", str(exc), {}, None, None, ["sandbox:crash"], ending()
        except BaseException:
            ending()   # never release (or kill) the worker while its end request is in flight
            raise
        end = ending()
        if not checked:
            return "runtime_error", "final trial returned no outputs", {}, None, None, [], end
        r = checked[0]
        results.append(r)
        if not r.ok:
            return "incorrect", f"after timing: {r.message}", {"candidate": stats}, None, None, [r.reason], end
        if rep2.get("graph_checked"):
            g = checked[1] if len(checked) > 1 else None
            if g is None or not g.ok:
                why = g.message if g is not None else "no outputs"
                msg = (f"timing_inconsistent: captured forward #{rep2.get('graph_forward')} of the timed CUDA "
                       f"graph, replayed on the final trial's inputs, is wrong: {why}")
                return "hack_detected", msg, {"candidate": stats}, None, None, ["guard:timing_inconsistent"], end
        timings: dict[str, Any] = {"candidate": stats, "device": self.device_name, "gpu": self.gpu_index}
        speedup = speedup_c = None
        if baseline and "eager" in baseline:
            timings["eager"] = baseline["eager"]
            speedup = baseline["eager"]["median_ms"] / max(stats["median_ms"], 1e-9)
        if baseline and "compile" in baseline:
            timings["compile"] = baseline["compile"]
            speedup_c = baseline["compile"]["median_ms"] / max(stats["median_ms"], 1e-9)
        elif baseline and baseline.get("compile_error"):
            timings["compile_error"] = baseline["compile_error"]
        if baseline and baseline.get("error"):
            timings["baseline_error"] = baseline["error"]
        self.notes += timing_method_notes(timings)
        return "ok", "", timings, speedup, speedup_c, [], end

    def _end_in_background(self, w: Worker) -> Callable[[], dict[str, Any]]:
        """Start `_end(w)` on a thread; the returned call waits for its reply (a pipeline error in
        it counts as a dead worker, so the worker is replaced)."""
        box: list[dict[str, Any]] = []

        def run() -> None:
            try:
                box.append(self._end(w))
            except Exception as exc:  # noqa: BLE001
                box.append({"_dead": True, "findings": [], "error": f"{type(exc).__name__}: {exc}"})

        t = threading.Thread(target=run, name="kernelgym-end-candidate", daemon=True)
        t.start()

        def wait() -> dict[str, Any]:
            t.join()
            return box[0]
        return wait

    def _end(self, w: Worker) -> dict[str, Any]:
        if w.dead:
            return {"_dead": True}
        try:
            return self._req(w, {"op": "end_candidate"}, self.timeout, "end_candidate")
        except WorkerFailure as f:
            return {"_dead": True, "findings": [], "error": str(f)}

    def _failure_verdict(self, f: WorkerFailure) -> Verdict:
        status = "timeout" if f.kind == "timeout" else "crash"
        reason = {"timeout": "sandbox:timeout", "memory": "sandbox:memory", "crash": "sandbox:crash"}[f.kind]
        error = f"candidate {f}" + (f"\nstderr: {f.stderr[-1000:]}" if f.stderr else "")
        compiled = f.phase not in ("start", "import")
        return self.verdict(status, error, reasons=[reason], compiled=compiled)

    def _ptx(self, code: str, v: Verdict, launches: list[dict[str, Any]]) -> Verdict:
        key = hashlib.sha256(json.dumps([code, self.mode, launches], sort_keys=True, default=str)
                             .encode()).hexdigest()
        with self.ev._lock:
            hit = self.ev._ptx_cache.get(key)
            if hit is not None:
                self.ev._ptx_cache.move_to_end(key)
                self.ev.stats["ptx_cache_hits"] += 1
        if hit is not None:
            res = {**hit, "cached": True}
        else:
            res = self._ptx_job(code, launches)
        v.ptx = res
        if not res.get("ok"):
            failed = [k for k in res.get("kernels", []) if k.get("ok") is False]
            msg = res.get("error") or "; ".join(f"{k['kernel']}: {k.get('error', '')}" for k in failed)
            v.status, v.compiled, v.correct = "compile_error", False, False
            v.reasons = _unique(["compile:ptx", *v.reasons])
            v.error = f"sm_90 compile check failed: {msg}"[:4000]
        return v

    def _ptx_job(self, code: str, launches: list[dict[str, Any]]) -> dict[str, Any]:
        pool = self.ev.pool("ptx", BACKEND_INTERPRET)
        with self._ph("ptx_wait"):
            w = pool.acquire()
        recycle, cacheable = False, False
        try:
            self._start(w, "ptx_worker_start")
            res = self._req(w, {"op": "ptx", "source": code, "launches": launches, "mode": self.mode}, self.timeout,
                            "ptx")
            recycle = bool(res.get("tainted"))
            cacheable = not recycle and res.get("status") != "internal_error"
        except WorkerFailure as f:
            recycle = True
            res = {"ok": False, "error": f"ptx worker {f}", "kernels": []}
        finally:
            with self._ph("worker_restart" if recycle or w.dead else "release"):
                pool.release(w, recycle=recycle or w.dead)
        res.pop("type", None)
        res.pop("tainted", None)
        if cacheable:
            key = hashlib.sha256(json.dumps([code, self.mode, launches], sort_keys=True, default=str)
                                 .encode()).hexdigest()
            with self.ev._lock:
                self.ev._ptx_cache[key] = dict(res)
                while len(self.ev._ptx_cache) > 4096:
                    self.ev._ptx_cache.popitem(last=False)
        return res


class _CompareFailed(Exception):
    """The comparison itself could not be done (reference worker died, reference not rebuildable)."""


def _hack(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Findings that make the verdict hack_detected: all of them, including early_exit (a SystemExit the
    sandbox caught; os._exit kills the worker instead and stays a crash)."""
    return list(findings)


def _unique(items: Any) -> list[str]:
    out: list[str] = []
    for x in items:
        if x and x not in out:
            out.append(x)
    return out


def _unique_findings(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen, out = set(), []
    for f in findings:
        key = (f.get("name"), f.get("detail"))
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


_DEFAULT: Evaluator | None = None
_DEFAULT_LOCK = threading.Lock()


def default_evaluator() -> Evaluator:
    """The lazily created module-level Evaluator that `evaluate` and `evaluate_batch` use."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None or _DEFAULT.closed:
            _DEFAULT = Evaluator()
        return _DEFAULT
