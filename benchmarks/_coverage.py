"""What the compiler policy makes of a KernelBench-format problem: traced or not, compiled or not
in each mode, and why not. One implementation for `kernelbench --trace-only` and `trace_coverage`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def trace_and_compile(task: Any, modes: Sequence[str] = ("strict",)) -> dict[str, Any]:
    """Trace `task` (a `Task`, or the path of a KernelBench-format file, loaded as part of the
    trace) once with `CompilerPolicy`, then compile it in each of `modes` from that one trace.

    Returns ``{"traced": bool, "compiled": {mode: bool}, "errors": {"trace" or mode: "Type: message"},
    "trace_s": load + trace seconds, "total_s": seconds}`` (``compiled`` empty when the trace failed).
    """
    from kernelgym.task import Task
    from policies.compiler import CompilerPolicy

    out: dict[str, Any] = {"traced": False, "compiled": {}, "errors": {}}
    policies = {mode: CompilerPolicy(mode) for mode in modes}
    first = policies[modes[0]]
    t0 = time.perf_counter()
    try:
        if isinstance(task, (str, Path)):
            task = Task.from_file(task)
        first.program(task)
        out["traced"] = True
    except Exception as exc:  # noqa: BLE001 - every failure is a result here
        out["errors"]["trace"] = f"{type(exc).__name__}: {exc}"
    out["trace_s"] = time.perf_counter() - t0
    if out["traced"]:
        for mode, policy in policies.items():
            policy._programs = first._programs   # traced once
            try:
                policy.compile(task)
                out["compiled"][mode] = True
            except Exception as exc:  # noqa: BLE001
                out["compiled"][mode] = False
                out["errors"][mode] = f"{type(exc).__name__}: {exc}"
    out["total_s"] = time.perf_counter() - t0
    return out
