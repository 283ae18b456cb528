"""The building blocks of the evaluation pipeline (`pipeline.Run`): what its stages hand each other
(small dataclasses read from worker replies) and how a stage talks to a worker (`Stages`: phase
times, requests, holding a worker of a pool).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from kernelgym.evaluation.pool import (
    Reservation,
    RolePool,
    Worker,
    WorkerFailure,
    host_memory_limit,
    meminfo_bytes,
    rss_bytes,
)
from kernelgym.evaluation.protocol import BACKEND_CUDA
from kernelgym.evaluation.verdict import Verdict


@dataclass
class ReferenceRun:
    """What the reference job reported (`reference.run_reference`), as the later stages read it."""

    trials: int                           # trials built: the candidate's checks (+1 after timing)
    seeds: list[int]                      # each trial's seed
    outputs: list[list[dict[str, Any]]]   # per trial, each output's dtype and shape
    fingerprints: dict[str, Any]          # of the init inputs, weights and each trial's inputs
    ops: dict[str, int] | None            # the torch ops the reference ran (lenient mode)
    aliases_input: bool                   # an output is one of the inputs
    input_dtypes: list[str]
    gpu_peak_bytes: int | None            # the build's measured GPU peak (None off the GPU)
    output_bytes: int                     # one trial's outputs
    stored: bool                          # kept in the worker's store for the comparisons
    baseline: dict[str, Any] | None = None   # the eager / torch.compile timings (cuda)

    @classmethod
    def from_reply(cls, reply: dict[str, Any], trials: int) -> ReferenceRun:
        peak = reply.get("gpu_peak_bytes")
        return cls(trials=trials, seeds=list(reply["seeds"]), outputs=list(reply["outputs"]),
                   fingerprints=dict(reply.get("fingerprints") or {}), ops=reply.get("ops"),
                   aliases_input=bool(reply.get("aliases_input")), input_dtypes=list(reply.get("input_dtypes") or []),
                   gpu_peak_bytes=peak if isinstance(peak, int) else None,
                   output_bytes=int(reply.get("output_bytes") or 0), stored=bool(reply.get("stored")))


@dataclass
class Ended:
    """How the candidate's part ended (`candidate.end_candidate`): the guards' last findings, whether
    its worker is tainted and a probe kernel still runs in it (None off the GPU) -- or the worker died."""

    dead: bool = False
    tainted: bool = False
    cuda_ok: bool | None = None
    findings: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""
    gpu_peak_bytes: int | None = None   # the candidate session's GPU allocator peak (cuda)

    @classmethod
    def from_reply(cls, reply: dict[str, Any]) -> Ended:
        peak = reply.get("gpu_peak_bytes")
        return cls(tainted=bool(reply.get("tainted")), cuda_ok=reply.get("cuda_ok"),
                   findings=list(reply.get("findings", [])), error=str(reply.get("error", "")),
                   gpu_peak_bytes=peak if isinstance(peak, int) and not isinstance(peak, bool) else None)


@dataclass
class Timed:
    """What timing a correct candidate concluded (with its final trial and graph replay checks)."""

    status: str
    error: str = ""
    timings: dict[str, Any] = field(default_factory=dict)
    speedup: float | None = None
    speedup_vs_compile: float | None = None
    reasons: list[str] = field(default_factory=list)
    ended: Ended | None = None   # the candidate's end when timing ended it, else None


class CompareFailed(Exception):
    """The comparison itself could not be done (reference worker died, reference not rebuildable)."""


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


def ptx_cache_key(code: str, mode: str, launches: list[dict[str, Any]]) -> str:
    """The sm_90 compile check's cache key: the candidate source, the mode and its launch signatures."""
    return hashlib.sha256(json.dumps([code, mode, launches], sort_keys=True, default=str).encode()).hexdigest()


def _versions() -> dict[str, str]:
    import platform

    from kernelgym.version import __version__

    return {"kernelgym": __version__, "python": platform.python_version()}


