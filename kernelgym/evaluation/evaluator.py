"""The evaluation pipeline and the worker pools it runs on.

parent: extract code -> format check -> static guards -> REFERENCE worker (seeded inputs, outputs,
baselines) -> CANDIDATE worker (import, construct, weights, trials, runtime guards) -> compare here
-> sm_90 ptx check in a PTX worker (interpret backend) -> timing under the GPU's exclusive lock
(cuda backend, only when correct) and a final fresh-input trial -> Verdict.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import random
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Union

from kernelgym.evaluation.guards.static import check_source as static_check
from kernelgym.evaluation.check import TrialResult, compare_trial, reference_problem
from kernelgym.evaluation.extract import FormatError, check_format, extract_code
from kernelgym.evaluation.pool import Role, RolePool, Worker, WorkerFailure
from kernelgym.evaluation.reference import trial_seed
from kernelgym.evaluation.tolerances import tolerance_for
from kernelgym.evaluation.verdict import Verdict
from kernelgym.task import Task, TaskFormatError, check_source, source_hash

BACKENDS = ("auto", "cuda", "interpret")
MODES = ("strict", "lenient")
Reference = Union[Task, str]


class _RWLock:
    """Many shared holders (correctness runs) or one exclusive holder (timing) per GPU."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    def acquire_exclusive(self) -> None:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True

    def release_exclusive(self) -> None:
        with self._cond:
            self._writer = False
            self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        self.acquire_exclusive()
        try:
            yield
        finally:
            self.release_exclusive()


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


