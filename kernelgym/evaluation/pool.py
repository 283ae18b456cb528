"""Parent side of the sandbox: worker processes, per-phase timeouts, memory polling, kill + replace.

Workers are plain subprocesses (`python -m kernelgym.evaluation.worker`) rather than
multiprocessing children: each gets exactly the environment its role needs before anything is
imported (TRITON_INTERPRET must be set before triton loads), starts in its own session so the
whole process group can be killed, and talks over a private socket, never stdout.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from kernelgym.evaluation import codec
from kernelgym.evaluation.sandbox import MODE_ENV, OUTPUT_ENV, SCRATCH_ENV

MAX_REPLY_BYTES = 4 << 30
POLL_S = 0.02
# How often a waiting request checks the worker's resident memory, and that of the worker with its
# descendants (a walk over every thread's children in /proc: ~1 ms for a CUDA worker, which, done by
# every evaluation thread at each poll, kept the parent's one core busy).
MEMORY_CHECK_S = 0.05
TREE_CHECK_S = 0.5
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
    """What a worker is for; decides its environment. `backend` is "cuda" or "interpret"; `device`
    the index (among the GPUs this process sees) a cuda worker is pinned to, None for CPU roles."""

    name: str  # "reference" | "candidate" | "ptx"
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
        if self.backend == "interpret" or self.name == "ptx":
            env["CUDA_VISIBLE_DEVICES"] = ""
        elif self.device is not None:
            # Pinned: the worker sees one GPU, as cuda:0, so nothing in it can pick another.
            env["CUDA_VISIBLE_DEVICES"] = physical_device(self.device, os.environ.get("CUDA_VISIBLE_DEVICES"))
        if self.backend == "interpret" and self.name == "candidate":
            env["TRITON_INTERPRET"] = "1"
        if self.backend == "cuda" and gpu_fraction:
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


class GpuLock:
    """One GPU's lock: many shared holders (correctness runs) or one exclusive holder (timing).

    Once a timing waits, new shared holders wait behind it. Policy "writers_first" (default):
    shared holders wait until no timing waits at all, so a queue of timings runs back to back.
    "phase_fair": a shared holder that came while a timing waited or ran enters when that timing
    ends, before the next one, so correctness runs keep flowing between timings (on an H200 it did
    not raise throughput: timings then wait longer for the shared holders to leave; see
    benchmarks/NOTES.md). Workers take the lock through `Worker.request` (their GPU
    sections only; compiling happens outside it).

    A third mode, "background", is for GPU work that cannot be told apart from a long host
    compile: the first call of a ``torch.compile``d baseline compiles for seconds on the host, then
    autotunes and runs its kernels on the GPU. Such a section keeps timings out (a timing beside
    it was measured up to 2.5x slow on an H200) without stalling correctness runs: while it is held,
    shared holders still enter even when a timing waits, since the timing cannot start anyway.
    """

    MODES = ("shared", "exclusive", "background")
    MAX_SPANS = 4096   # exclusive holds remembered for `exclusive_spans`
    POLICIES = ("phase_fair", "writers_first")
    STATES = ("exclusive", "draining", "shared", "idle")

    def __init__(self, policy: str = "writers_first") -> None:
        if policy not in self.POLICIES:
            raise ValueError(f"unknown GPU lock policy {policy!r}; expected one of {self.POLICIES}")
        self.policy = policy
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0
        self._background = 0
        self._ends = 0        # exclusive sections ended so far
        self._admitted = 0    # shared holders let in by the last timing's end, not yet entered
        self._shared_waiting = 0
        self._seconds = dict.fromkeys(self.STATES, 0.0)
        self._since = time.perf_counter()
        self._spans: collections.deque[tuple[float, float]] = collections.deque(maxlen=self.MAX_SPANS)
        self._held_since = 0.0

    def _tick(self) -> None:
        """Charge the time since the last change to the state the lock was in (under `_cond`)."""
        now = time.perf_counter()
        if self._writer:
            state = "exclusive"
        elif self._readers or self._background:
            state = "draining" if self._waiting_writers else "shared"
        else:
            state = "idle"
        self._seconds[state] += now - self._since
        self._since = now

    def occupancy(self) -> dict[str, float]:
        """Seconds the lock has spent held exclusively (timing), draining (a timing waits for shared
        holders to leave), shared only, and idle: where a batch's GPU time went."""
        with self._cond:
            self._tick()
            return dict(self._seconds)

    def exclusive_spans(self, since: float = 0.0) -> list[tuple[float, float]]:
        """(start, end) of the exclusive holds (timings) that ended after `since`, oldest first, in
        `time.perf_counter` seconds (the last `MAX_SPANS`): when a batch's first timing could start,
        and the gaps in which no timing was ready."""
        with self._cond:
            return [span for span in self._spans if span[1] >= since]

    def acquire(self, mode: str) -> None:
        with self._cond:
            if mode == "shared":
                blocked = self._writer or (self._waiting_writers and not self._background)
                if blocked and self.policy == "phase_fair":
                    came = self._ends
                    self._shared_waiting += 1
                    try:
                        while self._writer or (self._waiting_writers and not self._background and self._ends == came):
                            self._cond.wait()
                    finally:
                        self._shared_waiting -= 1
                        if self._ends != came:   # let in by a timing's end (counted in _admitted then)
                            self._admitted = max(0, self._admitted - 1)
                elif blocked:
                    while self._writer or (self._waiting_writers and not self._background):
                        self._cond.wait()
                self._tick()
                self._readers += 1
            elif mode == "background":
                while self._writer or self._waiting_writers:
                    self._cond.wait()
                self._tick()
                self._background += 1
            elif mode == "exclusive":
                self._tick()
                self._waiting_writers += 1
                try:
                    while self._writer or self._readers or self._background or self._admitted > 0:
                        self._cond.wait()
                finally:
                    self._tick()
                    self._waiting_writers -= 1
                self._writer = True
                self._held_since = self._since
            else:
                raise ValueError(f"unknown lock mode {mode!r}")

    def release(self, mode: str) -> None:
        with self._cond:
            self._tick()
            if mode == "shared":
                self._readers = max(0, self._readers - 1)
            elif mode == "background":
                self._background = max(0, self._background - 1)
            else:
                if self._writer:
                    self._spans.append((self._held_since, self._since))
                self._writer = False
                self._ends += 1
                if self.policy == "phase_fair":   # everyone who waited for this timing goes next
                    self._admitted = self._shared_waiting
            self._cond.notify_all()

    @contextlib.contextmanager
    def hold(self, mode: str) -> Iterator[None]:
        self.acquire(mode)
        try:
            yield
        finally:
            self.release(mode)

    @property
    def state(self) -> tuple[int, bool, int]:
        """(shared holders, exclusive held, exclusive waiting)."""
        with self._cond:
            return self._readers, self._writer, self._waiting_writers

    @property
    def background(self) -> int:
        """Background holders."""
        with self._cond:
            return self._background


