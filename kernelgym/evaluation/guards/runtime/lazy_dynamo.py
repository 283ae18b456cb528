"""torch._dynamo loaded during a candidate's run by torch itself, told apart from code generation.

Interpreter-backend workers start without torch._dynamo (`protocol.LAZY_DYNAMO_ENV`): importing it
is 1.3 s of CPU, half of a cold worker's start, and nothing on that backend compiles with
torch.compile. Some torch functions import it on their first call (those wrapped by
``torch._disable_dynamo``, e.g. ``torch.optim.Optimizer.zero_grad``), and its import replaces
``torch.manual_seed`` by such a wrapper of itself. A candidate that calls one would otherwise be
blamed for loading a code generator (`RuntimeGuard._check_modules`) and for patching torch
(`snapshots.diff`). Candidate code itself cannot import it: the audit hook denies an import of a
forbidden module whose importing frame is the candidate's.

`watch` puts a finder first on ``sys.meta_path`` that wraps torch._dynamo's loader: the modules its
import loads (`loaded`) are exempt from the code-generator check, and ``torch._dynamo.optimize`` is
denied to candidate code from then on, as when it was loaded before the guard. Modules loaded
afterwards (a compile's) are still reported. Removing the finder only makes the import reported.
The watched attributes the import itself replaced (`snapshots.accept_dynamo_import`: the objects it
put there, e.g. ``torch.manual_seed``) are what the patching check accepts, and only those objects: a candidate
that wraps any other function the same way, or replaces these again, is reported.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from typing import Any

DYNAMO = "torch._dynamo"
_LOADED: set[str] = set()


def loaded() -> frozenset[str]:
    """The modules the import of torch._dynamo loaded while `watch` was in place."""
    return frozenset(_LOADED)


class _Loader(importlib.abc.Loader):
    """torch._dynamo's own loader, noting what its execution loads."""

    def __init__(self, inner: Any):
        self._inner = inner

    def create_module(self, spec: Any) -> Any:
        return self._inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        from kernelgym.evaluation.guards.runtime import snapshots

        before = set(sys.modules)
        owners = snapshots.snapshot()
        try:
            self._inner.exec_module(module)
        finally:
            _LOADED.update(set(sys.modules) - before)
            _LOADED.add(DYNAMO)
            snapshots.accept_dynamo_import(owners)
        from kernelgym.evaluation.guards.runtime.audit import deny_dynamo_optimize

        deny_dynamo_optimize()

    def __getattr__(self, name: str) -> Any:   # get_source, get_filename, is_package, ...
        return getattr(self._inner, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != DYNAMO or DYNAMO in sys.modules:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _Loader(spec.loader)
        return spec


def watch() -> bool:
    """Watch for torch._dynamo's import (once per process); False when it is loaded already."""
    if DYNAMO in sys.modules:
        return False
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    return True
