"""Compile a candidate's Triton kernels ahead of time on a CPU-only process, for a given GPU target.

The Ray pool's CPU actors call `Precompiler.precompile` before a GPU actor evaluates the same
candidate, and an `Evaluator(precompile_workers=N)` calls it while the candidate's reference job
runs, so its candidate worker (the scarcer resource) does not spend its time compiling. It runs
the candidate's ``forward`` once, in a sandboxed child process, on CPU tensors of the task's real
shapes with Triton's active driver replaced by one that reports the GPU's target (e.g. sm_90) and
with every launch turned into a warm-up: each ``JITFunction.run`` goes
through Triton's own binder and compiler (the same specialisation -- dtypes, 16-byte alignment,
integer values -- and the same options as on the GPU) and stops before launching. Triton writes
each compiled kernel to its file cache (``TRITON_CACHE_DIR``) under a key that hashes the kernel
source, the specialisation, the target and the options, so when the GPU worker on the same node
launches the same kernel with the same arguments it loads the cubin instead of compiling it.

This is a hint, never a judgement: the GPU actor still runs the whole pipeline, and a candidate
whose forward fails here (data-dependent control flow, hard-coded ``device="cuda"``, a kernel
that does not compile) is simply compiled on the GPU as it would be without a cluster. Static
guards run first (a rejected candidate is not executed at all); the import and forward run under
the evaluator's `RuntimeGuard` in a child process of its own session, killed on timeout or over
its memory limit, and replaced after any candidate that tripped a guard, stopped early or failed
in a way that may leave the process unusable; only a small JSON report comes back. Children are
kept between candidates (importing torch costs seconds), also after a forward that raised an
ordinary error under a clean guard (a quarter of an RL batch may do that).

Tested on CPU (the cache entries appear and a second run hits them) and on the GPU
(tests/test_eval_gpu.py: the GPU worker loads the kernel instead of compiling it again).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

REPORT_LIMIT = 1 << 20
MAX_REQUESTS = 200  # per child, then a fresh one (compiled JIT functions accumulate in Triton's registry)
_HEADER = struct.Struct(">I")


def _report(t0: float, **kw: Any) -> dict[str, Any]:
    out = {"ok": False, "kernels": [], "error": "", "skipped": None}
    out.update(kw)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def _child_env(os_sandbox: str = "auto") -> dict[str, str]:
    # The same environment a GPU candidate worker gets (Triton's cache key hashes some env vars),
    # minus the GPU: this process must never touch one.
    from kernelgym.evaluation.pool import Role

    env = Role("candidate", "cuda", os_sandbox=os_sandbox).env(None)
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


class _ChildFailure(Exception):
    pass


class _Child:
    """One compile-only process: requests on its stdin, reports on a private pipe."""

    def __init__(self, os_sandbox: str = "auto") -> None:
        self.tmpdir = tempfile.mkdtemp(prefix="kernelgym-precompile-")
        read_fd, write_fd = os.pipe()
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in kill(); a file, so a chatty child cannot block
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kernelgym.evaluation.precompile", str(write_fd), self.tmpdir],
                pass_fds=(write_fd,), env=_child_env(os_sandbox), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                stderr=self.log, start_new_session=True, close_fds=True)
        except OSError:
            os.close(read_fd)
            self.log.close()
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            raise
        finally:
            os.close(write_fd)
        self.rfd = read_fd
        self.requests = 0
        self.dead = False

    def request(self, msg: dict[str, Any], timeout: float, memory_limit: int | None) -> dict[str, Any]:
        from kernelgym.evaluation.pool import tree_rss_bytes

        self.requests += 1
        blob = json.dumps(msg).encode()
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(_HEADER.pack(len(blob)) + blob)
            self.proc.stdin.flush()
        except OSError as exc:
            raise _ChildFailure(f"precompile process unreachable: {exc}") from None
        deadline = time.monotonic() + timeout
        buf = b""
        need: int | None = None
        while True:
            ready, _, _ = select.select([self.rfd], [], [], 0.05)
            if ready:
                data = os.read(self.rfd, 65536)
                if not data:
                    raise _ChildFailure(f"precompile process ended (exit {self.proc.poll()}): {self.stderr_tail()}")
                buf += data
                if need is None and len(buf) >= _HEADER.size:
                    (need,) = _HEADER.unpack(buf[:_HEADER.size])
                    if need > REPORT_LIMIT:
                        raise _ChildFailure("precompile report too large")
                if need is not None and len(buf) >= _HEADER.size + need:
                    try:
                        rep = json.loads(buf[_HEADER.size:_HEADER.size + need].decode())
                    except (ValueError, UnicodeDecodeError):
                        raise _ChildFailure("malformed precompile report") from None
                    if not isinstance(rep, dict):
                        raise _ChildFailure("malformed precompile report")
                    return rep
                continue
            if self.proc.poll() is not None:
                raise _ChildFailure(f"precompile process ended (exit {self.proc.returncode}): {self.stderr_tail()}")
            if time.monotonic() > deadline:
                raise _ChildFailure(f"precompile exceeded {timeout:g} s")
            if memory_limit and tree_rss_bytes(self.proc.pid) > memory_limit:
                raise _ChildFailure(f"precompile exceeded its memory limit of {memory_limit / 2**20:.0f} MB")

    def stderr_tail(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            self.log.seek(0, os.SEEK_END)
            self.log.seek(max(0, self.log.tell() - 800))
            return self.log.read().decode("utf-8", "replace").strip()
        return ""

    def kill(self) -> None:
        if self.dead:
            return
        self.dead = True
        from kernelgym.evaluation.pool import process_tree

        pids = process_tree(self.proc.pid) if self.proc.poll() is None else []
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for p in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        for f in (self.proc.stdin, self.log):
            with contextlib.suppress(OSError):
                if f is not None:
                    f.close()
        with contextlib.suppress(OSError):
            os.close(self.rfd)
        shutil.rmtree(self.tmpdir, ignore_errors=True)


class Precompiler:
    """Up to `size` warm compile-only child processes; `precompile` may be called from threads."""

    def __init__(self, size: int = 1, *, memory_limit_mb: float | None = 8192, timeout: float = 120.0,
                 os_sandbox: str = "auto"):
        from kernelgym.evaluation.sandbox import check_mode

        self.os_sandbox = check_mode(os_sandbox)
        self.size = max(1, int(size))
        self.memory_limit = int(memory_limit_mb * 2**20) if memory_limit_mb else None
        self.timeout = float(timeout)
        self._idle: queue.LifoQueue[_Child] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(self.size)
        self._lock = threading.Lock()
        self._all: set[_Child] = set()
        self.closed = False
        self.started = 0

    def precompile(self, reference: Any, candidate: str, arch: int, *, mode: str = "strict", seed: int = 0,
                   timeout: float | None = None, warp_size: int = 32) -> dict[str, Any]:
        """Compile the kernels `candidate`'s forward launches for GPU target ``("cuda", arch, warp_size)``.

        reference: a `kernelgym.task.Task` or KernelBench-format source (for the init inputs and
        the inputs' shapes). Returns ``{"ok", "kernels": [{"kernel", "hash", "seconds"}], "error",
        "seconds", "skipped"}``; never raises for anything the candidate does.
        """
        from kernelgym.evaluation.extract import FormatError, check_format, extract_code
        from kernelgym.evaluation.guards.static import check_source as static_check
        from kernelgym.evaluation.protocol import MODES
        from kernelgym.task import Task

        t0 = time.perf_counter()
        ref_src = reference.source if isinstance(reference, Task) else reference
        if not isinstance(ref_src, str):
            raise TypeError(f"reference must be a Task or source text, got {type(reference).__name__}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected 'strict' or 'lenient'")
        try:
            code = extract_code(candidate).code
            check_format(code)
        except FormatError as exc:
            return _report(t0, skipped="format", error=str(exc))
        findings = static_check(code, mode)
        if findings:  # the GPU verdict will be hack_detected without running anything: nothing to compile
            return _report(t0, skipped="static_guards", error="; ".join(f.name for f in findings))
        msg = {"reference": ref_src, "candidate": code, "arch": int(arch), "warp_size": int(warp_size),
               "mode": mode, "seed": int(seed)}
        if self.closed:
            raise RuntimeError("Precompiler is closed")
        self._slots.acquire()
        child: _Child | None = None
        recycle = True
        try:
            try:
                child = self._idle.get_nowait()
            except queue.Empty:
                child = self._spawn()
            rep = child.request(msg, float(timeout or self.timeout), self.memory_limit)
            recycle = bool(rep.get("recycle")) or child.requests >= MAX_REQUESTS
        except _ChildFailure as exc:
            return _report(t0, error=str(exc))
        except OSError as exc:
            return _report(t0, error=f"could not start the precompile process: {exc}")
        finally:
            if child is not None:
                if recycle or self.closed:
                    child.kill()
                    with self._lock:
                        self._all.discard(child)
                else:
                    self._idle.put(child)
            self._slots.release()
        # The report comes from a process that ran candidate code: keep only plain fields of known names.
        kernels = [{"kernel": str(k.get("kernel", ""))[:200], "hash": str(k.get("hash", ""))[:100],
                    "seconds": float(k.get("seconds", 0.0))}
                   for k in rep.get("kernels", []) if isinstance(k, dict)][:1000]
        return _report(t0, ok=bool(rep.get("ok")) and bool(kernels), kernels=kernels,
                       error=str(rep.get("error", ""))[:2000])

    def warm(self) -> None:
        """Start the children now (they import torch in the background) instead of on first use."""
        with self._lock:
            missing = 0 if self.closed else self.size - len(self._all)
        for _ in range(max(0, missing)):
            self._idle.put(self._spawn())

    def _spawn(self) -> _Child:
        child = _Child(self.os_sandbox)
        with self._lock:
            self._all.add(child)
            self.started += 1
        return child

    def pids(self) -> list[int]:
        with self._lock:
            return [c.proc.pid for c in self._all if not c.dead]

    def close(self) -> None:
        """Kill every child (idempotent)."""
        self.closed = True
        with self._lock:
            children = list(self._all)
            self._all.clear()
        for c in children:
            c.kill()


def precompile(reference: Any, candidate: str, arch: int, *, mode: str = "strict", seed: int = 0,
               timeout: float = 120.0, memory_limit_mb: float | None = 8192, warp_size: int = 32) -> dict[str, Any]:
    """One-off `Precompiler.precompile` in a fresh child process (see the module docstring)."""
    p = Precompiler(1, memory_limit_mb=memory_limit_mb, timeout=timeout)
    try:
        return p.precompile(reference, candidate, arch, mode=mode, seed=seed, warp_size=warp_size)
    finally:
        p.close()


# ----------------------------------------------------------------------------- child process

class _TargetDriver:
    """A Triton driver that has no device but reports a GPU target, so the JIT compiles for it."""

    def __init__(self, target: Any):
        self.target = target

    @classmethod
    def is_active(cls) -> bool:
        return True

    def get_current_device(self) -> int:
        return 0

    def set_current_device(self, device: int) -> None:
        pass

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self) -> Any:
        return self.target

    def get_active_torch_device(self) -> Any:
        import torch

        return torch.device("cpu")


_COMPILED: list[dict[str, Any]] = []
_TARGET: list[Any] = []


def _install_compile_only() -> None:
    """Make every launch a compile without a launch, for the target in `_TARGET` (set per request)."""
    from triton.runtime import autotuner
    from triton.runtime.jit import JITFunction

    orig_run = JITFunction.run

    def run(self: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> Any:
        t = time.perf_counter()
        kernel = orig_run(self, *args, grid=grid, warmup=True, **kwargs)
        _COMPILED.append({"kernel": getattr(self, "__name__", "?"), "hash": str(getattr(kernel, "hash", "")),
                          "seconds": round(time.perf_counter() - t, 4)})
        return kernel

    JITFunction.run = run  # type: ignore[method-assign]

    def tune_run(self: Any, *args: Any, **kwargs: Any) -> Any:
        # Benchmarking needs a GPU; compile every (pruned) config instead, as Autotuner.warmup does.
        kwargs.pop("warmup", None)
        return self.warmup(*args, **kwargs)

    autotuner.Autotuner.run = tune_run  # type: ignore[method-assign]


def _compile_one(msg: dict[str, Any], tmpdir: str) -> dict[str, Any]:
    import collections
    import hashlib
    import types

    import torch
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver

    from kernelgym.evaluation.guards.runtime import RuntimeGuard
    from kernelgym.evaluation.jobs import crash_kind
    from kernelgym.task import exec_source

    target = GPUTarget("cuda", int(msg["arch"]), int(msg["warp_size"]))
    if not _TARGET or _TARGET[0] != target:
        _TARGET[:] = [target]
        driver.set_active(_TargetDriver(target))
    _COMPILED.clear()
    out: dict[str, Any] = {"ok": False, "kernels": _COMPILED, "error": "", "recycle": False}
    source = msg["candidate"]
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    filename = os.path.join(tmpdir, f"candidate_{digest}.py")
    name = f"kernelgym_precompile_{digest}"
    guard: RuntimeGuard | None = None
    try:
        ref = exec_source(msg["reference"], "kernelgym_precompile_reference")
        torch.manual_seed(msg["seed"])
        init_inputs = list(ref.get_init_inputs())
        inputs = list(ref.get_inputs())
        with open(filename, "w", encoding="utf-8") as fh:
            fh.write(source)
        guard = RuntimeGuard(msg["mode"], collections.Counter(), filename, "cpu")
        guard.install()
        module = types.ModuleType(name)
        module.__file__ = filename
        sys.modules[name] = module
        done = False
        try:
            with guard.sandboxed():
                exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102
                model = module.ModelNew(*init_inputs)
                with torch.no_grad():
                    model(*inputs)
                done = True
        finally:
            guard.finish()
        if not done or guard.tainted:
            out["recycle"] = True
            out["error"] = "candidate stopped early or tripped a runtime guard: " + "; ".join(
                f.name for f in guard.findings)
        else:
            out["ok"] = True
    except BaseException as exc:  # noqa: BLE001 - partial compiles are still useful; report them
        # A forward that raises an ordinary error under a clean guard leaves a usable process (as in
        # the evaluation's workers); anything else goes with this process. Replacing it costs
        # seconds of imports, and a batch has many such candidates.
        out["recycle"] = not (isinstance(exc, Exception) and guard is not None and not guard.tainted
                              and crash_kind(exc) is None)
        out["error"] = f"{type(exc).__name__}: {str(exc)[:1000]}"
    finally:
        sys.modules.pop(name, None)
        with contextlib.suppress(OSError):
            os.unlink(filename)
    return out


def _child(fd: int, tmpdir: str) -> int:
    stdin = sys.stdin.buffer
    os.dup2(2, 1)  # candidate prints go to stderr, never into a report
    from kernelgym.evaluation import sandbox

    # Confined before any candidate runs (see `sandbox`): it compiles into a cache of its own, so
    # under the OS sandbox its kernels serve only its own run (compile-ahead measured no gain).
    rep = sandbox.from_env("precompile", tmpdir, gpu_tools=True)
    if not rep.active and os.environ.get(sandbox.MODE_ENV, "auto") != "off":
        print(f"kernelgym: precompile process runs without an OS sandbox: {rep.why}", file=sys.stderr)
    import torch
    import torch._dynamo  # loaded before the guard snapshots, as in the workers
    import torch.utils._python_dispatch

    torch.set_num_threads(1)
    _install_compile_only()
    out = os.fdopen(fd, "wb")
    while True:
        head = stdin.read(_HEADER.size)
        if len(head) < _HEADER.size:
            return 0
        (n,) = _HEADER.unpack(head)
        msg = json.loads(stdin.read(n).decode())
        if rep.active:
            sandbox.fresh_triton_cache(tmpdir)
        out_rep = _compile_one(msg, tmpdir)
        blob = json.dumps(out_rep, default=str).encode()
        out.write(_HEADER.pack(len(blob)) + blob)
        out.flush()


if __name__ == "__main__":
    sys.exit(_child(int(sys.argv[1]), sys.argv[2]))
