"""Helpers shared by the jobs that run inside worker processes (reference, candidate, ptx)."""

from __future__ import annotations

import traceback
from typing import Any

MAX_MESSAGE = 2000


def to_device(obj: Any, device: str) -> Any:
    """Move every tensor in a nested list/tuple/dict to `device`."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, list):
        return [to_device(v, device) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_device(v, device) for v in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def clone_tree(obj: Any) -> Any:
    """Deep copy of the tensors in a nested structure (for inputs a forward may mutate)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, list):
        return [clone_tree(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(clone_tree(v) for v in obj)
    if isinstance(obj, dict):
        return {k: clone_tree(v) for k, v in obj.items()}
    return obj


def outputs_list(value: Any) -> list[Any]:
    """A forward's result as a flat list of outputs, detached and copied to the CPU right away."""
    import torch

    items = list(value) if isinstance(value, (list, tuple)) else [value]
    out = []
    for v in items:
        if isinstance(v, torch.Tensor):
            out.append(v.detach().to("cpu", copy=True))
        elif isinstance(v, (bool, int, float)):
            out.append(torch.as_tensor(v))
        else:
            out.append(f"<{type(v).__name__}>")
    return out


def describe(exc: BaseException, filename: str | None = None) -> str:
    """`Type: message`, plus the innermost line of `filename` (the candidate) in the traceback."""
    text = f"{type(exc).__name__}: {exc}".strip()
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE] + " ..."
    if filename:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
        if frames:
            f = frames[-1]
            text += f" (candidate line {f.lineno}: {(f.line or '').strip()[:200]})"
    return text


def exception_chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen and len(seen) < 20:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def is_compile_error(exc: BaseException) -> bool:
    """A Triton compilation failure (syntax/type error in a kernel, ptxas failure, resources)."""
    names = {"CompilationError", "PTXASError", "OutOfResources", "UnsupportedLanguageConstruct"}
    return any(c.__name__ in names for e in exception_chain(exc) for c in type(e).__mro__)


def crash_kind(exc: BaseException) -> str | None:
    """'out of memory' or 'CUDA error' when the exception means the process is unusable."""
    for e in exception_chain(exc):
        if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
            return "out of memory"
        msg = str(e)
        if "CUDA error" in msg or "illegal memory access" in msg or "CUDA out of memory" in msg:
            return "CUDA error"
    return None


def finding_dict(f: Any) -> dict[str, Any]:
    return {"name": str(f.name), "detail": str(getattr(f, "detail", "")), "line": getattr(f, "line", None)}


def launch_dict(rec: Any) -> dict[str, Any]:
    def plain(v: Any) -> Any:
        return v if isinstance(v, (int, float, bool, str, type(None))) else repr(v)

    return {
        "kernel": str(rec.kernel),
        "signature": {str(k): str(v) for k, v in dict(rec.signature).items()},
        "constexprs": {str(k): plain(v) for k, v in dict(rec.constexprs).items()},
        "grid": [int(g) for g in rec.grid],
        "num_warps": rec.num_warps, "num_stages": rec.num_stages,
    }


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
