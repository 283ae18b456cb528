"""The precompile role's side (`worker`): compile a candidate's kernels for a GPU target, never launch.

`run_precompile` is the handler of the pool's "precompile" role (see `precompile`, the parent
side): Triton's active driver is replaced by one that reports the target (e.g. sm_90) and every
``JITFunction.run`` becomes a warm-up, so the candidate's forward, run once on CPU tensors of the
task's shapes under the `RuntimeGuard`, compiles each kernel into Triton's cache and launches none.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any


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


def run_precompile(state: dict[str, Any], msg: dict[str, Any], progress: Any) -> dict[str, Any]:
    """The precompile role's handler (`worker`): compile, never launch, what the candidate's forward
    launches; the worker confined itself and gave Triton a fresh cache before this runs."""
    if not state.get("compile_only"):
        _install_compile_only()
        state["compile_only"] = True
    progress("precompile")
    return _compile_one(msg, state["tmpdir"])
