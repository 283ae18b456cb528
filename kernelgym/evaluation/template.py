"""Worker processes forked from a warm template process, so that torch is imported once, not per worker.

A worker needs torch, Triton and (but on the interpreter backend: `protocol.LAZY_DYNAMO_ENV`) dynamo
loaded (about 1.7 s of CPU, 3 s with dynamo); a cold `kernelgym eval` used to
start three workers that each imported them, and a pool that replaces a crashed or tainted worker
paid the same again per replacement. Here one template process per environment
(`python -m kernelgym.evaluation.template FD`) imports them once (`worker.preload`) and forks
each worker on request; a fork costs milliseconds.

Protocol: the parent and the template share a ``SOCK_SEQPACKET`` socket pair (one message per
packet, JSON). The parent sends ``{"op": "spawn", "id", "role", "env"}`` with two descriptors
attached (``SCM_RIGHTS``): the worker's end of its own socket pair with the parent and its log
file. The template forks; the child starts a new session (the pool kills the worker's whole process
group), points stdout and stderr at the log, replaces its environment by the role's
(`pool.Role.env`: TRITON_INTERPRET, CUDA_VISIBLE_DEVICES, the sandbox settings...), and runs
`worker.serve`, which applies the resource limits and the OS sandbox before any candidate code
runs, as in an exec'd worker. The template answers ``{"type": "spawned", "id", "pid"}`` and, when
a child exits, ``{"type": "exited", "pid", "code"}`` (``waitid(WNOWAIT)``: the child stays a zombie,
so its pid and process group cannot be reused, until the parent, having killed the group, sends
``{"op": "reap", "pid"}``) -- the parent gets what `subprocess.Popen` would give it
(`ForkedProcess`).

What must hold in the template, checked before it reports ready (otherwise the pool starts workers
by exec as before, `Template.why` says why): one thread only (a fork copies only the calling thread;
a lock another thread held would stay locked in the child; OMP/MKL/OpenBLAS are told to use one
thread, as in every worker), and the CUDA driver and NVML never initialised (CUDA reads
CUDA_VISIBLE_DEVICES when it initialises and its state does not survive a fork: each cuda worker
initialises it itself, after setting its pinned device). Merely loaded is fine: on the GPU
machine's image torch's imports load libcuda, and the templates were refused there until each
library was asked, by a call that answers "not initialised", whether it was. Only variables that every role of a template sets
alike may matter at import time; the role-specific ones (`ROLE_KEYS`) are read later (CUDA reads
its devices when it initialises). Templates are keyed by the rest of the environment, so a changed
environment gets a template of its own, and so does TRITON_INTERPRET: Triton reads it when a
function is decorated, its own library's at import. On the interpreter backend the candidate
workers therefore have a template of their own (TRITON_INTERPRET=1) and the reference and ptx
workers another; on cuda all roles share one.

The template ends when its parent does (end of file on its socket), killing
the children it still has. A template that died is replaced on the next spawn; its live workers
are killed (their exit status is lost with it), so their pool replaces them as after a crash.

Why not `multiprocessing`'s forkserver with preload: its server and preload list are process-wide,
shared with whatever else the user's process does with multiprocessing; each child re-imports the
parent's ``__main__`` (a training script's module-level code would run inside sandboxed
workers); and its children inherit the server's environment from when it first started, while a
worker needs its role's. The template above is a hundred lines of `os.fork` around the pool's own
framing, with the same session, log, environment and sandbox steps as an exec'd worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

# Environment variables that differ between roles: set in each forked child, never in the template.
# TRITON_INTERPRET is not one: Triton decorates its own library functions (tl.max, ...) when it is
# imported, as interpreted or compiled functions by that variable, so it keys the template instead.
ROLE_KEYS = ("CUDA_VISIBLE_DEVICES", "KERNELGYM_GPU_FRACTION", "KERNELGYM_OS_SANDBOX",
             "KERNELGYM_OUTPUT_DIR", "KERNELGYM_SCRATCH_DIR")
START_ENV = "KERNELGYM_WORKER_START"   # "template" (default) or "exec": how pools start workers
STARTS = ("template", "exec")
MAX_MESSAGE = 1 << 20
READY_TIMEOUT_S = 300.0
SPAWN_TIMEOUT_S = 60.0


def start_method() -> str:
    """How workers start: `START_ENV` ("template" unless set to "exec"; anything else is an error)."""
    method = os.environ.get(START_ENV, "template") or "template"
    if method not in STARTS:
        raise ValueError(f"{START_ENV}={method!r}: expected one of {STARTS}")
    return method


class TemplateError(Exception):
    """The template cannot fork workers (it died, or is unusable: `Template.why`)."""


# ----------------------------------------------------------------------------- parent side

class ForkedProcess:
    """The parent's handle on a worker forked by a template: the part of `subprocess.Popen` the pool
    uses (`pid`, `poll`, `wait`, `returncode`) plus `release`, which lets the template reap it."""

    def __init__(self, template: Template, pid: int):
        self.template, self.pid = template, pid
        self.returncode: int | None = None
        self._released = False

    def poll(self) -> int | None:
        with self.template._cond:
            return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        end = None if timeout is None else time.monotonic() + timeout
        with self.template._cond:
            while self.returncode is None:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0.0)
                self.template._cond.wait(left)
            return self.returncode

    def release(self) -> None:
        """The parent is done with this (exited or killed) worker: the template reaps the zombie."""
        if not self._released:
            self._released = True
            with self.template._cond:
                self.template._children.pop(self.pid, None)
            self.template._send({"op": "reap", "pid": self.pid})


class Template:
    """One template process: started at once, imports in the background; `spawn` forks a worker."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self.state = "starting"   # "ready" | "unusable" | "dead"
        self.why = ""
        self._ids = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self._children: dict[int, ForkedProcess] = {}
        self._closing = False
        # When it was started and when it reported ready (`time.monotonic`; None until then).
        self.started_at = time.monotonic()
        self.ready_at: float | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close(); a file, so it never blocks the template
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock = ours
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kernelgym.evaluation.template", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=self._log, start_new_session=True, close_fds=True,
        )
        theirs.close()
        self._reader = threading.Thread(target=self._read, name="kernelgym-template", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _send(self, msg: dict[str, Any], fds: tuple[int, ...] = ()) -> bool:
        try:
            with self._send_lock:
                socket.send_fds(self._sock, [json.dumps(msg).encode()], list(fds))
            return True
        except OSError:
            return False

    def _read(self) -> None:
        while True:
            try:
                data = self._sock.recv(MAX_MESSAGE)
            except OSError:
                data = b""
            if not data:
                break
            try:
                msg = json.loads(data)
            except ValueError:
                continue
            with self._cond:
                kind = msg.get("type")
                if kind == "ready":
                    self.state, self.ready_at = "ready", time.monotonic()
                elif kind == "unusable":
                    self.state, self.why = "unusable", str(msg.get("why", ""))[:2000]
                elif kind == "spawned":   # registered here, before an "exited" that may follow at once
                    child = ForkedProcess(self, int(msg["pid"]))
                    self._children[child.pid] = child
                    self._replies[int(msg["id"])] = {"type": "spawned", "child": child}
                elif kind == "spawn_failed":
                    self._replies[int(msg["id"])] = msg
                elif kind == "exited":
                    child = self._children.get(int(msg["pid"]))
                    if child is not None:
                        child.returncode = int(msg["code"])
                self._cond.notify_all()
        self._ended()

    def _ended(self) -> None:
        """The template is gone: its live workers are killed (no one could report or reap them now)."""
        err = b""
        with contextlib.suppress(OSError, ValueError, subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
            self._log.seek(0, os.SEEK_END)
            self._log.seek(max(0, self._log.tell() - 2000))
            err = self._log.read()
        with self._cond:
            if self.state == "starting":   # it would fail again: the pool starts workers by exec
                self.state = "unusable"
                self.why = f"the template process ended before it was ready: {err.decode('utf-8', 'replace')}"
            elif self.state != "unusable":
                self.state = "dead"
            # Closed by us: it killed and reaped its children itself (their pids may be reused now).
            children = [] if self._closing else [c for c in self._children.values() if c.returncode is None]
        for child in children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
        with self._cond:
            for child in children:
                child.returncode = -signal.SIGKILL
            self._cond.notify_all()

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> bool:
        """Wait until the template has imported everything; False if it cannot fork workers."""
        with self._cond:
            self._cond.wait_for(lambda: self.state != "starting", timeout)
            return self.state == "ready"

    def spawn(self, role: str, env: dict[str, str], sock_fd: int, log_fd: int) -> ForkedProcess:
        """Fork a worker of `role` with environment `env`, serving the socket `sock_fd`, logging to
        `log_fd` (both stay open here; the child gets copies). Raises TemplateError."""
        if not self.wait_ready():
            raise TemplateError(self.why or f"the template process is {self.state}")
        with self._cond:
            self._ids += 1
            req = self._ids
        if not self._send({"op": "spawn", "id": req, "role": role, "env": env}, (sock_fd, log_fd)):
            raise TemplateError("the template process is unreachable")
        with self._cond:
            if not self._cond.wait_for(lambda: req in self._replies or self.state != "ready", SPAWN_TIMEOUT_S):
                raise TemplateError("the template process did not answer a spawn request")
            reply = self._replies.pop(req, None)
            if reply is None:
                raise TemplateError(self.why or f"the template process is {self.state}")
            if reply.get("type") != "spawned":
                raise TemplateError(f"fork failed: {reply.get('error', '')}")
            return reply["child"]

    @property
    def alive(self) -> bool:
        with self._cond:
            return self.state in ("starting", "ready")

    def close(self) -> None:
        """End the template (it kills the children it still has) and wait for it. One still importing
        is killed at once: it reads its socket only when ready, and has no children yet."""
        self._closing = True
        with self._cond:
            starting = self.state == "starting"
        if starting:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._reader.join(timeout=10)
        with contextlib.suppress(OSError):
            self._sock.close()
        with contextlib.suppress(OSError):
            self._log.close()


_WARNED: list[str] = []


def warn_unusable(why: str) -> None:
    """Say once per process that workers start by exec (slower) because no template can fork them."""
    if not _WARNED:
        _WARNED.append(why)
        print(f"kernelgym: workers start without a template (each imports torch itself): {why}", file=sys.stderr)


_LOCK = threading.Lock()
_SHARED: dict[tuple[tuple[str, str], ...], list[Any]] = {}   # key -> [Template, users]


def template_env(role_env: dict[str, str]) -> dict[str, str]:
    """The environment of the template that may fork a worker whose environment is `role_env`."""
    return {k: v for k, v in role_env.items() if k not in ROLE_KEYS}


def acquire(role_env: dict[str, str]) -> Template:
    """The live template for workers with environment `role_env` (started now if there is none);
    pair with `release`. Shared by every pool of this process with the same environment."""
    env = template_env(role_env)
    key = tuple(sorted(env.items()))
    with _LOCK:
        entry = _SHARED.get(key)
        if entry is None or not entry[0].alive and entry[0].state != "unusable":
            # A dead one's users each release it (closing it) and acquire this one.
            entry = _SHARED[key] = [Template(env), 0]
        entry[1] += 1
        return entry[0]


def pids() -> list[int]:
    """The live templates of this process (their children are the pools' workers)."""
    with _LOCK:
        return [entry[0].pid for entry in _SHARED.values() if entry[0].alive]


def release(t: Template) -> None:
    """One user fewer; the last one closes the template."""
    with _LOCK:
        for key, entry in list(_SHARED.items()):
            if entry[0] is t:
                entry[1] -= 1
                if entry[1] > 0:
                    return
                del _SHARED[key]
                break
    t.close()


# ----------------------------------------------------------------------------- template process

# Libraries whose initialised state a fork must not copy, and a call of each that answers "not
# initialised" (rather than initialising) when this process never initialised it.
_DRIVERS = (("libcuda.so", "cuDeviceGetCount", 3),          # CUDA_ERROR_NOT_INITIALIZED
            ("libnvidia-ml.so", "nvmlDeviceGetCount_v2", 1))   # NVML_ERROR_UNINITIALIZED


def _initialised(path: str, symbol: str, not_initialised: int) -> bool:
    """Whether the already-loaded library at `path` was initialised in this process (True when
    that cannot be told)."""
    import ctypes

    try:
        lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        count = ctypes.c_uint(0)
        return getattr(lib, symbol)(ctypes.byref(count)) != not_initialised
    except (OSError, AttributeError):
        return True


def _unsafe_to_fork() -> str:
    """Why forking this process would be wrong ("" when it is safe)."""
    threads = len(os.listdir("/proc/self/task"))
    if threads > 1:
        return f"the template runs {threads} threads after its imports (a fork copies only one)"
    with open("/proc/self/maps") as fh:
        return _drivers_initialised(fh.read())


def _drivers_initialised(maps: str, initialised: Callable[[str, str, int], bool] = _initialised) -> str:
    """Which GPU driver library mapped in `maps` (/proc/self/maps) this process initialised ("" when
    none). Loading the CUDA driver is harmless (torch's imports load it on some machines);
    initialising it is not: a forked child of a process that called cuInit cannot use CUDA."""
    fields = (line.split(None, 5) for line in maps.splitlines())
    paths = {f[5] for f in fields if len(f) == 6}
    for lib, symbol, code in _DRIVERS:
        for path in sorted(p for p in paths if os.path.basename(p).startswith(lib)):
            if initialised(path, symbol, code):
                return f"{lib} was initialised by the imports (CUDA must initialise in each worker, not before the fork)"
    return ""


def _child(sock: socket.socket, msg: dict[str, Any], fds: list[int]) -> int:
    """In the forked child: become the worker (never returns into the template's loop)."""
    sock.close()
    worker_fd, log_fd = fds
    os.setsid()
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in msg["env"].items()})
    from kernelgym.evaluation import worker

    return worker.serve(str(msg["role"]), worker_fd)


