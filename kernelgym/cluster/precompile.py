"""Compile a candidate's Triton kernels ahead of time on a CPU-only process, for a given GPU target.

The Ray pool's CPU actors call `precompile` before a GPU actor evaluates the same candidate. It
runs the candidate's ``forward`` once, in a sandboxed subprocess, on CPU tensors of the task's real
shapes with Triton's active driver replaced by one that reports the GPU's target (e.g. sm_90) and
with every launch turned into a warm-up: each ``JITFunction.run`` goes through Triton's own binder
and compiler (the same specialisation -- dtypes, 16-byte alignment, integer values -- and the same
options as on the GPU) and stops before launching. Triton writes each compiled kernel to its file
cache (``TRITON_CACHE_DIR``) under a key that hashes the kernel source, the specialisation, the
target and the options, so when the GPU worker on the same node launches the same kernel with the
same arguments it loads the cubin instead of compiling it.

This is a hint, never a judgement: the GPU actor still runs the whole pipeline, and a candidate
whose forward fails here (data-dependent control flow, hard-coded ``device="cuda"``, a kernel
that does not compile) is simply compiled on the GPU as it would be without a cluster. Static
guards run first (a rejected candidate is not executed at all), the import and forward run under
the evaluator's `RuntimeGuard` in a subprocess of its own (own session, killed on timeout or over
its memory limit), and only a small JSON report comes back.

Tested on CPU (the cache entries appear and a second run hits them); that a GPU worker then hits
the same entries is by construction of Triton's cache key and has not been measured.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

REPORT_LIMIT = 1 << 20
POLL_S = 0.05


def precompile(reference: Any, candidate: str, arch: int, *, mode: str = "strict", seed: int = 0,
               timeout: float = 120.0, memory_limit_mb: float | None = 8192,
               warp_size: int = 32) -> dict[str, Any]:
    """Compile the kernels `candidate`'s forward launches for GPU target `("cuda", arch, warp_size)`.

    reference: a `kernelgym.task.Task` or KernelBench-format source (for the init inputs and the
    inputs' shapes). Returns ``{"ok", "kernels": [{"kernel", "hash", "seconds"}], "error",
    "seconds", "skipped"}``; never raises for anything the candidate does.
    """
    from kernelgym.evaluation.extract import FormatError, check_format, extract_code
    from kernelgym.evaluation.guards.static import check_source as static_check
    from kernelgym.task import Task

    t0 = time.perf_counter()
    ref_src = reference.source if isinstance(reference, Task) else reference
    if not isinstance(ref_src, str):
        raise TypeError(f"reference must be a Task or source text, got {type(reference).__name__}")
    if mode not in ("strict", "lenient"):
        raise ValueError(f"unknown mode {mode!r}; expected 'strict' or 'lenient'")
    try:
        code = extract_code(candidate).code
        check_format(code)
    except FormatError as exc:
        return _report(t0, skipped="format", error=str(exc))
    findings = static_check(code, mode)
    if findings:  # the GPU verdict will be hack_detected without running anything: nothing to compile
        return _report(t0, skipped="static_guards", error="; ".join(f.name for f in findings))
    tmpdir = tempfile.mkdtemp(prefix="kernelgym-precompile-")  # made and removed here: a killed child leaves none
    msg = {"reference": ref_src, "candidate": code, "arch": int(arch), "warp_size": int(warp_size),
           "mode": mode, "seed": int(seed), "tmpdir": tmpdir}
    try:
        return _run_child(msg, t0, timeout, memory_limit_mb)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _report(t0: float, **kw: Any) -> dict[str, Any]:
    out = {"ok": False, "kernels": [], "error": "", "skipped": None}
    out.update(kw)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def _child_env() -> dict[str, str]:
    # The same environment a GPU candidate worker gets (Triton's cache key hashes some env vars),
    # minus the GPU: this process must never touch one.
    from kernelgym.evaluation.pool import Role

    env = Role("candidate", "cuda").env(None)
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def _run_child(msg: dict[str, Any], t0: float, timeout: float, memory_limit_mb: float | None) -> dict[str, Any]:
    from kernelgym.evaluation.pool import process_tree, tree_rss_bytes

    read_fd, write_fd = os.pipe()
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed below; a file, not a pipe, so a chatty candidate cannot block
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kernelgym.cluster.precompile", str(write_fd)],
            pass_fds=(write_fd,), env=_child_env(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=log, start_new_session=True, close_fds=True)
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        log.close()
        return _report(t0, error=f"could not start the precompile process: {exc}")
    os.close(write_fd)
    limit = int(memory_limit_mb * 2**20) if memory_limit_mb else None
    chunks: list[bytes] = []
    error = ""
    try:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(msg).encode())
        proc.stdin.close()
        os.set_blocking(read_fd, False)
        deadline = time.monotonic() + timeout
        size = 0
        while True:
            try:
                data = os.read(read_fd, 65536)
            except BlockingIOError:
                data = None
            if data:
                size += len(data)
                if size > REPORT_LIMIT:
                    error = "report too large"
                    break
                chunks.append(data)
                continue
            if data == b"" and proc.poll() is not None:
                break
            if time.monotonic() > deadline:
                error = f"precompile exceeded {timeout:g} s"
                break
            if limit and tree_rss_bytes(proc.pid) > limit:
                error = f"precompile exceeded its memory limit of {memory_limit_mb:g} MB"
                break
            time.sleep(POLL_S)
    except OSError as exc:
        error = f"precompile process failed: {exc}"
    finally:
        os.close(read_fd)
        pids = process_tree(proc.pid) if proc.poll() is None else []
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        log.seek(0, os.SEEK_END)
        log.seek(max(0, log.tell() - 4000))
        stderr = log.read()
        log.close()
    if error:
        return _report(t0, error=error)
    try:
        rep = json.loads(b"".join(chunks).decode())
    except (ValueError, UnicodeDecodeError):
        tail = (stderr or b"").decode("utf-8", "replace").strip()[-800:]
        return _report(t0, error=f"precompile process ended without a report (exit {proc.returncode}): {tail}")
    # The report comes from a process that ran candidate code: keep only plain fields of known names.
    kernels = [{"kernel": str(k.get("kernel", ""))[:200], "hash": str(k.get("hash", ""))[:100],
                "seconds": float(k.get("seconds", 0.0))}
               for k in rep.get("kernels", []) if isinstance(k, dict)][:1000]
    return _report(t0, ok=bool(rep.get("ok")) and bool(kernels), kernels=kernels, error=str(rep.get("error", ""))[:2000])


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


def _install_compile_only(arch: int, warp_size: int, compiled: list[dict[str, Any]]) -> None:
    """Point Triton at the GPU target and make every launch a compile without a launch."""
    from triton.backends.compiler import GPUTarget
    from triton.runtime import autotuner
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    driver.set_active(_TargetDriver(GPUTarget("cuda", arch, warp_size)))
    orig_run = JITFunction.run

    def run(self: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> Any:
        t = time.perf_counter()
        kernel = orig_run(self, *args, grid=grid, warmup=True, **kwargs)
        compiled.append({"kernel": getattr(self, "__name__", "?"), "hash": str(getattr(kernel, "hash", "")),
                         "seconds": round(time.perf_counter() - t, 4)})
        return kernel

    JITFunction.run = run  # type: ignore[method-assign]

    def tune_run(self: Any, *args: Any, **kwargs: Any) -> Any:
        # Benchmarking needs a GPU; compile every (pruned) config instead, as Autotuner.warmup does.
        kwargs.pop("warmup", None)
        return self.warmup(*args, **kwargs)

    autotuner.Autotuner.run = tune_run  # type: ignore[method-assign]


def _child(fd: int) -> int:
    import collections
    import hashlib
    import types

    msg = json.loads(sys.stdin.read())
    os.dup2(2, 1)  # candidate prints go to stderr, never into the report
    import torch
    import torch._dynamo  # loaded before the guard snapshots, as in the workers
    import torch.utils._python_dispatch

    torch.set_num_threads(1)
    compiled: list[dict[str, Any]] = []
    out: dict[str, Any] = {"ok": False, "kernels": compiled, "error": ""}
    try:
        _install_compile_only(msg["arch"], msg["warp_size"], compiled)
        from kernelgym.evaluation.guards.runtime import RuntimeGuard
        from kernelgym.task import exec_source

        ref = exec_source(msg["reference"], "kernelgym_precompile_reference")
        torch.manual_seed(msg["seed"])
        init_inputs = list(ref.get_init_inputs())
        inputs = list(ref.get_inputs())
        source = msg["candidate"]
        filename = os.path.join(msg["tmpdir"], f"candidate_{hashlib.sha256(source.encode()).hexdigest()[:16]}.py")
        with open(filename, "w", encoding="utf-8") as fh:
            fh.write(source)
        guard = RuntimeGuard(msg["mode"], collections.Counter(), filename, "cpu")
        guard.install()
        module = types.ModuleType("kernelgym_precompile_candidate")
        module.__file__ = filename
        sys.modules[module.__name__] = module
        done = False
        with guard.sandboxed():
            exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102
            model = module.ModelNew(*init_inputs)
            with torch.no_grad():
                model(*inputs)
            done = True
        guard.finish()
        if not done or guard.findings:
            out["error"] = "candidate stopped early or tripped a runtime guard: " + "; ".join(
                f.name for f in guard.findings)
        else:
            out["ok"] = True
    except BaseException as exc:  # noqa: BLE001 - partial compiles are still useful; report them
        out["error"] = f"{type(exc).__name__}: {str(exc)[:1000]}"
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(_child(int(sys.argv[1])))
