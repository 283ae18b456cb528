"""Patching detection: identity snapshots of what candidate code must not replace.

At install the guard records, for torch, triton, time, builtins, math, sys, os, threading and every
loaded kernelgym module (and the classes they define), which object each callable, module,
property or static/class method attribute is; after every sandboxed block and forward the
identities are compared again. Replaced, deleted or added attributes are a ``patching`` finding.
"""

from __future__ import annotations

import builtins
import math
import operator
import os
import sys
import threading
import types
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from kernelgym.evaluation.guards import Finding

_MISSING = object()


def _watched_owners() -> list[tuple[str, Any]]:
    import time

    import triton
    import triton.language as tl
    from triton.runtime import jit

    owners: list[tuple[str, Any]] = [
        ("torch", torch), ("torch.nn.functional", torch.nn.functional), ("torch.nn", torch.nn),
        ("torch.Tensor", torch.Tensor), ("torch.nn.Module", torch.nn.Module), ("torch.cuda", torch.cuda),
        ("torch.cuda.Event", torch.cuda.Event), ("triton", triton), ("triton.language", tl),
        ("triton.runtime.jit", jit), ("JITFunction", jit.JITFunction), ("KernelInterface", jit.KernelInterface),
        ("time", time), ("builtins", builtins), ("math", math), ("sys", sys), ("os", os), ("threading", threading),
        ("threading.Thread", threading.Thread),
    ]
    interp = sys.modules.get("triton.runtime.interpreter")
    if interp is not None:
        owners += [("triton.runtime.interpreter", interp), ("InterpretedFunction", interp.InterpretedFunction),
                   ("GridExecutor", interp.GridExecutor)]
    for name, mod in list(sys.modules.items()):
        if (name == "kernelgym" or name.startswith("kernelgym.")) and mod is not None:
            owners.append((name, mod))
            # The evaluator's own classes (RuntimeGuard.after_forward = ... would silence it).
            for attr, v in list(vars(mod).items()):
                if isinstance(v, type) and getattr(v, "__module__", None) == name:
                    owners.append((f"{name}.{attr}", v))
    return owners


_WATCHED_TYPES = (types.ModuleType, property, classmethod, staticmethod)


def _watchable(v: Any) -> bool:
    return callable(v) or isinstance(v, _WATCHED_TYPES)


class Owned(NamedTuple):
    """One watched owner at snapshot time: its watched attributes (as a dict, and as parallel key
    and value tuples for the fast comparison) and every attribute name it had."""

    owner: Any
    before: dict[str, Any]
    keys: tuple[str, ...]
    values: tuple[Any, ...]
    known: frozenset[str]


def snapshot() -> dict[str, Owned]:
    """The identities of every watched attribute of every watched owner, now."""
    snap: dict[str, Owned] = {}
    for name, owner in _watched_owners():
        try:
            items = dict(vars(owner))
        except TypeError:
            continue
        before = {k: v for k, v in items.items() if callable(v) or isinstance(v, _WATCHED_TYPES)}
        snap[name] = Owned(owner, before, tuple(before), tuple(before.values()), frozenset(items))
    return snap


def _disable_dynamo_code() -> Any:
    """The code of torch's ``_disable_dynamo`` wrappers (one code object for all), or None."""
    make = getattr(torch, "_disable_dynamo", None)
    code = getattr(make(lambda: None), "__code__", None) if callable(make) else None
    return code if code is not None and "fn" in code.co_freevars else None


_DISABLE_DYNAMO_CODE = _disable_dynamo_code()


def _dynamo_rewrap(old: Any, new: Any) -> bool:
    """`new` is torch's own ``_disable_dynamo`` wrapper around `old`: what importing torch._dynamo
    makes of ``torch.manual_seed``. Its closure is read now, so a wrapper whose function was
    swapped after is not one."""
    code = getattr(new, "__code__", None)
    if code is None or code is not _DISABLE_DYNAMO_CODE:
        return False
    cells = getattr(new, "__closure__", None) or ()
    i = code.co_freevars.index("fn")
    try:
        return i < len(cells) and cells[i].cell_contents is old
    except ValueError:   # an empty cell
        return False


# Watched attribute ("owner.attr") -> the object torch._dynamo's own import put there while
# `lazy_dynamo` watched for it: the one change the patching check lets pass.
_DYNAMO_INSTALLED: dict[str, Any] = {}


def accept_dynamo_import(snap: dict[str, Owned]) -> dict[str, Any]:
    """Called by `lazy_dynamo` right after torch._dynamo's import, with a snapshot taken just
    before it: the watched attributes that import replaced by torch's own wrapper around the same
    function (``torch.manual_seed``) are accepted from now on, as those very objects. Returns them."""
    out: dict[str, Any] = {}
    for name, o in snap.items():
        now = vars(o.owner)
        for k, v in o.before.items():
            new = now.get(k, _MISSING)
            if new is not v and _dynamo_rewrap(v, new):
                out[f"{name}.{k}"] = new
    _DYNAMO_INSTALLED.update(out)
    return out


def dynamo_installed() -> dict[str, Any]:
    """What `accept_dynamo_import` accepted in this process."""
    return dict(_DYNAMO_INSTALLED)


def _installed_by_dynamo(name: str, new: Any) -> bool:
    return name in _DYNAMO_INSTALLED and _DYNAMO_INSTALLED[name] is new   # a deleted attribute never is


def diff(snap: dict[str, Owned], vars: Callable[[Any], Any] = vars, any: Callable[..., bool] = any,
         map: type = map, is_not: Callable[[Any, Any], bool] = operator.is_not,
         accepted: Callable[[str, Any], bool] = _installed_by_dynamo) -> list[str]:
    """Watched attributes replaced, deleted or added since the snapshot. Runs after every
    sandboxed block, so the common case (nothing changed) compares identities in C (`map`, `any`)
    rather than attribute by attribute in Python; the builtins it uses are bound at import.
    Not a change: the very object torch._dynamo's import put there while the guard watched for it
    (`accept_dynamo_import`)."""
    changed: list[str] = []
    for name, o in snap.items():
        now = vars(o.owner)
        if any(map(is_not, map(now.get, o.keys), o.values)):
            changed += [f"{name}.{k}" for k, v in o.before.items()
                        if now.get(k, _MISSING) is not v and not accepted(f"{name}.{k}", now.get(k, _MISSING))]
        if not o.known.issuperset(now):  # in C, without building a set of every name
            changed += [f"{name}.{k} (added)" for k in now.keys() - o.known
                        if _watchable(now[k]) and not isinstance(now[k], types.ModuleType)]
    return changed


def report_patching(guard: Any, diff: Callable[..., list[str]] = diff, finding: type = Finding) -> None:
    """Add a patching finding to a `RuntimeGuard` (whose module imports this one); its helpers are
    bound at import time, before any candidate runs."""
    if guard._snap:
        changed = diff(guard._snap)
        if changed:
            guard._add(finding("patching", "replaced: " + ", ".join(changed[:8])))
            guard._tainted = True