def unique(items: Any) -> list[str]:
    """The truthy items in first-seen order, once each."""
    out: list[str] = []
    for x in items:
        if x and x not in out:
            out.append(x)
    return out


def unique_findings(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Guard findings, one per (name, detail)."""
    seen, out = set(), []
    for f in findings:
        key = (f.get("name"), f.get("detail"))
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


@dataclass(eq=False)
class Shared:
    """What the evaluations of one `Evaluator` share, under one lock: counters (`Evaluator.stats`)
    and caches -- baselines per (task, GPU, dtype), sm_90 compile-check results per `ptx_cache_key`,
    task footprints per (task, reference trials) -- and the counter that names reference stores."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    stats: dict[str, int] = field(default_factory=dict)
    baselines: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    baseline_locks: dict[tuple[str, str, str], threading.Lock] = field(default_factory=dict)
    ptx_cache: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    footprints: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    keys: Iterator[int] = field(default_factory=itertools.count)

    def count(self, stat: str) -> None:
        with self.lock:
            self.stats[stat] += 1


@dataclass(eq=False)
class Held:
    """A worker a stage holds (`Stages.hold`); set `recycle` to have it replaced when given back."""

    pool: RolePool
    worker: Worker
    recycle: bool = False


class Stages:
    """One evaluation's state and its means to talk to workers; `pipeline.Run` adds the stages."""

    def __init__(self, ev: Any, backend: str, mode: str, seed: int, trials: int, timeout: float):
        # ev: the owning `evaluator.Evaluator` (not imported: it imports this module).
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
        self.footprint: dict[str, Any] = {}  # the task's sizes (`Pipeline._footprint`)
        self.reservation: Reservation | None = None   # the GPU memory this evaluation holds
        self.one_trial = False   # workers keep one trial on the GPU at a time (`one_trial_on_gpu`)

    # -- plumbing ----------------------------------------------------------------------------
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

    @contextlib.contextmanager
    def holding(self, pool: RolePool, w: Worker, *, timed_release: bool = True) -> Iterator[Held]:
        """Hold `w` (already taken from `pool`) for the block, then give it back: replaced when the
        block set ``recycle``, let a `WorkerFailure` out, or the worker died. With `timed_release`
        the giving back counts as phase 'release' (or 'worker_restart' when replaced)."""
        held = Held(pool, w)
        try:
            yield held
        except WorkerFailure:
            held.recycle = True
            raise
        finally:
            recycle = held.recycle or w.dead
            if timed_release:
                with self._ph("worker_restart" if recycle else "release"):
                    pool.release(w, recycle=recycle)
            else:
                pool.release(w, recycle=recycle)

    def hold(self, pool: RolePool, wait_phase: str, *, timed_release: bool = True
             ) -> contextlib.AbstractContextManager[Held]:
        """Take a worker of `pool` (the wait counted as `wait_phase`) and hold it for the block (`holding`)."""
        with self._ph(wait_phase):
            w = pool.acquire()
        return self.holding(pool, w, timed_release=timed_release)

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

    def _pool(self, role: str) -> RolePool:
        return self.ev.pool(role, self.backend, self.gpu_index)

    def verdict(self, status: str, error: str = "", **kw: Any) -> Verdict:
        return Verdict(status=status, error=error[:4000], backend=self.backend, mode=self.mode,
                       device=self.device_name, seeds=[self.seed, *self.trial_seeds], task_id=self.task_id,
                       versions=dict(self.versions), notes=list(self.notes), tolerances=dict(self.tolerances), **kw)

    def _host_limit(self, w: Worker) -> int | None:
        """`w`'s resident-memory limit for this task's request (None: the worker's own): see Evaluator."""
        if not self.host_bytes or w.role.name not in ("reference", "candidate"):
            return None
        base_mb = self.ev.reference_memory_limit_mb if w.role.name == "reference" else self.ev.memory_limit_mb
        avail = meminfo_bytes("MemAvailable")
        return host_memory_limit(int(base_mb * 2**20) if base_mb else None, self.host_bytes,
                                 None if avail is None else avail + rss_bytes(w.pid), self.ev.host_memory_multiple)
