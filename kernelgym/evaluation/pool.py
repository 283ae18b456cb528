"""Parent side of the sandbox: worker processes, per-phase timeouts, memory polling, kill + replace.

Workers are plain subprocesses (`python -m kernelgym.evaluation.worker`) rather than
multiprocessing children: each gets exactly the environment its role needs before anything is
imported (TRITON_INTERPRET must be set before triton loads), starts in its own session so the
whole process group can be killed, and talks over a private socket, never stdout.
"""

from __future__ import annotations

import os
import queue
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

from kernelgym.evaluation import codec

MAX_REPLY_BYTES = 4 << 30
POLL_S = 0.02
STDERR_TAIL = 1500
_PAGE = os.sysconf("SC_PAGE_SIZE")


class WorkerFailure(Exception):
    """The worker died, hung past its phase deadline, or went over its memory limit (now killed)."""

    def __init__(self, kind: str, message: str, phase: str = "", stderr: str = ""):
        super().__init__(message)
        self.kind = kind  # "crash" | "timeout" | "memory"
        self.phase = phase
        self.stderr = stderr


@dataclass(frozen=True)
class Role:
    """What a worker is for; decides its environment. `backend` is "cuda" or "interpret"."""

    name: str  # "reference" | "candidate" | "ptx"
    backend: str

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
        if self.backend == "interpret" or self.name == "ptx":
            env["CUDA_VISIBLE_DEVICES"] = ""
        if self.backend == "interpret" and self.name == "candidate":
            env["TRITON_INTERPRET"] = "1"
        if self.backend == "cuda" and gpu_fraction:
            env["KERNELGYM_GPU_FRACTION"] = str(gpu_fraction)
        return env


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (Linux /proc)."""
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo += _children(p)
    return seen


def tree_rss_bytes(pid: int) -> int:
    total = 0
    for p in process_tree(pid):
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            pass
    return total


class Worker:
    """One worker process and its socket; requests are synchronous."""

    def __init__(self, role: Role, memory_limit_mb: float | None, gpu_fraction: float | None = None):
        self.role = role
        self.memory_limit = int(memory_limit_mb * 2**20) if memory_limit_mb else None
        parent_sock, child_sock = socket.socketpair()
        self._log = tempfile.NamedTemporaryFile(prefix="kernelgym-worker-", suffix=".log", delete=False)
        self.log_path = self._log.name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kernelgym.evaluation.worker", role.name, str(child_sock.fileno())],
            pass_fds=(child_sock.fileno(),), env=role.env(gpu_fraction), stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=self._log, start_new_session=True, close_fds=True,
        )
        child_sock.close()
        self.conn = Connection(parent_sock.detach())
        self.info: dict[str, Any] | None = None
        self.evaluations = 0
        self.dead = False
        self.last_ipc_s = 0.0  # wall time of the last request not spent in the worker's handler

    @property
    def pid(self) -> int:
        return self.proc.pid

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

    def request(self, msg: dict[str, Any], phase_timeout: float) -> dict[str, Any]:
        """Send one request; wait for its result, restarting the deadline at each phase message."""
        self.wait_ready()
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
        reply = self._receive(time.monotonic() + phase_timeout, "start", phase_timeout)
        wall = time.perf_counter() - t0
        worker_s = reply.pop("worker_s", None)
        self.last_ipc_s = max(0.0, wall - float(worker_s)) if isinstance(worker_s, (int, float)) else 0.0
        return reply

    def _receive(self, deadline: float, phase: str, phase_timeout: float) -> dict[str, Any]:
        hard_deadline = time.monotonic() + phase_timeout * 50  # forged phase messages cannot stall us
        while True:
            try:
                ready = self.conn.poll(POLL_S)
            except OSError:
                ready = True
            if ready:
                try:
                    reply = codec.decode(self.conn.recv_bytes(MAX_REPLY_BYTES))
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
                return reply
            if self.proc.poll() is not None:
                self._died(phase)
            now = time.monotonic()
            if now > deadline:
                self.kill()
                raise WorkerFailure("timeout", f"exceeded the {phase_timeout:g} s time limit in phase "
                                    f"'{phase}'", phase)
            if self.memory_limit:
                rss = tree_rss_bytes(self.proc.pid)
                if rss > self.memory_limit:
                    self.kill()
                    raise WorkerFailure("memory", f"memory limit of {self.memory_limit / 2**20:.0f} MB exceeded "
                                        f"(resident {rss / 2**20:.0f} MB) in phase '{phase}'", phase)

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
        if self.info and self.info.get("tmpdir", "").startswith(tempfile.gettempdir()):
            import shutil

            shutil.rmtree(self.info["tmpdir"], ignore_errors=True)

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
    """Up to `size` workers of one role; `acquire` starts one lazily or waits for a free one."""

    def __init__(self, role: Role, size: int, memory_limit_mb: float | None, gpu_fraction: float | None = None):
        self.role, self.size = role, max(1, size)
        self.memory_limit_mb, self.gpu_fraction = memory_limit_mb, gpu_fraction
        self._idle: queue.LifoQueue[Worker] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(self.size)
        self._lock = threading.Lock()
        self._all: set[Worker] = set()
        self.closed = False
        self.started = 0

    def _spawn(self) -> Worker:
        w = Worker(self.role, self.memory_limit_mb, self.gpu_fraction)
        with self._lock:
            self._all.add(w)
            self.started += 1
        return w

    def acquire(self) -> Worker:
        if self.closed:
            raise RuntimeError("worker pool is shut down")
        self._slots.acquire()
        try:
            try:
                w = self._idle.get_nowait()
            except queue.Empty:
                w = self._spawn()
            if w.dead or w.proc.poll() is not None:
                self._forget(w)
                w = self._spawn()
            return w
        except BaseException:
            self._slots.release()
            raise

    def release(self, w: Worker, recycle: bool = False) -> None:
        """Return a worker; a recycled (or dead) one is killed and a replacement started at once."""
        if recycle or w.dead or self.closed:
            w.kill()
            self._forget(w)
            if not self.closed:
                self._idle.put(self._spawn())  # import torch now, not when the next job waits
        else:
            self._idle.put(w)
        self._slots.release()

    def _forget(self, w: Worker) -> None:
        with self._lock:
            self._all.discard(w)

    def prestart(self) -> None:
        """Start one worker in the background if none is idle and there is room (no waiting)."""
        with self._lock:
            room = not self.closed and self._idle.empty() and len(self._all) < self.size
        if room:
            self._idle.put(self._spawn())

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
        with self._lock:
            return [w.pid for w in self._all if not w.dead]

    def shutdown(self) -> None:
        self.closed = True
        with self._lock:
            workers = list(self._all)
            self._all.clear()
        for w in workers:
            w.close()