class MemoryBudget:
    """One GPU's memory for evaluations, handed out by footprint (bytes): `reserve(n)` waits until
    `n` more fits under `budget`, so that an evaluation never runs out of memory because of its
    neighbours. Requests are admitted in arrival order (a large one waiting is not overtaken by
    small ones, so it cannot starve); one larger than the whole budget is admitted when nothing
    else holds any, and runs alone rather than waiting for ever. A holder may `resize` its share
    once it has measured it: that never waits (growing may overcommit the budget until holders
    leave; later requests wait for that), so two holders growing at once cannot deadlock.
    """

    def __init__(self, budget: int) -> None:
        if budget <= 0:
            raise ValueError(f"memory budget must be > 0 bytes, got {budget}")
        self.budget = int(budget)
        self._cond = threading.Condition()
        self._used = 0
        self._holders = 0
        self._queue: collections.deque[int] = collections.deque()
        self._tickets = 0
        self.waited = 0        # reservations that had to wait
        self.alone = 0         # reservations over the whole budget (run with nothing beside them)
        self.peak_used = 0

    @property
    def used(self) -> int:
        with self._cond:
            return self._used

    @property
    def holders(self) -> int:
        with self._cond:
            return self._holders

    def acquire(self, n: int, timeout: float | None = None) -> bool:
        """Wait until `n` bytes fit (or nothing else is held) and take them; False on timeout."""
        n = max(0, int(n))
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            ticket = self._tickets
            self._tickets += 1
            self._queue.append(ticket)
            waited = False
            try:
                while not (self._queue[0] == ticket and (self._used + n <= self.budget or self._holders == 0)):
                    waited = True
                    left = None if end is None else end - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._cond.wait(left)
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()   # the next in line may fit now
            self._used += n
            self._holders += 1
            self.waited += waited
            self.alone += n > self.budget
            self.peak_used = max(self.peak_used, self._used)
            return True

    def resize(self, old: int, new: int) -> None:
        """A holder's share goes from `old` to `new` bytes (never waits; see the class docstring)."""
        with self._cond:
            self._used = max(0, self._used + max(0, int(new)) - max(0, int(old)))
            self.peak_used = max(self.peak_used, self._used)
            self._cond.notify_all()

    def release(self, n: int) -> None:
        with self._cond:
            self._used = max(0, self._used - max(0, int(n)))
            self._holders = max(0, self._holders - 1)
            self._cond.notify_all()

    @contextlib.contextmanager
    def reserve(self, n: int) -> Iterator[Reservation]:
        """`acquire(n)` for the block; the `Reservation` it yields can be resized inside it."""
        self.acquire(n)
        r = Reservation(self, n)
        try:
            yield r
        finally:
            self.release(r.bytes)


