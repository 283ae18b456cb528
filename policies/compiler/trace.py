"""Graphs for hand-written KernelBench files: trace `Model` with torch.fx and map each call to a
catalog op (with concrete shapes from running the traced graph on `get_inputs()`).

Tracing (`shape_trace`) runs the model on the example inputs as it goes, so sizes are numbers
(``x.view(x.shape[0], -1)``, ``b, c, h, w = x.shape``, loops over ``range(x.shape[0])`` trace);
values are never branched on. The model, its inputs and every traced value live on the meta
device (shapes and dtypes, no data, no compute), so a full-size problem traces in milliseconds.
``x.device`` reads as the CPU and ``x.dtype`` as the input's dtype, so constants a forward builds
(``torch.tensor(2.0, device=x.device)``, ``torch.ones(..., dtype=x.dtype)``) are real small
tensors: one that holds a single value is folded into the arithmetic that uses it. A number
among `get_inputs()` (``return [x, 0.5]``) is a graph input of kind ``scalar`` that ModelNew
takes at run time. Calls the catalog has no op for (``x.view(a, b, c)`` that splits a
dim, the indices of ``torch.max``, ``torch.fft``, control flow on tensor values, ...) raise
`TraceError` naming every unsupported call and where it is (once: calls that only depend on it
are not listed), rather than being guessed. The reference's own code (module, constructor,
`get_inputs`) runs here, as in `kernelgym.task.exec_source`; nothing of the candidate does.
Tracing holds a process-wide lock: torch.fx patches global functions while it traces.

The tracer's modules: `trace_reference` (loading the reference; `TracedGraph`, `TraceError`),
`trace_fx` (`shape_trace`), `trace_constants` (constants folded into arithmetic), `trace_mapper`
(the walk onto catalog ops and its handler tables), and the handlers by family: `trace_math`,
`trace_views`, `trace_linalg`, `trace_layers`, `trace_modules` (registered here), `trace_reduce`,
`trace_nn`, `trace_recurrent` (which register themselves into the tables they import from here).
"""

from __future__ import annotations

import threading
from typing import Any

from policies.compiler import trace_layers, trace_linalg, trace_math, trace_modules, trace_views
from policies.compiler.ir import Program
from policies.compiler.trace_fx import FUNCTION_VALUES, MODULE_VALUES, shape_trace
from policies.compiler.trace_mapper import (
    _FUNCTIONS,
    _METHODS,
    _MODULES,
    GRAPH_PASSES,
    OPERATOR_HANDLERS,
    _function_handler,
    _Mapper,
    _where,
)
from policies.compiler.trace_reference import TracedGraph, TraceError, _init_params, load_reference

__all__ = ["FUNCTION_VALUES", "GRAPH_PASSES", "MODULE_VALUES", "OPERATOR_HANDLERS", "TraceError", "TracedGraph",
           "graph_from_source", "load_reference", "program_from_source", "shape_trace"]

# The built-in handlers. The family modules (`trace_reduce`, `trace_nn`, `trace_recurrent`) import
# the tables from this module, so these are registered first and theirs override them.
for _table in (trace_math.FUNCTIONS, trace_views.FUNCTIONS, trace_linalg.FUNCTIONS, trace_layers.FUNCTIONS):
    _FUNCTIONS.update(_table)
_METHODS.update(_FUNCTIONS)
_METHODS.update(trace_views.METHODS)
_MODULES.update(trace_modules.MODULES)


def program_from_source(source: str) -> Program:
    """A Program for a KernelBench-format source without a graph (traced)."""
    g = graph_from_source(source)
    weights = {i: dict(n.params["_state"]) for i, n in enumerate(g.nodes) if n.params.get("_state")}
    return Program(g, g.dtype, weights, list(g.state), g.init_params)


# torch.fx patches global functions while it traces (``nn.Module.__call__``, torch functions
# through one module-level patcher), so two traces in threads at once corrupt each other
# ("CURRENT_PATCHER is None", "module is not installed as a submodule"); the runner compiles tasks
# in threads. Tracing is short (no compute), so one lock serialises it.
_TRACE_LOCK = threading.RLock()


def graph_from_source(source: str) -> TracedGraph:
    """Trace `Model` of a KernelBench-format source into a graph of catalog ops.

    Raises `TraceError` when the module does not run, `Model` cannot be symbolically traced, or
    some calls have no catalog op (all of them are listed in the message). Thread-safe.
    """
    from kernelgym.task import TaskFormatError, check_source

    try:
        check_source(source, "<reference>")
    except TaskFormatError as exc:
        raise TraceError(str(exc)) from None
    with _TRACE_LOCK:
        model, inputs = load_reference(source)
        try:
            gm = shape_trace(model, inputs)
        except Exception as exc:  # noqa: BLE001
            raise TraceError(f"torch.fx cannot trace Model.forward: {type(exc).__name__}: {exc}") from None
        _check_values(gm)
        return _Mapper(gm, model, inputs, _init_params(source)).run()


def _check_values(gm: Any) -> None:
    """Raise `TraceError` when a call the catalog maps failed on its example values (the reference
    itself is broken: mismatched shapes, a bad dim). Calls without a value for other reasons (an
    input without one, an op without a meta kernel, a call on tensor data) are left to the mapper,
    which lists the unmapped ones."""
    for n in gm.graph.nodes:
        exc = n.meta.get("value_exc")
        if exc is None or isinstance(exc, (LookupError, NotImplementedError)) or not _has_handler(gm, n):
            continue
        raise TraceError(f"running the traced graph failed: {_where(n)}: {type(exc).__name__}: {exc}")


def _has_handler(gm: Any, n: Any) -> bool:
    if n.op == "call_module":
        return type(gm.get_submodule(n.target)).__name__ in _MODULES
    if n.op == "call_method":
        return n.target in _METHODS
    if n.op == "call_function":
        return _function_handler(n.target) is not None
    return False
