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
Under the OS sandbox the worker compiles into a cache of its own (it may write nowhere shared);
after each request this side archives that cache's regular files for the candidate's code
(`triton_cache.file_precompiled`) and the confined GPU worker unpacks them into its fresh cache
before it runs that same code (`triton_cache.fresh_triton_cache`).

This is a hint, never a judgement: the GPU actor still runs the whole pipeline, and a candidate
whose forward fails here (data-dependent control flow, hard-coded ``device="cuda"``, a kernel
that does not compile) is simply compiled on the GPU as it would be without a cluster. Static
guards run first (a rejected candidate is not executed at all); the import and forward run under
the evaluator's `RuntimeGuard` in a worker of the pool's "precompile" role (`pool.RolePool`, the
same transport, deadline, memory polling and kill as every other worker; `compile_only.run_precompile`
is its handler), confined by the OS sandbox and replaced after any candidate that tripped a guard, stopped
early or failed in a way that may leave the process unusable; only a small report comes back.
Workers are kept between candidates, also after a forward that raised an ordinary error under a
clean guard (a quarter of an RL batch may do that).

Tested on CPU (the cache entries appear and a second run hits them) and on the GPU
(tests/test_eval_gpu.py: the GPU worker loads the kernel instead of compiling it again).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

MAX_REQUESTS = 200  # per child, then a fresh one (compiled JIT functions accumulate in Triton's registry)


def _report(t0: float, **kw: Any) -> dict[str, Any]:
    out = {"ok": False, "kernels": [], "error": "", "skipped": None, "filed": 0}
    out.update(kw)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


class Precompiler:
    """Up to `size` warm compile-only child processes; `precompile` may be called from threads."""

    def __init__(self, size: int = 1, *, memory_limit_mb: float | None = 8192, timeout: float = 120.0,
                 os_sandbox: str = "auto"):
        from kernelgym.evaluation.pool import Role, RolePool
        from kernelgym.evaluation.sandbox import check_mode

        self.os_sandbox = check_mode(os_sandbox)
        # Where confined children's kernels are filed, fixed now: the GPU workers started from this
        # environment derive the same folder (`triton_cache.precompiled_root`).
        self.store: str | None = None
        if self.os_sandbox != "off":
            from kernelgym.evaluation.triton_cache import precompiled_root

            self.store = precompiled_root()
        self.size = max(1, int(size))
        self.memory_limit_mb = memory_limit_mb
        self.timeout = float(timeout)
        self.closed = False
        # Workers of their own role: the candidate's environment for the GPU (Triton's cache key
        # hashes some variables) minus the GPU itself, which this process must never touch.
        self._pool = RolePool(Role("precompile", "cuda", None, self.os_sandbox), self.size, memory_limit_mb)

    @property
    def started(self) -> int:
        """Compile processes started so far (first starts and replacements)."""
        return self._pool.started

    def precompile(self, reference: Any, candidate: str, arch: int, *, mode: str = "strict", seed: int = 0,
                   timeout: float | None = None, warp_size: int = 32) -> dict[str, Any]:
        """Compile the kernels `candidate`'s forward launches for GPU target ``("cuda", arch, warp_size)``.

        reference: a `kernelgym.task.Task` or KernelBench-format source (for the init inputs and
        the inputs' shapes). Returns ``{"ok", "kernels": [{"kernel", "hash", "seconds"}], "error",
        "seconds", "skipped", "filed"}`` (filed: cache files handed on for a confined GPU worker,
        `triton_cache.file_precompiled`); never raises for anything the candidate does.
        """
        from kernelgym.evaluation.extract import FormatError, check_format, extract_code
        from kernelgym.evaluation.guards.static import check_source as static_check
        from kernelgym.evaluation.pool import WorkerFailure
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
        msg = {"op": "precompile", "reference": ref_src, "candidate": code, "arch": int(arch),
               "warp_size": int(warp_size), "mode": mode, "seed": int(seed)}
        if self.closed:
            raise RuntimeError("Precompiler is closed")
        try:
            w = self._pool.acquire()
        except RuntimeError:
            raise RuntimeError("Precompiler is closed") from None
        except OSError as exc:
            return _report(t0, error=f"could not start the precompile process: {exc}")
        recycle = True
        filed = 0
        try:
            w.evaluations += 1
            rep = w.request(msg, float(timeout or self.timeout))
            if rep.get("status") == "internal_error":
                return _report(t0, error=f"precompile process failed: {str(rep.get('error', ''))[:2000]}")
            recycle = bool(rep.get("recycle")) or w.evaluations >= MAX_REQUESTS
            if self.store is not None:
                # Confined, the worker compiled into a cache of its own in its scratch folder (made
                # here): file its kernels where this candidate's (confined) GPU worker reads them,
                # from here, never from the worker.
                from kernelgym.evaluation.triton_cache import file_precompiled

                with contextlib.suppress(OSError):   # e.g. a read-only home: the GPU worker compiles
                    filed = file_precompiled(w.scratch, code, root=self.store)
        except WorkerFailure as exc:
            return _report(t0, error=f"precompile process: {exc}")
        finally:
            self._pool.release(w, recycle=recycle)
        # The report comes from a process that ran candidate code: keep only plain fields of known names.
        kernels = [{"kernel": str(k.get("kernel", ""))[:200], "hash": str(k.get("hash", ""))[:100],
                    "seconds": float(k.get("seconds", 0.0))}
                   for k in rep.get("kernels", []) if isinstance(k, dict)][:1000]
        return _report(t0, ok=bool(rep.get("ok")) and bool(kernels), kernels=kernels,
                       error=str(rep.get("error", ""))[:2000], filed=filed)

    def warm(self) -> None:
        """Start the compile processes now (without waiting for them) instead of on first use."""
        if not self.closed:
            self._pool.prestart(self.size)

    def pids(self) -> list[int]:
        return self._pool.pids()

    def close(self) -> None:
        """Stop every compile process (idempotent)."""
        self.closed = True
        self._pool.shutdown()


def precompile(reference: Any, candidate: str, arch: int, *, mode: str = "strict", seed: int = 0,
               timeout: float = 120.0, memory_limit_mb: float | None = 8192, warp_size: int = 32) -> dict[str, Any]:
    """One-off `Precompiler.precompile` in a fresh worker process (see the module docstring)."""
    p = Precompiler(1, memory_limit_mb=memory_limit_mb, timeout=timeout)
    try:
        return p.precompile(reference, candidate, arch, mode=mode, seed=seed, warp_size=warp_size)
    finally:
        p.close()