class Reservation:
    """A share of a `MemoryBudget` held by one evaluation."""

    def __init__(self, budget: MemoryBudget, n: int):
        self.budget, self.bytes = budget, max(0, int(n))

    def resize(self, n: int) -> None:
        n = max(0, int(n))
        self.budget.resize(self.bytes, n)
        self.bytes = n


def meminfo_bytes(field: str = "MemAvailable") -> int | None:
    """A /proc/meminfo field in bytes (None where it cannot be read)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def host_memory_limit(base: int | None, task_bytes: int | None, available: int | None,
                      multiple: float = 2.0) -> int | None:
    """A worker's resident-memory limit for one task: `base` (what the worker needs for itself:
    torch, CUDA, Inductor; the configured limit) plus `multiple` x the task's host bytes, capped
    by `available` (what the machine can still give this worker); never below `base`. None (no
    limit) stays None; an unknown task size or machine leaves the part it would set out."""
    if base is None:
        return None
    limit = base + int(multiple * max(0, task_bytes or 0))
    if available is not None:
        limit = min(limit, max(base, int(available)))
    return int(limit)


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


def _tree_sum(pid: int, read: Callable[[int], int]) -> int:
    """`read(p)` summed over `pid` and its live descendants (what cannot be read counts 0)."""
    total = 0
    for p in process_tree(pid):
        try:
            total += read(p)
        except (OSError, ValueError, IndexError):
            pass
    return total


def _cpu_ticks(p: int) -> int:
    fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15])   # utime stime cutime cstime


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, with reaped children's, such as compiler subprocesses) used so
    far by `pid` and its live descendants (Linux /proc; 0 for what cannot be read)."""
    return _tree_sum(pid, _cpu_ticks) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident bytes of one process (0 if it cannot be read)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def tree_rss_bytes(pid: int) -> int:
    """Resident bytes of `pid` and its live descendants."""
    return _tree_sum(pid, rss_bytes)


class Worker:
    """One worker process and its socket; requests are synchronous."""

    def __init__(self, role: Role, memory_limit_mb: float | None, gpu_fraction: float | None = None):
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
        next_memory = next_tree = 0.0
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
                if rss > limit:
                    self.kill()
                    raise WorkerFailure("memory", f"memory limit of {limit / 2**20:.0f} MB exceeded "
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

    def _spawn(self) -> Worker:
        w = Worker(self.role, self.memory_limit_mb, self.gpu_fraction)
        self.started += 1
        return w

    def acquire(self) -> Worker:
        """A free worker: the most recently used idle one with the fewest claims, or a new one."""
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
        with self._cond:
            self._busy.discard(w)
            if recycle or w.dead or self.closed:
                w.kill()
                if not self.closed:
                    self._idle.append(self._spawn())  # import torch now, not when the next job waits
            else:
                self._idle.append(w)
            self._cond.notify_all()

    def prestart(self) -> None:
        """Start one worker in the background if none is idle and there is room (no waiting)."""
        with self._cond:
            if not self.closed and not self._idle and len(self._busy) < self.size:
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
        for w in workers:
            w.close()
