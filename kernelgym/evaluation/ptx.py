"""sm_90 compile check of the Triton kernels a candidate launched, runnable on a CPU-only machine.

Runs in a PTX worker (no TRITON_INTERPRET, no GPU): the candidate module is imported there under
the sandbox so that its `@triton.jit` functions exist as real JITFunctions, then each launch seen
under the interpreter is compiled with `triton.compile` for `GPUTarget("cuda", 90, 32)` (Triton
bundles ptxas, so PTX and a cubin come out without a driver). This catches kernels that the
interpreter accepts but the compiler rejects.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kernelgym.evaluation.jobs import describe
from kernelgym.evaluation.protocol import MODE_STRICT

TARGET = ("cuda", 90, 32)
# Shared memory one block may use on sm_90 (an H100 / H200: 227 KiB with the opt-in Triton makes).
# A kernel that compiles but asks for more is refused at launch ("out of resource: shared
# memory"): the check reports it, so the interpreter's verdict is the GPU's (a KernelBench level-2
# candidate once passed here and failed on an H100 with 327680 bytes).
SM90_SHARED_LIMIT = 232448


def find_jit_functions(namespace: dict[str, Any]) -> dict[str, Any]:
    """name -> JITFunction for every jit function reachable from module globals and classes."""
    from triton.runtime.jit import JITFunction

    found: dict[str, Any] = {}

    def visit(obj: Any, depth: int) -> None:
        for _ in range(4):  # Autotuner / Heuristics wrap the JITFunction in `.fn`
            if isinstance(obj, JITFunction):
                found.setdefault(obj.__name__, obj)
                return
            inner = getattr(obj, "fn", None) if type(obj).__module__.startswith("triton") else None
            if inner is None:
                break
            obj = inner
        if isinstance(obj, (staticmethod, classmethod)):
            visit(obj.__func__, depth)
        elif isinstance(obj, type) and depth < 2:
            for v in list(vars(obj).values()):
                visit(v, depth + 1)

    for value in list(namespace.values()):
        visit(value, 0)
    return found


def compile_launch(fn: Any, launch: dict[str, Any]) -> dict[str, Any]:
    """Compile one launch specialisation for sm_90; a dict with ok, error, sizes."""
    import triton
    from triton.backends.compiler import GPUTarget

    signature = dict(launch["signature"])
    constexprs = dict(launch["constexprs"])
    for p in getattr(fn, "params", []):
        if p.name not in signature and p.is_constexpr and p.has_default:
            signature[p.name] = "constexpr"
            constexprs[p.name] = p.default
    options: dict[str, Any] = {}
    if launch.get("num_warps"):
        options["num_warps"] = int(launch["num_warps"])
    if launch.get("num_stages"):
        options["num_stages"] = int(launch["num_stages"])
    t0 = time.perf_counter()
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    kernel = triton.compile(src, target=GPUTarget(*TARGET), options=options)
    md = kernel.metadata
    shared = getattr(md, "shared", None)
    out = {
        "kernel": launch["kernel"], "ok": True, "seconds": round(time.perf_counter() - t0, 3),
        "ptx_bytes": len(kernel.asm.get("ptx", "")), "cubin_bytes": len(kernel.asm.get("cubin", b"")),
        "shared_bytes": shared, "num_warps": getattr(md, "num_warps", None),
    }
    if isinstance(shared, int) and shared > SM90_SHARED_LIMIT:
        out.update(ok=False, error=f"out of resource: shared memory, required {shared} bytes, an sm_90 block has "
                                   f"{SM90_SHARED_LIMIT} (smaller blocks or fewer num_stages)")
    return out


def run_ptx_check(state: dict[str, Any], msg: dict[str, Any], progress: Callable[[str], None]) -> dict[str, Any]:
    """Import the candidate (sandboxed) and compile every recorded launch for sm_90."""
    import collections
    import hashlib
    import os
    import sys
    import types

    from kernelgym.evaluation.guards.runtime import RuntimeGuard

    progress("ptx import")
    source = msg["source"]
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    filename = os.path.join(state["tmpdir"], f"candidate_{digest}.py")
    with open(filename, "w", encoding="utf-8") as fh:
        fh.write(source)
    guard = RuntimeGuard(msg.get("mode", MODE_STRICT), collections.Counter(), filename, "cpu")
    guard.install()
    name = f"kernelgym_ptx_{digest}"
    module = types.ModuleType(name)
    module.__file__ = filename
    sys.modules[name] = module
    result: dict[str, Any] = {"target": "sm_90", "kernels": [], "ok": True}
    try:
        try:
            done = False
            with guard.sandboxed():
                exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102
                done = True
            if not done:
                raise RuntimeError("candidate module exited early")
        except BaseException as exc:  # noqa: BLE001
            result.update(ok=False, error=f"import for the ptx check failed: {describe(exc, filename)}")
            return result
        fns = find_jit_functions(module.__dict__)
        for launch in msg["launches"]:
            progress(f"ptx {launch['kernel']}")
            fn = fns.get(launch["kernel"])
            if fn is None:
                result["kernels"].append({"kernel": launch["kernel"], "ok": None,
                                          "error": "kernel not reachable from module globals; not checked"})
                continue
            try:
                with guard.sandboxed():
                    got = compile_launch(fn, launch)
                result["kernels"].append(got)
                result["ok"] = result["ok"] and got["ok"]
            except BaseException as exc:  # noqa: BLE001
                result["ok"] = False
                result["kernels"].append({"kernel": launch["kernel"], "ok": False, "error": describe(exc)})
    finally:
        sys.modules.pop(name, None)
        try:
            guard.finish()
            result["tainted"] = bool(guard.tainted)
        except BaseException:  # noqa: BLE001
            result["tainted"] = True
    return result
