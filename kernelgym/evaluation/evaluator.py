"""The `Evaluator`: the worker pools, caches and settings that evaluations share, and its API
(`evaluate`, `evaluate_batch`); each evaluation's stages are `pipeline.Run`'s.

Only metadata and the candidate's outputs cross process boundaries; the outputs go from the
candidate worker to the reference worker through a file the parent named (`codec`, "spill"), so
the parent relays a reference to them, never their bytes. On the cuda backend every GPU of the
machine is used (`devices`): workers are pinned to one GPU each, an evaluation runs on the least
loaded GPU, each GPU has its own lock (shared for correctness runs, exclusive for timing; workers
hold it only around GPU work, never while compiling), its own memory budget (`admission`) and its
own baseline cache.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import random
import shutil
import signal
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from kernelgym.evaluation.clusters import parse_cluster, remote_batch
from kernelgym.evaluation.footprint import gpu_budget_bytes, oom_beside_others, reference_over_host_limit
from kernelgym.evaluation.options import EvaluatorOptions
from kernelgym.evaluation.pipeline import Reference, Run
from kernelgym.evaluation.pool import (
    GpuLock,
    MemoryBudget,
    Role,
    RolePool,
    split_counts,
    tree_cpu_seconds,
)
from kernelgym.evaluation.protocol import (
    BACKEND_AUTO,
    BACKEND_CUDA,
    BACKEND_INTERPRET,
    BACKENDS,
    MODE_STRICT,
    MODES,
    SYNC_ENV,
    SYNC_SCHEDULES,
    trial_seed,
)
from kernelgym.evaluation.sandbox import SPILL_PREFIX
from kernelgym.evaluation.stages import Shared
from kernelgym.evaluation.verdict import Verdict
from kernelgym.evaluation.worker import DEFAULT_GPU_CACHE_MB


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


def resolve_backend(backend: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'interpret'."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend == BACKEND_AUTO:
        return BACKEND_CUDA if cuda_available() else BACKEND_INTERPRET
    if backend == BACKEND_CUDA and not cuda_available():
        raise ValueError("backend 'cuda' requested but no CUDA GPU is visible")
    return backend


class Evaluator:
    """Worker pools plus settings; `evaluate` / `evaluate_batch` run the pipeline (`pipeline.Run`)
    on them.

    Settings: an `EvaluatorOptions`, or its fields as keyword arguments (``Evaluator(workers=8,
    timeout=60)``; a lone positional int is `workers`); see `EvaluatorOptions` for each. `options`
    keeps them as given; the attributes of the same names hold the values resolved (default pool
    sizes and limits). Use as a context manager or call `close()`; pools are also shut down at
    interpreter exit.
    """

    def __init__(self, options: EvaluatorOptions | int | None = None, /, **settings: Any):
        from kernelgym.evaluation import sandbox

        if isinstance(options, EvaluatorOptions):
            o = options.replace(**settings) if settings else options
        else:
            if options is not None:   # Evaluator(8): the workers, as before the options existed
                if "workers" in settings:
                    raise TypeError("Evaluator() got multiple values for argument 'workers'")
                settings = {"workers": options, **settings}
            o = EvaluatorOptions(**settings)
        self.options = o
        # Checked first: "require" must refuse before anything starts.
        self.os_sandbox = sandbox.check_mode(o.os_sandbox)
        self.os_sandbox_report = sandbox.probe() if o.os_sandbox != "off" else sandbox.Report(False, why="off")
        if o.os_sandbox == "require" and not self.os_sandbox_report.complete:
            raise RuntimeError(f"os_sandbox='require' but this machine cannot confine candidate code: "
                               f"{self.os_sandbox_report.incomplete_why}")
        if o.os_sandbox == "auto" and not self.os_sandbox_report.complete:
            sandbox.warn_unconfined(self.os_sandbox_report)
        sync = os.environ.get(SYNC_ENV)
        if sync and sync not in SYNC_SCHEDULES:  # else every GPU worker would die at its start
            raise ValueError(f"{SYNC_ENV}={sync!r}: expected one of {sorted(SYNC_SCHEDULES)}")

        self.workers = max(1, o.workers or min(os.cpu_count() or 1, 16))
        self.reference_workers = max(1, o.reference_workers or self.workers // 2)
        self.ptx_workers = max(1, o.ptx_workers or self.workers // 2)
        self.memory_limit_mb = o.memory_limit_mb
        # References also hold torch.compile/inductor state and a CUDA context: more headroom.
        self.reference_memory_limit_mb = o.reference_memory_limit_mb or (
            max(o.memory_limit_mb, 8192) if o.memory_limit_mb else None)
        self.timeout = float(o.timeout)
        self.baseline_timeout = float(o.baseline_timeout)
        self.gpu_memory_fraction = o.gpu_memory_fraction
        self.skip_static_guards = o.skip_static_guards
        self.ptx_check = o.ptx_check
        self.bench = dict(o.bench or {})
        self.recycle_on_failure = o.recycle_on_failure
        self._devices: list[int] | None = [int(d) for d in o.devices] if o.devices is not None else None
        self.gpu_lock_policy = o.gpu_lock_policy
        self.precompile_workers = o.precompile_workers
        self.gpu_memory_budget_mb = o.gpu_memory_budget_mb
        self.host_memory_multiple = float(o.host_memory_multiple)
        self.one_trial_on_gpu = o.one_trial_on_gpu
        self.reference_cache_bytes = int(o.reference_cache_mb * 2**20)
        self._precompiler: Any = None
        self._precompile_threads: ThreadPoolExecutor | None = None
        self._pools: dict[Role, RolePool] = {}
        self._lock = threading.Lock()
        self._gpu_locks: dict[int, GpuLock] = {}
        self._inflight: dict[int, int] = {}
        # Caches and counters of the evaluations (`stats` is its counters), under the same lock.
        self.shared = Shared(lock=self._lock, stats={
            "reference_recomputed": 0, "ptx_cache_hits": 0, "baseline_cache_hits": 0, "compare_elsewhere": 0,
            "rejudged_alone": 0, "precompiled": 0, "precompile_failed": 0, "precompile_late": 0,
            "precompile_skipped": 0, "memory_waited": 0, "memory_alone": 0, "footprint_estimated": 0,
            "footprint_unknown": 0})
        self.stats = self.shared.stats
        # GPU evaluations share this; one judged again alone after running out of GPU memory
        # beside the others takes it exclusively (see `footprint.oom_beside_others`).
        self._alone = GpuLock()
        self._spill_dir: str | None = None
        self._spills = itertools.count()
        self._budgets: dict[int, MemoryBudget] = {}
        self.closed = False
        self._running: weakref.WeakSet[Run] = weakref.WeakSet()   # for `in_flight`
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

    def pick_device(self) -> int:
        """The GPU with the fewest evaluations in flight (ties: the lowest index), counted in flight
        until `done_device`."""
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
                    keep = int(float(os.environ.get("KERNELGYM_GPU_CACHE_MB", DEFAULT_GPU_CACHE_MB)) * 2**20)
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

    def done_device(self, device: int) -> None:
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
        """CPU seconds used so far by the workers of each role ("candidate", "reference", "ptx",
        "precompile"), their subprocesses included: the live ones and those a pool replaced (read
        just before their kill; every interpreted candidate's worker is replaced). A precompile
        process replaced since takes its share with it."""
        with self._lock:
            pools = list(self._pools.items())
        out: dict[str, float] = {}
        for role, pool in pools:
            live = sum(tree_cpu_seconds(pid) for pid in pool.pids())
            out[role.name] = out.get(role.name, 0.0) + live + pool.retired_cpu_s
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
            self.shared.baselines.clear()
            self.shared.ptx_cache.clear()

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

        def new_run() -> Run:
            r = Run(self, backend, mode, seed, trials, float(timeout or self.timeout))
            if skip_static_guards is not None:
                r.skip_static = skip_static_guards
            self._running.add(r)
            return r

        run = new_run()
        v = self._go(run, reference, candidate, task_id, "shared")
        gpu_oom = oom_beside_others(v)
        if gpu_oom or reference_over_host_limit(v):
            # Other evaluations' memory (or the reference worker's from earlier tasks) may be why:
            # judge it again alone (same seed; the failed worker is gone), so a neighbour's
            # footprint never becomes this candidate's verdict nor this task's.
            first, run = v, new_run()
            v = self._go(run, reference, candidate, task_id, "exclusive")
            self.stats["rejudged_alone"] += 1
            why = "ran out of GPU memory beside other evaluations" if gpu_oom else \
                "went over the reference worker's host-memory limit"
            v.notes.append(f"judged again alone: the first run {why} ({first.error[:200]})")
        if v.status != "ok" and not v.reasons:
            # Every failure carries a machine-readable reason; a path that named none still says
            # which status it is, so counting reasons never misses a verdict.
            v.reasons.append(f"{v.status}:unclassified")
        v.duration_s = round(time.perf_counter() - t0, 4)
        phases = {k: round(x, 4) for k, x in run.phases.items()}
        phases["total"] = v.duration_s
        v.timings = {**(v.timings or {}), "phases_s": phases}
        return v.refresh_components()

    def _go(self, run: Run, reference: Reference, candidate: str, task_id: str | None, alone: str) -> Verdict:
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


_LIVE: weakref.WeakSet[Evaluator] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for ev in list(_LIVE):
        ev.close()


_DEFAULT: Evaluator | None = None
_DEFAULT_LOCK = threading.Lock()


def default_evaluator() -> Evaluator:
    """The lazily created module-level Evaluator that `evaluate` and `evaluate_batch` use."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None or _DEFAULT.closed:
            _DEFAULT = Evaluator()
        return _DEFAULT
