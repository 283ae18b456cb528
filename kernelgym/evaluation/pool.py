"""Parent side of the sandbox: worker processes, per-phase timeouts, memory polling, kill + replace.

A worker is forked from a template process that imported torch, Triton and dynamo once
(`template`; milliseconds instead of seconds per start and per replacement), or, where no template
can serve (``KERNELGYM_WORKER_START=exec``, or the template reports it unusable), exec'd as
``python -m kernelgym.evaluation.worker``. Either way it gets exactly the environment its role
needs (`Role.env`) before it imports or runs anything of its role, starts in its own session so
the whole process group can be killed, confines itself (`sandbox`), and talks over a private
socket, never stdout. The GPU lock and memory budget live in `admission`, /proc accounting in
`proctree`; both are re-exported here.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from kernelgym.evaluation import codec, template
from kernelgym.evaluation.admission import GpuLock, MemoryBudget, Reservation
from kernelgym.evaluation.proctree import (
    host_memory_limit,
    meminfo_bytes,
    process_tree,
    rss_bytes,
    tree_cpu_seconds,
    tree_memory,
    tree_rss_bytes,
)
from kernelgym.evaluation.protocol import LAZY_DYNAMO_ENV
from kernelgym.evaluation.sandbox import MODE_ENV, OUTPUT_ENV, SCRATCH_ENV

__all__ = ["GpuLock", "MemoryBudget", "Reservation", "Role", "RolePool", "Worker", "WorkerFailure",
           "host_memory_limit", "meminfo_bytes", "physical_device", "process_tree", "rss_bytes",
           "split_counts", "tree_cpu_seconds", "tree_rss_bytes"]

MAX_REPLY_BYTES = 4 << 30
POLL_S = 0.02
# How often a waiting request checks the worker's resident memory, and that of the worker with its
# descendants (a walk over every thread's children in /proc: ~1 ms for a CUDA worker, which, done by
# every evaluation thread at each poll, kept the parent's one core busy).
MEMORY_CHECK_S = 0.05
TREE_CHECK_S = 0.5
STDERR_TAIL = 1500


class WorkerFailure(Exception):
    """The worker died, hung past its phase deadline, or went over its memory limit (now killed)."""

    def __init__(self, kind: str, message: str, phase: str = "", stderr: str = ""):
        super().__init__(message)
        self.kind = kind  # "crash" | "timeout" | "memory"
        self.phase = phase
        self.stderr = stderr


@dataclass(frozen=True)
class Role:
    """What a worker is for; decides its environment. `backend` is "cuda" or "interpret"; `device`
    the index (among the GPUs this process sees) a cuda worker is pinned to, None for CPU roles."""

    name: str  # "reference" | "candidate" | "ptx" | "precompile"
    backend: str
    device: int | None = None
    os_sandbox: str = "auto"   # `sandbox.MODES`: how workers running candidate code confine themselves

    def env(self, gpu_fraction: float | None) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("TRITON_INTERPRET", None)
        pkg_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH", "")) if p)
        env.update({
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "TORCHINDUCTOR_COMPILE_THREADS": "1",  # no compile subprocess pool inside workers
            "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
        })
        env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
        if self.backend == "interpret" or self.name in ("ptx", "precompile"):
            env["CUDA_VISIBLE_DEVICES"] = ""   # CPU roles; precompile compiles for a GPU it never sees
        elif self.device is not None:
            # Pinned: the worker sees one GPU, as cuda:0, so nothing in it can pick another.
            env["CUDA_VISIBLE_DEVICES"] = physical_device(self.device, os.environ.get("CUDA_VISIBLE_DEVICES"))
        if self.backend == "interpret" and self.name == "candidate":
            env["TRITON_INTERPRET"] = "1"
        if self.backend == "interpret":
            env[LAZY_DYNAMO_ENV] = "1"   # nothing compiles with torch.compile (guards.runtime.lazy_dynamo)
        else:
            env.pop(LAZY_DYNAMO_ENV, None)
        if self.backend == "cuda" and gpu_fraction and self.name != "precompile":
            env["KERNELGYM_GPU_FRACTION"] = str(gpu_fraction)
        env[MODE_ENV] = self.os_sandbox
        env.pop(OUTPUT_ENV, None)   # both set per worker (`Worker`)
        env.pop(SCRATCH_ENV, None)
        return env


def physical_device(index: int, visible: str | None) -> str:
    """The CUDA_VISIBLE_DEVICES entry for logical GPU `index` of a process started with `visible`.

    Unset: the index itself. Otherwise the index-th entry of the list (ids, GPU-/MIG- UUIDs);
    an index past the list is an error rather than a silent wrap-around.
    """
    if index < 0:
        raise ValueError(f"GPU index must be >= 0, got {index}")
    if visible is None:
        return str(index)
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if index >= len(entries):
        raise ValueError(f"GPU index {index} is not visible (CUDA_VISIBLE_DEVICES={visible!r})")
    return entries[index]


def split_counts(total: int, parts: int, minimum: int = 1) -> list[int]:
    """`total` workers spread over `parts` devices as evenly as possible, at least `minimum` each."""
    if parts < 1:
        raise ValueError("need at least one device")
    base, extra = divmod(max(total, 0), parts)
    return [max(minimum, base + (1 if i < extra else 0)) for i in range(parts)]


class Worker:
    """One worker process and its socket; requests are synchronous."""

    def __init__(self, role: Role, memory_limit_mb: float | None, gpu_fraction: float | None = None,
                 tmpl: template.Template | None = None):
        """Start the worker: forked by `tmpl` when given and usable, else exec'd."""
        self.role = role
        self.memory_limit = int(memory_limit_mb * 2**20) if memory_limit_mb else None
        parent_sock, child_sock = socket.socketpair()
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the worker
            prefix="kernelgym-worker-", suffix=".log", delete=False)
        self.log_path = self._log.name
        env = role.env(gpu_fraction)
        # Made here, not in the worker: a worker killed before it reports ready (a replacement that
        # a shutdown catches starting) would otherwise leave its folder behind.
        self.scratch = tempfile.mkdtemp(prefix=f"kernelgym-{role.name}-")
        env[SCRATCH_ENV] = self.scratch
        # A candidate worker writes its outputs only into a folder of its own (the OS sandbox lets it
        # write nowhere else), named per request by `output_path`.
        self.output_dir: str | None = None
        if role.name == "candidate":
            from kernelgym.evaluation.sandbox import make_output_dir

            self.output_dir = make_output_dir()
            if self.output_dir:
                env[OUTPUT_ENV] = self.output_dir
        self._outputs = 0
        self.proc: Any = None
        self.forked = False
        if tmpl is not None:
            try:
                self.proc = tmpl.spawn(role.name, env, child_sock.fileno(), self._log.fileno())
                self.forked = True
            except template.TemplateError as exc:
                template.warn_unusable(str(exc))
                # A fork the template made after all must not share the exec'd worker's socket.
                parent_sock.close()
                child_sock.close()
                parent_sock, child_sock = socket.socketpair()
        if self.proc is None:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kernelgym.evaluation.worker", role.name, str(child_sock.fileno())],
                pass_fds=(child_sock.fileno(),), env=env, stdin=subprocess.DEVNULL,
                stdout=self._log, stderr=self._log, start_new_session=True, close_fds=True,
            )
        child_sock.close()
        self.conn = Connection(parent_sock.detach())
        self.info: dict[str, Any] | None = None
        self.evaluations = 0
        self.dead = False
        self.last_ipc_s = 0.0  # wall time of the last request not spent in the worker's handler
        self.lock_wait_s = 0.0  # seconds the last request waited for the GPU lock
        self.claims = 0  # evaluations that will come back to this worker (its stored references)
        self._limit = self.memory_limit  # this request's limit (`request(memory_limit=...)`)
        self._gpu: Any = None
        self._held: str | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output_path(self) -> str | None:
        """A fresh file name in this worker's output folder (None: it has none)."""
        if self.output_dir is None:
            return None
        self._outputs += 1
        return os.path.join(self.output_dir, f"{self._outputs}.bin")

    def wait_ready(self, timeout: float = 300.0) -> dict[str, Any]:
        if self.info is None:
            self.info = self._receive(time.monotonic() + timeout, "startup", timeout)
            if self.info.get("type") != "ready":
                self.kill()
                raise WorkerFailure("crash", f"worker sent {self.info.get('type')!r} instead of ready")
        return self.info

    def stderr_tail(self, start: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(start, size - STDERR_TAIL))
                return fh.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def request(self, msg: dict[str, Any], phase_timeout: float, gpu: Any = None,
                raw_tensors: bool = False, spill: str | None = None,
                memory_limit: int | None = None) -> dict[str, Any]:
        """Send one request; wait for its result, restarting the deadline at each phase message.

        gpu: the device's `GpuLock`; the worker asks for it (``{"type": "lock", "mode": ...}``)
        around its GPU sections and the parent grants it here. Whatever the worker still holds when
        the request ends (result, crash, timeout) is released. raw_tensors: leave the reply's
        tensors as `codec.RawTensor` bytes (for relaying). spill: the file the request told the worker
        to write its tensors to (``msg["spill"]``), the only one its reply may refer to.
        memory_limit: this request's resident-memory limit in bytes, instead of the worker's own
        (a task's limit: `host_memory_limit`); ignored for a worker without a limit.
        """
        self.wait_ready()
        self._gpu, self.lock_wait_s = gpu, 0.0
        self._limit = memory_limit if memory_limit and self.memory_limit else self.memory_limit
        msg = {**msg, "gpu_lock": gpu is not None}
        try:
            return self._request(msg, phase_timeout, raw_tensors, spill)
        finally:
            self._release_gpu()
            self._gpu = None
            self._limit = self.memory_limit

    def _release_gpu(self) -> None:
        if self._held is not None and self._gpu is not None:
            self._gpu.release(self._held)
        self._held = None

    def _lock(self, mode: str) -> None:
        """A lock message from the worker: grant (blocking here) or release; unknown modes kill it."""
        if mode == "release":
            self._release_gpu()
            return
        if mode not in GpuLock.MODES:
            self.kill()
            raise WorkerFailure("crash", f"worker asked for an unknown GPU lock mode {mode!r}")
        self._release_gpu()  # never an upgrade while holding: that could deadlock
        t = time.perf_counter()
        if self._gpu is not None:
            self._gpu.acquire(mode)
            self._held = mode
        self.lock_wait_s += time.perf_counter() - t
        try:
            self.conn.send_bytes(codec.encode({"type": "granted"}))
        except OSError:
            self._release_gpu()

    def _request(self, msg: dict[str, Any], phase_timeout: float, raw_tensors: bool,
                 spill: str | None = None) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            os.truncate(self.log_path, 0)  # stderr of this request only (the child appends)
        except OSError:
            pass
        try:
            self.conn.send_bytes(codec.encode(msg))
        except OSError as exc:
            self.kill()
            raise WorkerFailure("crash", f"worker unreachable: {exc}", "send") from None
        reply = self._receive(time.monotonic() + phase_timeout, "start", phase_timeout, raw_tensors, spill)
        wall = time.perf_counter() - t0 - self.lock_wait_s
        worker_s = reply.pop("worker_s", None)
        self.last_ipc_s = max(0.0, wall - float(worker_s)) if isinstance(worker_s, (int, float)) else 0.0
        return reply

    def _receive(self, deadline: float, phase: str, phase_timeout: float,
                 raw_tensors: bool = False, spill: str | None = None) -> dict[str, Any]:
        hard_deadline = time.monotonic() + phase_timeout * 50  # forged phase messages cannot stall us
        next_memory = next_tree = next_confirm = 0.0
        while True:
            try:
                ready = self.conn.poll(POLL_S)
            except OSError:
                ready = True
            if ready:
                try:
                    # A spilled reply's buffers are bounded by its file, not by the inline cap: three
                    # trials of a 1.5 GiB output are 4.5 GiB (the cap once made that a `crash`).
                    reply = codec.decode(self.conn.recv_bytes(MAX_REPLY_BYTES), raw_tensors, spill=spill)
                except (EOFError, OSError):
                    self._died(phase)
                except codec.CodecError as exc:
                    self.kill()
                    raise WorkerFailure("crash", f"malformed message from worker: {exc}", phase) from None
                if not isinstance(reply, dict):
                    self.kill()
                    raise WorkerFailure("crash", "malformed message from worker", phase)
                if reply.get("type") == "phase":
                    phase = str(reply.get("phase", ""))[:100]
                    deadline = min(time.monotonic() + phase_timeout, hard_deadline)
                    continue
                if reply.get("type") == "lock":
                    t = time.monotonic()
                    self._lock(str(reply.get("mode", "")))
                    waited = time.monotonic() - t  # waiting for the lock is not the worker's time
                    deadline, hard_deadline = deadline + waited, hard_deadline + waited
                    continue
                return reply
            if self.proc.poll() is not None:
                self._died(phase)
            now = time.monotonic()
            if now > deadline:
                self.kill()
                raise WorkerFailure("timeout", f"exceeded the {phase_timeout:g} s time limit in phase "
                                    f"'{phase}'", phase)
            limit = self._limit
            if limit and now >= next_memory:
                next_memory = now + MEMORY_CHECK_S
                if now >= next_tree:
                    next_tree = now + TREE_CHECK_S
                    rss = tree_rss_bytes(self.proc.pid)
                else:
                    rss = rss_bytes(self.proc.pid)
                if rss > limit and now >= next_confirm:
                    # Resident size is an upper bound, cheap to poll; it also counts mapped files
                    # and pages shared with the template. Kill on what the tree allocated.
                    next_confirm = now + TREE_CHECK_S
                    charged, account = tree_memory(self.proc.pid)
                    if charged > limit:
                        self.kill()
                        raise WorkerFailure("memory", f"memory limit of {limit / 2**20:.0f} MB exceeded "
                                            f"({charged / 2**20:.0f} MB allocated, resident {rss / 2**20:.0f} MB; "
                                            f"{account[:600]}) in phase '{phase}'", phase)

    def _died(self, phase: str) -> None:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        tail = self.stderr_tail()
        self.kill()
        if code is None:
            how = "closed its connection"
        elif code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            how = f"was killed by {name}" + (" (segmentation fault)" if name == "SIGSEGV" else "")
        else:
            how = f"exited with code {code}"
        raise WorkerFailure("crash", f"worker process {how} in phase '{phase}'", phase, tail)

    def kill(self) -> None:
        """Kill the worker, its process group and any descendants that left the group."""
        if self.dead:
            return
        self.dead = True
        pids = process_tree(self.proc.pid) if self.proc.poll() is None else []
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        if self.forked:
            self.proc.release()   # the template reaps it now that its process group is dead
        try:
            self.conn.close()
        except OSError:
            pass
        self._log.close()
        for path in (self.log_path,):
            try:
                os.unlink(path)
            except OSError:
                pass
        import shutil

        if self.info and self.info.get("tmpdir", "").startswith(tempfile.gettempdir()):
            shutil.rmtree(self.info["tmpdir"], ignore_errors=True)
        for folder in (self.scratch, self.output_dir):
            if folder:
                shutil.rmtree(folder, ignore_errors=True)

    def close(self, timeout: float = 5.0) -> None:
        """Ask the worker to exit, then make sure it did."""
        if self.dead:
            return
        try:
            self.conn.send_bytes(codec.encode({"op": "exit"}))
            self.proc.wait(timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()

    def has_descendants(self) -> bool:
        return len(process_tree(self.proc.pid)) > 1


class RolePool:
    """Up to `size` workers of one role; `acquire` starts one lazily or waits for a free one;
    `acquire_worker` waits for one particular worker (the one that stored a reference)."""

    def __init__(self, role: Role, size: int, memory_limit_mb: float | None, gpu_fraction: float | None = None):
        self.role, self.size = role, max(1, size)
        self.memory_limit_mb, self.gpu_fraction = memory_limit_mb, gpu_fraction
        self._cond = threading.Condition()
        self._idle: list[Worker] = []
        self._busy: set[Worker] = set()
        self.closed = False
        self.started = 0
        self.retired_cpu_s = 0.0   # CPU seconds of the workers killed so far (`Evaluator.cpu_seconds`)
        # Started now, so that it imports torch while the caller goes on (`template`).
        self._template: template.Template | None = None
        if template.start_method() == "template":
            self._template = template.acquire(role.env(gpu_fraction))

    def _template_ready(self) -> None:
        """Wait for a starting template outside the pool's lock (its imports take seconds; a fork
        under the lock then takes milliseconds, and `pids` or `shutdown` never wait for imports)."""
        t = self._template
        if t is not None:
            t.wait_ready()

    def _spawn(self) -> Worker:
        t = self._template
        if t is not None and not t.alive and t.state != "unusable":   # it died: a new one
            template.release(t)
            t = self._template = template.acquire(self.role.env(self.gpu_fraction))
        w = Worker(self.role, self.memory_limit_mb, self.gpu_fraction, t)
        self.started += 1
        return w

    def acquire(self) -> Worker:
        """A free worker: the most recently used idle one with the fewest claims, or a new one."""
        self._template_ready()
        with self._cond:
            while True:
                if self.closed:
                    raise RuntimeError("worker pool is shut down")
                if self._idle:
                    least = min(w.claims for w in self._idle)
                    i = max(i for i, w in enumerate(self._idle) if w.claims == least)
                    w = self._idle.pop(i)
                    if w.dead or w.proc.poll() is not None:
                        w.kill()
                        w = self._spawn()
                    self._busy.add(w)
                    return w
                if len(self._busy) < self.size:
                    w = self._spawn()
                    self._busy.add(w)
                    return w
                self._cond.wait()

    def acquire_worker(self, w: Worker, timeout: float | None = None) -> Worker | None:
        """Wait until `w` is idle and take it; None if it died or left the pool (or on timeout)."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self.closed or w.dead:
                    return None
                if w in self._idle:
                    self._idle.remove(w)
                    self._busy.add(w)
                    return w
                if w not in self._busy:
                    return None
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)

    def release(self, w: Worker, recycle: bool = False) -> None:
        """Return a worker; a recycled (or dead) one is killed and a replacement started at once."""
        self._template_ready()
        with self._cond:
            self._busy.discard(w)
            if recycle or w.dead or self.closed:
                if not w.dead:   # read before the kill: a dead process's CPU time is gone
                    self.retired_cpu_s += tree_cpu_seconds(w.pid)
                w.kill()
                if not self.closed:
                    self._idle.append(self._spawn())  # import torch now, not when the next job waits
            else:
                self._idle.append(w)
            self._cond.notify_all()

    def prestart(self, n: int = 1) -> None:
        """Start workers until `n` are idle, as far as there is room, without waiting for them to be
        ready (but for their template, if it is still importing)."""
        self._template_ready()
        with self._cond:
            while not self.closed and len(self._idle) < n and len(self._idle) + len(self._busy) < self.size:
                self._idle.append(self._spawn())
                self._cond.notify_all()

    def warm(self, n: int | None = None) -> None:
        """Start workers ahead of time (up to `n`, default the pool size) and wait until ready."""
        ws = [self.acquire() for _ in range(min(n or self.size, self.size))]
        for w in ws:
            try:
                w.wait_ready()
            except WorkerFailure:
                pass
        for w in ws:
            self.release(w)

    def pids(self) -> list[int]:
        with self._cond:
            return [w.pid for w in [*self._idle, *self._busy] if not w.dead]

    def ready_info(self) -> dict[str, Any] | None:
        """The ready message of one started worker (device name, capability, versions), if any."""
        with self._cond:
            return next((w.info for w in [*self._idle, *self._busy] if w.info), None)

    def shutdown(self) -> None:
        with self._cond:
            self.closed = True
            workers = [*self._idle, *self._busy]
            self._idle.clear()
            self._busy.clear()
            self._cond.notify_all()
            t, self._template = self._template, None
        for w in workers:
            w.close()
        if t is not None:
            template.release(t)