def resolve_backend(backend: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'interpret'."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend == "auto":
        return "cuda" if cuda_available() else "interpret"
    if backend == "cuda" and not cuda_available():
        raise ValueError("backend 'cuda' requested but no CUDA GPU is visible")
    return backend


def _versions() -> dict[str, str]:
    import platform

    import kernelgym

    return {"kernelgym": kernelgym.__version__, "python": platform.python_version()}


class Evaluator:
    """Worker pools plus settings; `evaluate` / `evaluate_batch` run the pipeline on them.

    workers: candidate workers per backend (default min(cpu_count, 16)); reference_workers default
    to a quarter of that and ptx_workers (interpreter only: an sm_90 compile costs about as much
    as the interpreted run) to half (at least 1). memory_limit_mb: resident-memory limit
    per candidate/ptx worker process tree, polled by the parent (over it: killed, verdict `crash`);
    reference_memory_limit_mb the same for reference workers (default max(memory_limit_mb, 8192)). timeout:
    wall seconds per phase (import, construct, each trial, timing). baseline_timeout: seconds for
    the eager and torch.compile baselines. gpu_memory_fraction: per-worker
    `torch.cuda.set_per_process_memory_fraction`. recycle_on_failure: on the cuda backend, after a
    non-ok verdict, "always" replaces the worker; "probe" (default) replaces it unless a probe
    kernel and a device sync still succeed in it (sticky CUDA errors fail every later call, so
    a context that passes is not poisoned); crashes, timeouts and tainted workers are always
    replaced. skip_static_guards: run candidates the static
    guards would reject -- only for testing the sandbox itself. Use as a context manager or call
    `close()`; pools are also shut down at interpreter exit.
    """

    def __init__(self, workers: int | None = None, *, reference_workers: int | None = None,
                 ptx_workers: int | None = None, memory_limit_mb: float | None = 8192,
                 timeout: float = 120.0, baseline_timeout: float = 600.0,
                 gpu_memory_fraction: float | None = None, skip_static_guards: bool = False,
                 ptx_check: bool = True, bench: dict[str, Any] | None = None,
                 recycle_on_failure: str = "probe", reference_memory_limit_mb: float | None = None,
                 reference_cache_mb: float = 1024):
        self.workers = max(1, workers or min(os.cpu_count() or 1, 16))
        quarter = max(1, self.workers // 4)
        self.reference_workers = max(1, reference_workers or quarter)
        self.ptx_workers = max(1, ptx_workers or self.workers // 2)
        self.memory_limit_mb = memory_limit_mb
        # References also hold torch.compile/inductor state and a CUDA context: more headroom.
        self.reference_memory_limit_mb = reference_memory_limit_mb or (
            max(memory_limit_mb, 8192) if memory_limit_mb else None)
        self.timeout = float(timeout)
        self.baseline_timeout = float(baseline_timeout)
        self.gpu_memory_fraction = gpu_memory_fraction or min(0.9, max(0.05, 2.0 / self.workers))
        self.skip_static_guards = skip_static_guards
        self.ptx_check = ptx_check
        self.bench = dict(bench or {})
        if recycle_on_failure not in ("probe", "always"):
            raise ValueError("recycle_on_failure must be 'probe' or 'always'")
        self.recycle_on_failure = recycle_on_failure
        self._pools: dict[Role, RolePool] = {}
        self._lock = threading.Lock()
        self._gpu = _RWLock()
        self._baselines: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._baseline_locks: dict[tuple[str, str, str], threading.Lock] = {}
        # Reference results per (task hash, seed, trials, device, want_ops): deterministic given
        # the seed, so an evaluation that repeats a seed reuses them (single-flight per key).
        self.reference_cache_bytes = int(reference_cache_mb * 2**20)
        self._ref_cache: OrderedDict[tuple, tuple[dict[str, Any], int]] = OrderedDict()
        self._ref_cache_size = 0
        self._ref_locks: dict[tuple, threading.Lock] = {}
        # sm_90 compile-check results per (candidate source, launch signatures, mode).
        self._ptx_cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.stats = {"reference_cache_hits": 0, "ptx_cache_hits": 0, "baseline_cache_hits": 0}
        self.closed = False
        _LIVE.add(self)

    # -- pools -------------------------------------------------------------------------------
    def pool(self, role: str, backend: str) -> RolePool:
        key = Role(role, backend)
        with self._lock:
            if self.closed:
                raise RuntimeError("Evaluator is closed")
            if key not in self._pools:
                size = {"candidate": self.workers, "reference": self.reference_workers,
                        "ptx": self.ptx_workers}[role]
                frac = self.gpu_memory_fraction if backend == "cuda" else None
                limit = self.reference_memory_limit_mb if role == "reference" else self.memory_limit_mb
                self._pools[key] = RolePool(key, size, limit, frac)
            return self._pools[key]

    def warm(self, backend: str = "auto") -> None:
        """Start every worker the backend uses now (otherwise they start on first use)."""
        backend = resolve_backend(backend)
        roles = ["reference", "candidate"] + (["ptx"] if backend == "interpret" and self.ptx_check else [])
        with ThreadPoolExecutor(len(roles)) as ex:
            list(ex.map(lambda r: self.pool(r, backend).warm(), roles))

    def worker_pids(self) -> list[int]:
        with self._lock:
            return [pid for p in self._pools.values() for pid in p.pids()]

    def clear_caches(self) -> None:
        """Forget cached references, baselines and ptx results (e.g. to re-time a baseline)."""
        with self._lock:
            self._baselines.clear()
            self._ref_cache.clear()
            self._ref_cache_size = 0
            self._ptx_cache.clear()

    def _ref_cache_get(self, key: tuple) -> dict[str, Any] | None:
        with self._lock:
            hit = self._ref_cache.get(key)
            if hit is None:
                return None
            self._ref_cache.move_to_end(key)
            self.stats["reference_cache_hits"] += 1
            return dict(hit[0])

    def _ref_cache_put(self, key: tuple, reply: dict[str, Any]) -> None:
        size = _tensor_bytes(reply)
        if size > self.reference_cache_bytes // 4:
            return
        with self._lock:
            if key in self._ref_cache:
                return
            self._ref_cache[key] = (dict(reply), size)
            self._ref_cache_size += size
            while self._ref_cache_size > self.reference_cache_bytes and self._ref_cache:
                _, (_, old) = self._ref_cache.popitem(last=False)
                self._ref_cache_size -= old

    def close(self) -> None:
        """Shut every worker down (idempotent); no worker process outlives this call."""
        with self._lock:
            self.closed = True
            pools = list(self._pools.values())
            self._pools.clear()
        for p in pools:
            p.shutdown()

    def __enter__(self) -> Evaluator:
        return self

    # A pool of worker processes is a shared resource: copying it (gymnasium deep-copies env kwargs
    # in check_env and env.spec.make) must hand back the same pool, not fail or start another.
    def __copy__(self) -> Evaluator:
        return self

    def __deepcopy__(self, memo: dict) -> Evaluator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- API ---------------------------------------------------------------------------------
    def evaluate(self, reference: Reference, candidate: str, backend: str = "auto", mode: str = "strict", *,
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
        run = _Run(self, backend, mode, seed, trials, float(timeout or self.timeout))
        if skip_static_guards is not None:
            run.skip_static = skip_static_guards
        try:
            v = run.go(reference, candidate, task_id)
        except Exception as exc:  # noqa: BLE001 - a pipeline bug still yields a verdict
            import traceback

            v = run.verdict("runtime_error", f"internal evaluator error: {type(exc).__name__}: {exc}")
            v.reasons.append("internal:error")
            v.notes.append(traceback.format_exc(limit=5)[-1500:])
        v.duration_s = round(time.perf_counter() - t0, 4)
        phases = {k: round(x, 4) for k, x in run.phases.items()}
        phases["total"] = v.duration_s
        v.timings = {**(v.timings or {}), "phases_s": phases}
        return v.refresh_components()

    def evaluate_batch(self, pairs: Sequence[tuple[Reference, str]], backend: str = "auto", mode: str = "strict",
                       cluster: str | None = None, *, seed: int | None = None, trials: int = 3,
                       timeout: float | None = None) -> list[Verdict]:
        """Evaluate many (reference, candidate) pairs in parallel over the pools, in input order.

        With `seed` set, pair i uses a seed derived from (seed, i), so a batch is reproducible.
        """
        if cluster != "local":  # None: KERNELGYM_CLUSTER decides; "ray" / "ray://host:port": the Ray pool
            from kernelgym.cluster import evaluate_batch_on_cluster, parse_cluster

            if parse_cluster(cluster)[0] != "local":
                return evaluate_batch_on_cluster(cluster, pairs, backend, mode, seed=seed, trials=trials,
                                                 timeout=timeout, evaluator=self)
        backend = resolve_backend(backend)
        pairs = list(pairs)
        seeds = [None if seed is None else trial_seed(seed, 1000 + i) for i in range(len(pairs))]
        # Enough threads that every pool stage (reference, candidate, ptx) has evaluations queued.
        extra = self.ptx_workers if backend == "interpret" and self.ptx_check else 0
        n_threads = max(1, min(len(pairs), self.workers + self.reference_workers + extra))

        def one(i: int) -> Verdict:
            ref, cand = pairs[i]
            return self.evaluate(ref, cand, backend, mode, seed=seeds[i], trials=trials, timeout=timeout)

        with ThreadPoolExecutor(n_threads, thread_name_prefix="kernelgym-eval") as ex:
            return list(ex.map(one, range(len(pairs))))


_LIVE: weakref.WeakSet[Evaluator] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for ev in list(_LIVE):
        ev.close()


class _Run:
    """One evaluation's pipeline state."""

    def __init__(self, ev: Evaluator, backend: str, mode: str, seed: int, trials: int, timeout: float):
        self.ev, self.backend, self.mode, self.seed, self.trials, self.timeout = ev, backend, mode, seed, trials, timeout
        self.device = "cuda" if backend == "cuda" else "cpu"
        self.versions = _versions()
        self.device_name = ""
        self.notes: list[str] = []
        self.task_id: str | None = None
        self.trial_seeds: list[int] = []
        self.tolerances: dict[str, Any] = {}
        self.skip_static = ev.skip_static_guards
        self.phases: dict[str, float] = {}
        self.aliases_input = False

    @contextlib.contextmanager
    def _ph(self, name: str) -> Iterator[None]:
        """Add the wall time of the block to phase `name` (reported in timings['phases_s'])."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - t

    def _req(self, w: Worker, msg: dict[str, Any], timeout: float, phase: str) -> dict[str, Any]:
        """One worker request, timed as `phase`; transport time (encode, send, decode) also as 'ipc'."""
        w.last_ipc_s = 0.0
        with self._ph(phase):
            try:
                return w.request(msg, timeout)
            finally:
                self.phases["ipc"] = self.phases.get("ipc", 0.0) + w.last_ipc_s

    def _start(self, w: Worker, phase: str) -> dict[str, Any]:
        with self._ph(phase):
            return w.wait_ready()

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
        return self._run(ref_src, code)

    # -- stages ------------------------------------------------------------------------------
    def _gpu_shared(self) -> contextlib.AbstractContextManager:
        return self.ev._gpu.shared() if self.backend == "cuda" else contextlib.nullcontext()

    def _run(self, ref_src: str, code: str) -> Verdict:
        n_ref = self.trials + (1 if self.backend == "cuda" else 0)  # +1: the post-timing trial
        # Cold pools: let the candidate (and ptx) workers import torch while the reference runs.
        self.ev.pool("candidate", self.backend).prestart()
        if self.backend == "interpret" and self.ev.ptx_check:
            self.ev.pool("ptx", "interpret").prestart()
        ref = self._reference(ref_src, n_ref)
        if isinstance(ref, Verdict):
            return ref
        self.trial_seeds = [t["seed"] for t in ref["trials"]]
        for tr in ref["trials"]:
            for o in tr["outputs"]:
                name = str(getattr(o, "dtype", "")).removeprefix("torch.")
                if name:
                    self.tolerances[name] = tolerance_for(name)
        baseline = ref.pop("_baseline", None)
        self.aliases_input = bool(ref.get("aliases_input"))

        pool = self.ev.pool("candidate", self.backend)
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
        if v.status in ("ok", "incorrect") and self.backend == "interpret" and self.ev.ptx_check and launches:
            v = self._ptx(code, v, launches)
        return v

    def _reference(self, src: str, n: int) -> dict[str, Any] | Verdict:
        key = (source_hash(src), self.seed, n, self.device, self.mode == "lenient")
        with self.ev._lock:
            lock = self.ev._ref_locks.setdefault(key, threading.Lock())
        with self._ph("reference_wait"):
            lock.acquire()  # single flight: a concurrent evaluation of the same (task, seed) waits
        try:
            hit = self.ev._ref_cache_get(key)
            if hit is not None:
                if self.backend != "cuda":
                    self.versions.update(hit.pop("_versions", {}))
                    return hit
                bkey = hit.pop("_baseline_key", None)
                if bkey in self.ev._baselines:
                    self.versions.update(hit.pop("_versions", {}))
                    hit["_baseline"] = self.ev._baselines[bkey]
                    return hit
            reply = self._reference_job(src, n)
            if not isinstance(reply, Verdict):
                cached = {k: v for k, v in reply.items() if k != "_baseline"}
                cached["_versions"] = dict(self.versions)
                self.ev._ref_cache_put(key, cached)
            return reply
        finally:
            lock.release()
            with self.ev._lock:
                if not lock.locked():
                    self.ev._ref_locks.pop(key, None)

    def _reference_job(self, src: str, n: int) -> dict[str, Any] | Verdict:
        pool = self.ev.pool("reference", self.backend)
        with self._ph("reference_wait"):
            w = pool.acquire()
        recycle = False
        try:
            self._start(w, "reference_worker_start")
            with self._gpu_shared():
                reply = self._req(w, {"op": "reference", "source": src, "seed": self.seed, "trials": n,
                                      "device": self.device, "want_ops": self.mode == "lenient"}, self.timeout,
                                  "reference")
            self.versions.update(w.info.get("versions", {}) if w.info else {})
            if reply.get("status") != "ok":
                recycle = True
                return self.verdict("invalid_task", f"reference failed in {reply.get('stage', '?')}: "
                                    f"{reply.get('error', '')}", reasons=["task:reference_error"])
            outs = [o for tr in reply["trials"] for o in tr["outputs"]]
            problem = reference_problem(outs)
            if problem:
                return self.verdict("invalid_task", problem, reasons=["task:reference_output"])
            if self.backend == "cuda":
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

    def _baselines(self, w: Worker, src: str, ref: dict[str, Any]) -> dict[str, Any]:
        device = (w.info or {}).get("device", "cuda")
        dtype = next((str(x.dtype).removeprefix("torch.") for x in ref["trials"][0]["inputs"]
                      if hasattr(x, "is_floating_point") and x.is_floating_point()), "none")
        key = (source_hash(src), device, dtype)
        reply = ref
        reply["_baseline_key"] = key
        with self.ev._lock:
            lock = self.ev._baseline_locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self.ev._baselines:
                try:
                    with self._gpu_shared():  # compiling takes long: only the timing is exclusive
                        w.request({"op": "prepare_baseline"}, self.ev.baseline_timeout)
                    with self.ev._gpu.exclusive():
                        res = w.request({"op": "baseline", "bench": self.ev.bench}, self.ev.baseline_timeout)
                except WorkerFailure as f:
                    res = {"status": "error", "error": f"baseline worker failed: {f}"}
                if res.get("status") != "ok":
                    return {"error": res.get("error", "baseline failed")}  # not cached: retried next time
                self.ev._baselines[key] = res
            else:
                self.ev.stats["baseline_cache_hits"] += 1
            return self.ev._baselines[key]

    def _candidate(self, w: Worker, code: str, ref: dict[str, Any],
                   baseline: dict | None) -> tuple[Verdict, bool, list[dict[str, Any]]]:
        info = self._start(w, "candidate_worker_start")
        self.device_name = info.get("device", "")
        self.versions.update(info.get("versions", {}))
        trials = ref["trials"][: self.trials]
        with self._gpu_shared():
            reply = self._req(w, {
                "op": "candidate", "source": code, "mode": self.mode, "device": self.device,
                "init_inputs": ref["init_inputs"], "state_dict": ref["state_dict"],
                "trials": [t["inputs"] for t in trials], "reference_ops": ref.get("ops"),
                "reference_aliases_input": self.aliases_input,
            }, self.timeout, "candidate")
        findings = list(reply.get("findings", []))
        kernels = list(reply.get("kernels", []))
        status = reply.get("status")
        results: list[TrialResult] = []
        reasons: list[str] = list(reply.get("reasons", []))
        error = str(reply.get("error", ""))
        with self._ph("compare"):
            for t, outs in enumerate(reply.get("outputs", [])[: len(trials)]):
                results.append(compare_trial(t, trials[t]["seed"], trials[t]["outputs"], list(outs)))
        timings: dict[str, Any] = {}
        speedup = speedup_c = None
        if status == "ran":
            bad = [r for r in results if not r.ok]
            status = "incorrect" if bad or len(results) < len(trials) else "ok"
            if bad:
                reasons += _unique(r.reason for r in bad)
                error = bad[0].message
            if status == "ok" and self.backend == "cuda" and not _hack(findings):
                status, error, timings, speedup, speedup_c, more = self._time(w, ref, baseline, results)
                reasons += more
        elif status == "internal_error":
            status, error = "runtime_error", f"candidate result could not be returned: {error}"
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
        failed_gpu = self.backend == "cuda" and status != "ok"
        if failed_gpu and self.ev.recycle_on_failure == "probe" and not ended.get("_dead"):
            failed_gpu = not ended.get("cuda_ok", False)
        recycle = tainted or status == "crash" or failed_gpu or w.dead or w.has_descendants()
        return v, recycle, list(reply.get("launches", []))

    def _time(self, w: Worker, ref: dict[str, Any], baseline: dict | None,
              results: list[TrialResult]) -> tuple[str, str, dict, float | None, float | None, list[str]]:
        with self._ph("timing_wait"):
            self.ev._gpu.acquire_exclusive()
        try:
            reply = self._req(w, {"op": "time", "bench": self.ev.bench}, self.timeout, "timing")
        finally:
            self.ev._gpu.release_exclusive()
        if reply.get("status") != "timed":
            return reply.get("status", "runtime_error"), reply.get("error", ""), {}, None, None, []
        stats = reply["stats"]
        final = ref["trials"][self.trials]
        with self._gpu_shared():
            rep2 = self._req(w, {"op": "final", "inputs": final["inputs"]}, self.timeout, "final_trial")
        if rep2.get("status") != "ran":
            return rep2.get("status", "runtime_error"), "final trial: " + rep2.get("error", ""), {}, None, None, []
        with self._ph("compare"):
            r = compare_trial(self.trials, final["seed"], final["outputs"], list(rep2["outputs"][0]))
        results.append(r)
        if not r.ok:
            return "incorrect", f"after timing: {r.message}", {"candidate": stats}, None, None, [r.reason]
        timings: dict[str, Any] = {"candidate": stats, "device": self.device_name}
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
        return "ok", "", timings, speedup, speedup_c, []

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
        pool = self.ev.pool("ptx", "interpret")
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


def _hack(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Findings that make the verdict hack_detected: all of them, including early_exit (a SystemExit the
    sandbox caught; os._exit kills the worker instead and stays a crash)."""
    return list(findings)


def _tensor_bytes(obj: Any) -> int:
    if hasattr(obj, "element_size") and hasattr(obj, "numel"):
        return int(obj.element_size() * obj.numel())
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


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