def _exit_code(info: Any) -> int:
    if info.si_code == os.CLD_EXITED:
        return int(info.si_status)
    return -int(info.si_status)   # killed or dumped: minus the signal, as subprocess reports it


def main(fd: int) -> int:
    sock = socket.socket(fileno=fd)

    def send(msg: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            sock.send(json.dumps(msg).encode())

    from kernelgym.evaluation import worker

    try:
        worker.preload()
        why = _unsafe_to_fork()
    except Exception as exc:  # noqa: BLE001 - reported; the pool starts workers by exec instead
        why = f"the template's imports failed: {type(exc).__name__}: {exc}"
    if why:
        send({"type": "unusable", "why": why})
        return 0
    send({"type": "ready", "pid": os.getpid()})
    children: dict[int, bool] = {}   # pid -> exit reported
    while True:
        ready, _, _ = select.select([sock], [], [], 0.02 if children else 1.0)
        if ready:
            try:
                data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 4)
            except OSError:
                data, fds = b"", []
            if not data:
                break
            msg = json.loads(data)
            op = msg.get("op")
            if op == "spawn":
                if len(fds) != 2:
                    for f in fds:
                        os.close(f)
                    send({"type": "spawn_failed", "id": msg.get("id"), "error": "expected 2 descriptors"})
                    continue
                try:
                    pid = os.fork()
                except OSError as exc:
                    send({"type": "spawn_failed", "id": msg.get("id"), "error": str(exc)})
                    pid = -1
                if pid == 0:
                    code = 1
                    try:
                        code = _child(sock, msg, fds)
                    except BaseException:  # noqa: BLE001 - the worker's log shows it
                        import traceback

                        traceback.print_exc()
                    finally:
                        os._exit(code)
                for f in fds:
                    os.close(f)
                if pid > 0:
                    children[pid] = False
                    send({"type": "spawned", "id": msg.get("id"), "pid": pid})
            elif op == "reap":
                pid = int(msg.get("pid", 0))
                if pid in children:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, signal.SIGKILL)
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, 0)
                    del children[pid]
        for pid, reported in list(children.items()):
            if reported:
                continue
            try:
                info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                info = None
                del children[pid]
            if info is not None and info.si_pid == pid:
                children[pid] = True
                send({"type": "exited", "pid": pid, "code": _exit_code(info)})
    # The parent is gone or closed us: no worker outlives its template.
    for pid in children:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    for pid in children:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    code = main(int(sys.argv[1]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)   # no interpreter teardown with torch loaded (seconds, for nothing)
