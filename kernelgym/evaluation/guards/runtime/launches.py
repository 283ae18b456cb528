"""Launch wrapping: every Triton launch goes through the active guard.

``JITFunction.run`` and ``InterpretedFunction.run`` are replaced at class level (compiled launches
and the interpreter alike; Triton's ``knobs.runtime.launch_enter_hook`` does not fire under the
interpreter). While a guard is active (`STATE.active`) each launch is handed to its `_launch`,
which records it (`describe` here) and which storages it wrote.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from kernelgym.evaluation.guards.runtime.state import STATE
from kernelgym.evaluation.guards.runtime.storage import tensors


@dataclass
class LaunchRecord:
    """One Triton launch (unique per kernel and specialisation in `RuntimeGuard.launches`)."""

    kernel: str
    signature: dict[str, str]
    constexprs: dict[str, Any]
    grid: tuple[int, ...]
    num_warps: int | None = None
    num_stages: int | None = None
    stream: int | None = None

    @property
    def key(self) -> tuple:
        """Kernel and specialisation: launches with the same key are recorded once."""
        return (self.kernel, tuple(sorted(self.signature.items())),
                tuple(sorted((k, repr(v)) for k, v in self.constexprs.items())), self.num_warps, self.num_stages)


_DTYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
          torch.int32: "i32", torch.int64: "i64", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8",
          torch.bool: "i1"}
for _n, _s in (("float8_e4m3fn", "fp8e4nv"), ("float8_e5m2", "fp8e5")):
    if hasattr(torch, _n):
        _DTYPE[getattr(torch, _n)] = _s


def _type_str(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        return "*" + _DTYPE.get(v.dtype, str(v.dtype).replace("torch.", ""))
    if isinstance(v, bool):
        return "i1"
    if isinstance(v, int):
        return "i32" if -(2**31) <= v < 2**31 else "i64"
    if isinstance(v, float):
        return "fp32"
    if v is None:
        return "constexpr"
    if type(v).__name__ == "TensorDescriptor" and isinstance(getattr(v, "base", None), torch.Tensor):
        return _descriptor_type(v)
    return type(v).__name__


def _descriptor_type(v: Any) -> str:
    """A host-side TMA tensor descriptor's type as Triton's compiler reads it (its signature
    string, e.g. ``tensordesc<fp32[64, 32]>``), so the sm_90 compile check can compile the launch:
    Triton's own `mangle_type` where it has one, else the same text built here."""
    try:
        from triton.runtime.jit import mangle_type

        got = mangle_type(v)
        if isinstance(got, str) and got.startswith("tensordesc<"):
            return got
    except Exception:  # noqa: BLE001 - an older or newer Triton without it: build the text
        pass
    return f"tensordesc<{_DTYPE.get(v.base.dtype, str(v.base.dtype))}{[int(b) for b in v.block_shape]}>"


def _plain(v: Any) -> Any:
    if isinstance(v, (int, float, bool, str, type(None))):
        return v
    inner = getattr(v, "value", None)  # tl.constexpr
    if isinstance(inner, (int, float, bool, str, type(None))):
        return inner
    return repr(v)


_SIG_CACHE: dict[int, tuple[Any, inspect.Signature, frozenset]] = {}


def _kernel_info(kfn: Any) -> tuple[inspect.Signature, frozenset]:
    fn = getattr(kfn, "fn", kfn)
    hit = _SIG_CACHE.get(id(fn))
    if hit is not None and hit[0] is fn:
        return hit[1], hit[2]
    sig = inspect.signature(fn)
    params = getattr(kfn, "params", None)
    if params is not None:
        consts = frozenset(p.name for p in params if getattr(p, "is_constexpr", False))
    else:
        consts = frozenset(n for n, p in sig.parameters.items() if "constexpr" in str(p.annotation))
    _SIG_CACHE[id(fn)] = (fn, sig, consts)
    return sig, consts


def describe(kfn: Any, args: tuple, grid: Any, kwargs: dict) -> tuple[LaunchRecord, Any, list[torch.Tensor]]:
    """The record of one launch (without its stream), the grid to launch with, and its tensors.

    A grid lambda is called here, in the open, so that torch work hidden in it is recorded.
    """
    name = getattr(getattr(kfn, "fn", kfn), "__name__", "?")
    try:
        sig, consts = _kernel_info(kfn)
        bound = sig.bind_partial(*args, **{k: v for k, v in kwargs.items() if k in sig.parameters})
        bound.apply_defaults()
        values = dict(bound.arguments)
    except (TypeError, ValueError):
        sig, consts, values = None, frozenset(), {}
    if callable(grid):
        meta = dict(values)
        meta.update({k: v for k, v in kwargs.items() if k not in meta})
        grid = grid(meta)
    grid_t = tuple(int(g) for g in (grid if isinstance(grid, (tuple, list)) else (grid,)))
    # Triton gets the resolved grid as it came (a tuple made of ints; anything else unchanged), so
    # a grid its launcher rejects (Triton 3.6 wants a sequence, not an int) fails here too.
    launch_grid = grid_t if isinstance(grid, (tuple, list)) else grid
    signature = {k: ("constexpr" if k in consts else _type_str(v)) for k, v in values.items()}
    constexprs = {k: _plain(v) for k, v in values.items() if k in consts or v is None}
    found = [t for v in [*args, *kwargs.values()] for t in tensors(v)]
    record = LaunchRecord(name, signature, constexprs, grid_t, kwargs.get("num_warps"), kwargs.get("num_stages"))
    return record, launch_grid, found


def _make_run(orig: Callable[..., Any]) -> Callable[..., Any]:
    def run(self: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> Any:
        guard = STATE.active
        if guard is None or warmup:
            return orig(self, *args, grid=grid, warmup=warmup, **kwargs)
        return guard._launch(orig, self, args, grid, kwargs)

    run.__kernelgym_wrapped__ = orig  # type: ignore[attr-defined]
    run.__name__ = "run"
    return run


def _launch_classes() -> list[type]:
    from triton.runtime import jit

    classes: list[type] = [jit.JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction

        classes.append(InterpretedFunction)
    except ImportError:  # a Triton without the interpreter
        pass
    return classes


def wrap_launches() -> None:
    """Route the launches of every Triton launch class through `STATE.active` (once per class)."""
    for cls in _launch_classes():
        if not hasattr(cls.__dict__.get("run"), "__kernelgym_wrapped__"):
            cls.run = _make_run(cls.__dict__["run"])
