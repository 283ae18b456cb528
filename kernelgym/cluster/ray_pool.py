"""The evaluation pipeline spread over a Ray cluster, with the local pool's API and verdicts.

Each Ray actor wraps a local `kernelgym.evaluation.Evaluator` (whose worker processes sandbox
the candidates), so guards and rules of judgement are the ones of a local run; the driver only
schedules. Actors:

* GPU actors, one per GPU (``num_gpus=1``; Ray sets ``CUDA_VISIBLE_DEVICES``, which the
  evaluator's workers inherit): correctness and timing on that GPU. The actor's evaluator holds
  the GPU's timing lock, so only one timing runs at a time per GPU.
* CPU actors: on a CPU-only run (backend ``interpret``) they run the whole interpreter evaluation;
  on a GPU run they compile each candidate's kernels for the GPUs' target ahead of its GPU
  evaluation (`kernelgym.evaluation.precompile`): unconfined into the node's shared
  ``TRITON_CACHE_DIR``, where the GPU worker finds them; under the OS sandbox (the default where
  the machine has it) into a cache of their own, which the actor files as an archive beside the
  shared cache for the candidate's confined GPU worker to unpack (`evaluation.triton_cache`). Every
  actor of a node uses the same cache directory, so both find the same archives.

Scheduling (driver side, one thread, `ray.wait`): at most `max_in_flight` calls per actor
(back-pressure: nothing else is submitted until one returns); a call whose actor died (node lost,
OOM killer, ``ray.kill``) is retried on a replacement actor with the same seed, alone on it, so a
candidate that kills its actor a second time gets a ``crash`` verdict instead of endless retries,
and a bystander that died beside it is judged normally. Results are stored by input index, once:
no verdict is lost or duplicated. Actors are placed with the ``SPREAD`` strategy, so a multi-node
cluster gets actors on every node.

Known limits: an actor that dies abruptly cannot kill its sandbox workers (they run in sessions of
their own); idle ones exit when their connection closes, but one busy with a candidate that never
returns stays until that candidate ends. The GPU path has only run on CPU, with a Ray instance that
declares a GPU.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kernelgym.evaluation.evaluator import Evaluator, Reference
from kernelgym.evaluation.options import EvaluatorOptions
from kernelgym.evaluation.protocol import (
    BACKEND_AUTO,
    BACKEND_CUDA,
    BACKEND_INTERPRET,
    BACKENDS,
    MODE_STRICT,
    MODES,
    trial_seed,
)
from kernelgym.evaluation.verdict import Verdict

log = logging.getLogger(__name__)

INSTALL_HINT = "the Ray evaluation pool needs Ray: pip install 'kernelgym[ray]'"

class ClusterError(RuntimeError):
    """The Ray cluster cannot be used: unreachable address, actors that cannot be started."""


def import_ray() -> Any:
    """`import ray`, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return ray


def connect(address: str | None = None, **init_kwargs: Any) -> Any:
    """Make sure Ray is initialised: connect to `address` (``ray://host:port``, ``host:port`` or
    ``auto``) or, when None, use the running session or start a local instance. Returns `ray`."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    kwargs = {"log_to_driver": False, "include_dashboard": False, **init_kwargs}
    if address and address.startswith("ray://"):
        kwargs.pop("include_dashboard", None)  # not a Ray Client option
    try:
        ray.init(address=address, **kwargs)
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError, grpc errors...
        where = f"at {address!r}" if address else "(local)"
        hint = " (a ray:// address needs the Ray Client: pip install 'ray[client]')" if (
            address and address.startswith("ray://") and "grpc" in str(exc).lower()) else ""
        raise ClusterError(f"cannot connect to the Ray cluster {where}: {type(exc).__name__}: {exc}{hint}") from exc
    return ray


def evaluator_options(ev: Evaluator | None) -> EvaluatorOptions:
    """The settings of `ev` that decide verdicts (limits, timeouts, checks), for the actors'
    evaluators (`EvaluatorOptions.verdict_settings`; the defaults without `ev`)."""
    return ev.options.verdict_settings() if ev is not None else EvaluatorOptions()


# ----------------------------------------------------------------------------- the actor

class EvalActor:
    """One Ray actor: a local `Evaluator` (and its sandboxed worker processes) on one node.

    role: "gpu" or "cpu"; its evaluator takes `options` with `settings` (`EvaluatorOptions` field
    names) changed. The class is plain Python; `RayPool` wraps it with `ray.remote`.
    """

    def __init__(self, role: str, options: EvaluatorOptions, settings: dict[str, Any],
                 triton_cache_dir: str | None):
        # Set before any worker starts: workers inherit the actor's environment.
        cache = triton_cache_dir or os.environ.get("TRITON_CACHE_DIR") or os.path.join(
            os.path.expanduser("~"), ".triton", "cache")
        os.makedirs(cache, exist_ok=True)
        os.environ["TRITON_CACHE_DIR"] = cache
        self.role = role
        self.options = options.replace(**settings)   # an unknown setting fails here, naming it
        self.ev = Evaluator(self.options)
        self._pre: Any = None  # a Precompiler, started on the first precompile
        self._pre_lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        import socket

        import ray

        out: dict[str, Any] = {"role": self.role, "pid": os.getpid(), "host": socket.gethostname(),
                               "node_id": ray.get_runtime_context().get_node_id(),
                               "triton_cache_dir": os.environ.get("TRITON_CACHE_DIR")}
        ev = self.ev
        ptx = getattr(ev, "ptx_workers", 0) if self.role == "cpu" and getattr(ev, "ptx_check", False) else 0
        out["concurrency"] = ev.workers + getattr(ev, "reference_workers", 0) + ptx
        if self.role == "gpu":
            import torch

            if torch.cuda.is_available():
                major, minor = torch.cuda.get_device_capability(0)
                out.update(gpu_ids=[str(g) for g in ray.get_gpu_ids()], capability=major * 10 + minor,
                           device=torch.cuda.get_device_name(0))
        return out

    def warm(self, backend: str) -> None:
        self.ev.warm(backend)

    def evaluate(self, reference: Reference, candidate: str, backend: str, mode: str, seed: int, trials: int,
                 timeout: float | None) -> dict[str, Any]:
        return self.ev.evaluate(reference, candidate, backend, mode, seed=seed, trials=trials,
                                timeout=timeout).to_dict()

    def precompile(self, reference: Reference, candidate: str, arch: int, mode: str, seed: int,
                   timeout: float | None) -> dict[str, Any]:
        from kernelgym.evaluation.precompile import Precompiler

        with self._pre_lock:
            if self._pre is None:
                self._pre = Precompiler(self.ev.workers, memory_limit_mb=self.ev.memory_limit_mb,
                                        timeout=self.ev.timeout, os_sandbox=self.ev.os_sandbox)
        return self._pre.precompile(reference, candidate, arch, mode=mode, seed=seed, timeout=timeout)

    def worker_pids(self) -> list[int]:
        """This actor's process, its evaluator's workers and its precompile processes."""
        return [os.getpid(), *self.ev.worker_pids(), *(self._pre.pids() if self._pre else [])]

    def close(self) -> None:
        """End the evaluator's workers now: the pool is going away, so no graceful exit (which
        costs seconds a worker, one after another) and no waiting for a candidate that hangs."""
        import signal

        for pid in self.ev.worker_pids():
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)  # each worker leads its own process group
        self.ev.close()
        if self._pre is not None:
            self._pre.close()


# ----------------------------------------------------------------------------- the driver

@dataclass
class _Item:
    index: int
    reference: Any  # an ObjectRef to the Task / source
    candidate: str
    seed: int
    deaths: int = 0
    precompiled: bool = False


@dataclass(eq=False)
class _Slot:
    role: str
    handle: Any
    capacity: int
    inflight: set = field(default_factory=set)
    info: dict[str, Any] | None = None
    born: float = field(default_factory=time.monotonic)
    dead: bool = False
    solo: bool = False  # running a retried item alone: take nothing else until it returns


@dataclass
class _Call:
    kind: str  # "info" | "evaluate" | "precompile"
    slot: _Slot
    item: _Item | None = None


class RayPool:
    """Evaluations over Ray actors; `evaluate_batch` has the local pool's API and verdicts.

    address: ``ray://host:port``, ``host:port``, ``auto`` or None (the running Ray session, else a
    new local instance). cpu_actors / gpu_actors: how many (default: fill the cluster -- one GPU
    actor per GPU, one CPU actor per `cpus_per_actor` remaining CPUs). cpus_per_actor: CPUs a CPU
    actor reserves and candidate workers its evaluator runs. gpu_workers: candidate workers of a
    GPU actor's evaluator (they share the GPU; timing is exclusive). max_in_flight: calls queued
    on an actor at once (default: its evaluator's candidate + reference (+ ptx) workers, so each
    pipeline stage has work as in a local batch, plus one). max_deaths: actor deaths one evaluation may
    cause before it gets a ``crash`` verdict. evaluator: an `Evaluator` whose limits, timeouts and
    checks the actors copy (or pass `evaluator_kwargs`). precompile: on a GPU run, compile on CPU
    actors first. triton_cache_dir: the cache directory every actor of a node uses (default: the
    actor's ``TRITON_CACHE_DIR``, else Triton's ``~/.triton/cache``). actor_start_timeout: seconds
    an actor may take to start before the pool gives up with `ClusterError`. init_kwargs: passed
    to ``ray.init`` when this pool starts Ray. actor_class: `EvalActor` or a subclass (e.g. to
    inject faults in tests).
    """

    def __init__(self, address: str | None = None, *, cpu_actors: int | None = None,
                 gpu_actors: int | None = None, cpus_per_actor: int = 1, gpu_workers: int = 4,
                 max_in_flight: int | None = None, max_deaths: int = 2, evaluator: Evaluator | None = None,
                 evaluator_kwargs: dict[str, Any] | None = None, precompile: bool = True,
                 triton_cache_dir: str | None = None, actor_start_timeout: float = 300.0,
                 init_kwargs: dict[str, Any] | None = None, actor_class: type = EvalActor):
        if cpus_per_actor < 1 or gpu_workers < 1:
            raise ValueError("cpus_per_actor and gpu_workers must be >= 1")
        if max_deaths < 1:
            raise ValueError("max_deaths must be >= 1")
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        if not (isinstance(actor_class, type) and issubclass(actor_class, EvalActor)):
            raise TypeError("actor_class must be EvalActor or a subclass of it")
        self.ray = connect(address, **(init_kwargs or {}))
        self.address = address
        self.cpu_actors, self.gpu_actors = cpu_actors, gpu_actors
        self.cpus_per_actor, self.gpu_workers = int(cpus_per_actor), int(gpu_workers)
        self.max_in_flight, self.max_deaths = max_in_flight, int(max_deaths)
        self.options = evaluator_options(evaluator)
        self.evaluator_kwargs = dict(evaluator_kwargs or {})   # checked by the actors' evaluators
        self.precompile = precompile
        self.triton_cache_dir = triton_cache_dir
        self.actor_start_timeout = float(actor_start_timeout)
        self._remote = self.ray.remote(actor_class)
        self._slots: dict[str, list[_Slot]] = {"cpu": [], "gpu": []}
        self._lock = threading.Lock()  # one batch at a time: the scheduler owns the actors meanwhile
        self.closed = False
        self.stats: collections.Counter[str] = collections.Counter()

    # -- cluster shape ---------------------------------------------------------------------------
    def _resources(self) -> dict[str, float]:
        return dict(self.ray.cluster_resources())

    def resolve_backend(self, backend: str) -> str:
        """'auto' -> 'cuda' when the cluster has GPUs, else 'interpret' (decided by the cluster,
        not by this driver's machine)."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
        gpus = int(self._resources().get("GPU", 0))
        if backend == BACKEND_AUTO:
            return BACKEND_CUDA if gpus else BACKEND_INTERPRET
        if backend == BACKEND_CUDA and not gpus:
            raise ValueError("backend 'cuda' requested but the Ray cluster has no GPU")
        return backend

    def _wanted(self, backend: str) -> dict[str, int]:
        res = self._resources()
        gpus = int(res.get("GPU", 0)) if backend == BACKEND_CUDA else 0
        n_gpu = self.gpu_actors if self.gpu_actors is not None else gpus
        if backend == BACKEND_CUDA:
            n_gpu = max(1, min(n_gpu, gpus))
        else:
            n_gpu = 0
        spare = int(res.get("CPU", 1)) - n_gpu
        n_cpu = self.cpu_actors if self.cpu_actors is not None else max(1, spare // self.cpus_per_actor)
        if backend == BACKEND_CUDA and not self.precompile:
            n_cpu = 0
        return {"cpu": max(0 if backend == BACKEND_CUDA else 1, n_cpu), "gpu": n_gpu}

    def _spawn(self, role: str) -> _Slot:
        workers = self.gpu_workers if role == "gpu" else self.cpus_per_actor
        resources = {"num_gpus": 1, "num_cpus": 1} if role == "gpu" else {"num_cpus": self.cpus_per_actor}
        # Threads for every call the driver may queue plus info/close; calls beyond the capacity
        # the actor reports never come (back-pressure is the driver's).
        threads = max(self.max_in_flight or 0, 2 * workers + 4) + 2
        actor = self._remote.options(**resources, max_concurrency=threads, scheduling_strategy="SPREAD",
                                     max_restarts=0)
        handle = actor.remote(role, self.options, {**self.evaluator_kwargs, "workers": workers}, self.triton_cache_dir)
        slot = _Slot(role, handle, self.max_in_flight or workers + 1)
        self._slots[role].append(slot)
        self.stats["actors_started"] += 1
        return slot

    def _set_info(self, slot: _Slot, info: dict[str, Any]) -> None:
        slot.info = info
        if not self.max_in_flight and info.get("concurrency"):
            # Enough calls that each stage of the actor's pipeline (reference, candidate, ptx
            # workers) has one to work on, as the local evaluate_batch keeps, plus one queued.
            slot.capacity = int(info["concurrency"]) + 1

    def actors(self) -> dict[str, list[Any]]:
        """The live actor handles by role (for inspection and fault-injection tests)."""
        return {r: [s.handle for s in ss if not s.dead] for r, ss in self._slots.items()}

    def warm(self, backend: str = BACKEND_AUTO) -> None:
        """Start the actors a batch on `backend` uses and their evaluators' workers, and wait."""
        backend = self.resolve_backend(backend)
        self._ensure(backend)
        # On a GPU run the CPU actors only precompile, in subprocesses of their own: nothing to warm.
        role = "gpu" if backend == BACKEND_CUDA else "cpu"
        refs = [s.handle.warm.remote(backend) for s in self._slots[role] if not s.dead]
        self.ray.get(refs, timeout=self.actor_start_timeout)
        slots = [s for ss in self._slots.values() for s in ss if not s.dead and s.info is None]
        for s, info in zip(slots, self.ray.get([s.handle.info.remote() for s in slots],
                                              timeout=self.actor_start_timeout)):
            self._set_info(s, info)

    def _ensure(self, backend: str) -> None:
        want = self._wanted(backend)
        for role, n in want.items():
            live = [s for s in self._slots[role] if not s.dead]
            for _ in range(n - len(live)):
                self._spawn(role)

    # -- the batch -------------------------------------------------------------------------------
    def evaluate_batch(self, pairs: Sequence[tuple[Reference, str]], backend: str = BACKEND_AUTO, mode: str = MODE_STRICT,
                       *, seed: int | None = None, trials: int = 3, timeout: float | None = None) -> list[Verdict]:
        """Evaluate (reference, candidate) pairs over the actors; verdicts in input order.

        With `seed` set, pair i gets the same evaluation seed as in the local pool's
        `evaluate_batch`, so verdicts match a local run.
        """
        if self.closed:
            raise RuntimeError("RayPool is closed")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        pairs = list(pairs)
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[1], str)):
                raise TypeError(f"pairs[{i}] must be a (reference, candidate source) pair")
        backend = self.resolve_backend(backend)
        if not pairs:
            return []
        rng = random.SystemRandom()
        # Drawn here, not in the actor, so that a retry repeats the same evaluation.
        seeds = [rng.getrandbits(62) if seed is None else trial_seed(seed, 1000 + i) for i in range(len(pairs))]
        refs: dict[int, Any] = {}
        keep: list[Any] = []  # keeps the objects behind id() alive while the batch runs
        items = []
        for i, (ref, cand) in enumerate(pairs):
            key = id(ref)
            if key not in refs:  # each distinct reference goes to the object store once
                refs[key] = self.ray.put(ref)
                keep.append(ref)
            items.append(_Item(i, refs[key], cand, seeds[i]))
        with self._lock:
            return _Batch(self, items, backend, mode, max(3, int(trials)), timeout).run()

    def close(self) -> None:
        """Close the actors' evaluators and end the actors (idempotent). Ray itself stays up."""
        if self.closed:
            return
        self.closed = True
        slots = [s for ss in self._slots.values() for s in ss if not s.dead]
        with contextlib.suppress(Exception):  # the actors are killed below either way
            self.ray.get([s.handle.close.remote() for s in slots], timeout=60)
        for s in slots:
            with contextlib.suppress(Exception):
                self.ray.kill(s.handle)
        for ss in self._slots.values():
            ss.clear()

    def __enter__(self) -> RayPool:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Batch:
    """One `evaluate_batch` call: dispatch with back-pressure, collect, retry on actor death."""

    def __init__(self, pool: RayPool, items: list[_Item], backend: str, mode: str, trials: int,
                 timeout: float | None):
        self.pool, self.ray = pool, pool.ray
        self.backend, self.mode, self.trials, self.timeout = backend, mode, trials, timeout
        self.results: list[Verdict | None] = [None] * len(items)
        gpu_run = backend == BACKEND_CUDA
        # cuda: CPU actors precompile from `to_compile`, GPU actors evaluate `ready` first, then
        # take uncompiled items rather than idle. interpret: CPU actors evaluate `ready`.
        self.to_compile: collections.deque[_Item] = collections.deque(items if gpu_run and pool.precompile else [])
        self.ready: collections.deque[_Item] = collections.deque([] if self.to_compile else items)
        self.retry: collections.deque[_Item] = collections.deque()  # items whose actor died: run alone
        self.calls: dict[Any, _Call] = {}
        self.eval_role = "gpu" if gpu_run else "cpu"
        self.arch: int | None = None

    def run(self) -> list[Verdict]:
        pool = self.pool
        pool._ensure(self.backend)
        for ss in pool._slots.values():
            for s in ss:
                if not s.dead and s.info is None:
                    self.calls[s.handle.info.remote()] = _Call("info", s)
        self._learn_arch()
        while any(r is None for r in self.results):
            self._dispatch()
            waiting = [ref for ref, c in self.calls.items()]
            if not waiting:  # nothing in flight and nothing dispatchable: a scheduler bug, not a hang
                raise RuntimeError("Ray pool scheduler stalled with unfinished items")
            done, _ = self.ray.wait(waiting, num_returns=1, timeout=5.0)
            for ref in done:
                self._collect(ref)
            self._check_startup()
        return [r for r in self.results if r is not None]

    def _learn_arch(self) -> None:
        for s in self.pool._slots["gpu"]:
            if s.info and s.info.get("capability"):
                self.arch = int(s.info["capability"])

    # -- dispatch
    def _live(self, role: str) -> list[_Slot]:
        return [s for s in self.pool._slots[role] if not s.dead]

    def _dispatch(self) -> None:
        # Precompiles first, so that GPU actors take uncompiled items only when CPU actors are full.
        if self.eval_role == "gpu" and self.arch is not None:
            for slot in self._live("cpu"):
                while self.to_compile and len(slot.inflight) < slot.capacity:
                    item = self.to_compile.popleft()
                    ref = slot.handle.precompile.remote(item.reference, item.candidate, self.arch, self.mode,
                                                        item.seed, self.timeout)
                    slot.inflight.add(ref)
                    self.calls[ref] = _Call("precompile", slot, item)
        # Retried items run alone on an idle actor; until one is idle the role's actors drain.
        for slot in self._live(self.eval_role):
            if self.retry and not slot.inflight and not slot.solo:
                item = self.retry.popleft()
                slot.solo = True
                self._submit_eval(slot, item)
        if not self.retry:
            for slot in sorted(self._live(self.eval_role), key=lambda s: len(s.inflight)):
                while not slot.solo and len(slot.inflight) < slot.capacity:
                    item = self._next_eval()
                    if item is None:
                        break
                    self._submit_eval(slot, item)
        if self.eval_role == "gpu" and not self._live("cpu") and self.to_compile:
            self.ready.extend(self.to_compile)  # no CPU actor left: the GPU compiles for itself
            self.to_compile.clear()

    def _next_eval(self) -> _Item | None:
        if self.ready:
            return self.ready.popleft()
        if self.to_compile:  # better to compile on the GPU actor than to leave the GPU idle
            self.pool.stats["evaluated_without_precompile"] += 1
            return self.to_compile.popleft()
        return None

    def _submit_eval(self, slot: _Slot, item: _Item) -> None:
        ref = slot.handle.evaluate.remote(item.reference, item.candidate, self.backend, self.mode, item.seed,
                                          self.trials, self.timeout)
        slot.inflight.add(ref)
        self.calls[ref] = _Call("evaluate", slot, item)

    # -- results
    def _collect(self, ref: Any) -> None:
        call = self.calls.pop(ref)
        slot = call.slot
        slot.inflight.discard(ref)
        try:
            value = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:
            # The actor is alive but the method raised: an internal bug, not the candidate's doing.
            self._internal_error(call, exc)
            return
        except (self.ray.exceptions.RayActorError, self.ray.exceptions.WorkerCrashedError,
                self.ray.exceptions.NodeDiedError, self.ray.exceptions.ObjectLostError,
                self.ray.exceptions.OwnerDiedError) as exc:
            self._actor_lost(slot, call, exc)
            return
        if call.kind == "info":
            self.pool._set_info(slot, value)
            self._learn_arch()
        elif call.kind == "precompile":
            call.item.precompiled = bool(value.get("ok"))
            self.pool.stats["precompiled" if value.get("ok") else "precompile_failed"] += 1
            self.ready.append(call.item)
        else:
            if slot.solo:
                slot.solo = False
            self._store(call.item, Verdict.from_dict(value))

    def _store(self, item: _Item, verdict: Verdict) -> None:
        if self.results[item.index] is not None:  # cannot happen by construction; never overwrite
            log.warning("duplicate result for item %d ignored", item.index)
            self.pool.stats["duplicates_ignored"] += 1
            return
        self.results[item.index] = verdict
        self.pool.stats["evaluations"] += 1

    def _internal_error(self, call: _Call, exc: Exception) -> None:
        if call.kind == "info":
            raise ClusterError(f"a {call.slot.role} actor failed to start: {exc}") from exc
        if call.kind == "precompile":
            self.pool.stats["precompile_failed"] += 1
            self.ready.append(call.item)
            return
        call.slot.solo = False
        v = Verdict("runtime_error", error=f"internal evaluator error on a Ray actor: {str(exc)[-2000:]}",
                    reasons=["internal:error"], backend=self.backend, mode=self.mode, seeds=[call.item.seed])
        self._store(call.item, v)

    def _actor_lost(self, slot: _Slot, call: _Call, exc: Exception) -> None:
        if getattr(exc, "actor_init_failed", False):  # a replacement would fail the same way
            slot.dead = True
            raise ClusterError(f"a {slot.role} actor failed to start: {exc}") from exc
        if not slot.dead:
            slot.dead = True
            self.pool.stats["actor_deaths"] += 1
            log.warning("Ray %s actor lost (%s); starting a replacement", slot.role, type(exc).__name__)
            with contextlib.suppress(Exception):  # usually already gone
                self.ray.kill(slot.handle)
            new = self.pool._spawn(slot.role)
            self.calls[new.handle.info.remote()] = _Call("info", new)
            self.pool.stats["actors_replaced"] += 1
        if call.kind == "info":
            return
        item = call.item
        if call.kind == "precompile":  # not a verdict: evaluate it without the head start
            self.ready.append(item)
            return
        item.deaths += 1
        if item.deaths >= self.pool.max_deaths:
            self.pool.stats["crash_verdicts"] += 1
            v = Verdict("crash", error=f"the evaluation's Ray actor died {item.deaths} times "
                        f"(last: {type(exc).__name__}); not retried", reasons=["sandbox:crash", "cluster:actor_died"],
                        backend=self.backend, mode=self.mode, seeds=[item.seed])
            self._store(item, v.refresh_components())
        else:
            self.pool.stats["retries"] += 1
            self.retry.append(item)

    def _check_startup(self) -> None:
        now = time.monotonic()
        for ss in self.pool._slots.values():
            for s in ss:
                if not s.dead and s.info is None and now - s.born > self.pool.actor_start_timeout:
                    raise ClusterError(
                        f"a {s.role} actor did not start within {self.pool.actor_start_timeout:g} s (cluster "
                        f"resources: {self.pool._resources()}); lower cpu_actors / gpu_actors or add nodes")
