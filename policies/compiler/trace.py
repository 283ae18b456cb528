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
"""

from __future__ import annotations

import ast
import math
import operator
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kernelgym.ops.catalog import per_dim
from kernelgym.pyast import parse
from kernelgym.sampler.graph import Graph, InputSpec, Node
from policies.compiler.ir import CompileError, Program, StateEntry

# Rewrites of the shape-propagated fx graph run before mapping (in order): each replaces an idiom
# spanning several calls (a reversed scan written as flip / cumsum / flip) by one node the handlers
# map; registered by the modules that define them (`trace_reduce`).
GRAPH_PASSES: list[Callable[[Any], None]] = []
# Modules not run while tracing (the recurrent layers: step by step in Python even on meta): their
# name -> a function of (module, *args, **kwargs) giving the result's meta tensors (`trace_recurrent`).
MODULE_VALUES: dict[str, Callable[..., Any]] = {}
# The same for functions (``torch.lstm``, ...): function -> a function of its arguments.
FUNCTION_VALUES: dict[Any, Callable[..., Any]] = {}
# Handlers of Python operators beyond the arithmetic ones `_function_handler` knows (``a == b``),
# registered by the modules that define them (`trace_nn`).
OPERATOR_HANDLERS: dict[Any, Callable[[Any, Any], Any]] = {}


class TraceError(CompileError):
    """The reference cannot be traced, or uses calls that map to no catalog op (listed)."""


@dataclass(frozen=True)
class TracedGraph(Graph):
    """A Graph traced from a KernelBench file, with what ModelNew needs to match the reference:
    every state-dict entry, the constructor's parameter list and the float dtype. Nodes name the
    state tensors they read in ``params["_state"]`` (role -> state-dict key); an argument
    ``("state", k)`` refers to ``state[k]`` (a parameter used directly, e.g. ``x @ self.W``)."""

    state: tuple[StateEntry, ...] = ()
    init_params: str = ""
    dtype: str = "float32"

    def arg_shape(self, ref: tuple[str, int]) -> tuple[int, ...]:
        if ref[0] == "state":
            return tuple(self.state[ref[1]].shape)
        return super().arg_shape(ref)


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


def load_reference(source: str) -> tuple[Any, list[Any]]:
    """(Model instance in eval mode, get_inputs()) of a source, on the meta device: shapes and
    dtypes only. Raises `TraceError` when the task's code fails."""
    import torch

    from kernelgym.task import exec_source

    try:
        mod = exec_source(source, "kernelgym_traced_reference")
        init_inputs = list(mod.get_init_inputs())
        torch.manual_seed(0)
        try:
            with torch.device("meta"):
                model = mod.Model(*init_inputs)
        except Exception:  # noqa: BLE001
            # A constructor that reads tensor values (``.item()``, ``float(t)``, numpy, a branch on a
            # value) cannot run on meta: build it on the CPU, as the reference does, and move its state
            # to meta (a construction costs what the reference's own costs; tracing still computes nothing).
            torch.manual_seed(0)
            model = mod.Model(*init_inputs).to("meta")
        model = model.eval()
        torch.manual_seed(1)
        try:
            with torch.device("meta"):
                inputs = list(mod.get_inputs())
        except Exception:  # noqa: BLE001 - same fallback for a get_inputs that reads values
            torch.manual_seed(1)
            inputs = list(mod.get_inputs())
    except Exception as exc:  # noqa: BLE001 - any failure of task code is reported, not raised raw
        raise TraceError(f"running the reference failed: {type(exc).__name__}: {exc}") from None
    # numpy-made (from_numpy) or CPU-fallback tensors: to meta too, so nothing below computes
    return model, [t.to("meta") if isinstance(t, torch.Tensor) else t for t in inputs]


def shape_trace(model: Any, inputs: list[Any]) -> Any:
    """`torch.fx.symbolic_trace` with concrete sizes: every proxy carries the value of its node,
    computed on (meta copies of) the example inputs as tracing goes, so ``x.shape``, ``x.size(d)``,
    ``x.dim()``, ``x.ndim``, ``x.numel()``, ``len(x)`` and ``x.dtype`` are values -- as they are for
    a task with fixed shapes -- and ``x.view(x.shape[0], -1)``, ``b, c, h, w = x.shape`` or
    ``x.permute(0, *range(2, x.dim()), 1)`` trace to calls with constant arguments. ``x.device`` is
    the CPU: a constant built with it runs eagerly and is kept, with its value, as a ``get_attr``
    of the graph. Values are computed on the meta device (real tensors among the arguments are
    moved there), so nothing is computed; each node gets ``meta["tensor_meta"]`` as
    `torch.fx.passes.shape_prop.ShapeProp` would set it, or ``meta["value_error"]`` saying why its
    value could not be computed. Only sizes are made concrete: Python control flow on tensor
    *values* still fails to trace, as in plain fx. Callers in threads must hold `_TRACE_LOCK`."""
    import torch
    import torch.fx
    from torch.fx.node import map_aggregate
    from torch.fx.passes.shape_prop import _extract_tensor_metadata

    meta = torch.device("meta")

    def known_or_traced(attr: str) -> property:
        """A proxy property: the attribute of the proxy's known tensor, else traced as fx would."""
        def get(self: Any) -> Any:
            t = self._known()
            return getattr(t, attr) if t is not None else torch.fx.Proxy.__getattr__(self, attr)
        return property(get)

    class ShapeProxy(torch.fx.Proxy):
        value: Any = None  # a class attribute, so reading it never reaches Proxy.__getattr__
        shape = known_or_traced("shape")
        ndim = known_or_traced("ndim")
        dtype = known_or_traced("dtype")

        def _known(self) -> Any:
            v = self.value
            return v if isinstance(v, torch.Tensor) else None

        @property
        def device(self) -> Any:
            # the CPU, not meta: factories given device=x.device then make real (small) constants
            t = self._known()
            return torch.device("cpu") if t is not None else torch.fx.Proxy.__getattr__(self, "device")

        def size(self, *dim: Any) -> Any:
            t = self._known()
            if t is None:
                return self.tracer.create_proxy("call_method", "size", (self, *dim), {})
            return t.size(*dim)

        def dim(self) -> Any:
            t = self._known()
            return t.dim() if t is not None else self.tracer.create_proxy("call_method", "dim", (self,), {})

        def numel(self) -> Any:
            t = self._known()
            return t.numel() if t is not None else self.tracer.create_proxy("call_method", "numel", (self,), {})

        def __len__(self) -> int:
            t = self._known()
            return len(t) if t is not None else super().__len__()

    def on_meta(a: Any) -> Any:
        if isinstance(a, torch.Tensor) and a.device != meta:
            return a.to(meta)
        if isinstance(a, torch.device):
            return meta
        return a

    class ShapeTracer(torch.fx.Tracer):
        def __init__(self, example: list[Any]):
            super().__init__()
            self.example = [on_meta(t).clone() if isinstance(t, torch.Tensor) else t for t in example]
            self.placeholders = 0
            self.computing = False  # running real code: parameters and modules are not traced

        def proxy(self, node: Any) -> Any:
            return ShapeProxy(node, self)

        def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
            if self.computing:
                return attr_val
            return super().getattr(attr, attr_val, parameter_proxy_cache)

        def call_module(self, m: Any, forward: Any, args: Any, kwargs: Any) -> Any:
            if self.computing:
                return forward(*args, **kwargs)
            return super().call_module(m, forward, args, kwargs)

        def create_proxy(self, kind: str, target: Any, args: Any, kwargs: Any, name: Any = None,
                         type_expr: Any = None, proxy_factory_fn: Any = None) -> Any:
            rv = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
            if isinstance(rv, ShapeProxy):
                try:
                    rv.value = self.real_value(kind, target, args, kwargs)
                except Exception as exc:  # noqa: BLE001 - no value: sizes of this node stay symbolic, as in plain fx
                    rv.node.meta["value_error"] = f"{type(exc).__name__}: {exc}"
                    rv.node.meta["value_exc"] = exc
                rv.node.meta["_value"] = rv.value
            return rv

        def real_value(self, kind: str, target: Any, args: Any, kwargs: Any) -> Any:
            if kind == "placeholder":
                self.placeholders += 1
                return self.example[self.placeholders - 1] if self.placeholders <= len(self.example) else None

            def real(a: Any) -> Any:
                if isinstance(a, torch.fx.Proxy):
                    # node meta, not the proxy: fx's lazy Attribute proxy (x.T) is another object
                    v = a.node.meta.get("_value")
                    if v is None:
                        raise LookupError(f"the value of {a.node.name} is unknown")
                    return v
                return on_meta(a)

            a, k = map_aggregate(args, real), map_aggregate(kwargs, real)
            self.computing = True
            try:
                with torch.no_grad(), meta:
                    if kind == "call_function":
                        return FUNCTION_VALUES.get(target, target)(*a, **k)
                    if kind == "call_method":
                        return getattr(a[0], target)(*a[1:], **k)
                    if kind == "call_module":
                        sub = self.root.get_submodule(target)
                        if isinstance(sub, torch.nn.RNNBase):
                            # on meta it would still run step by step in Python (tens of seconds at
                            # KernelBench's sizes): the module's result shapes come from its
                            # registered value function, or it is left without a value
                            value = MODULE_VALUES.get(type(sub).__name__)
                            if value is None:
                                raise LookupError(f"{type(sub).__name__} is not run while tracing")
                            return value(sub, *a, **k)
                        return sub(*a, **k)
                    if kind == "get_attr":
                        obj = self.root
                        for atom in target.split("."):
                            obj = getattr(obj, atom)
                        return obj
                    return None
            finally:
                self.computing = False

    tracer = ShapeTracer(inputs)
    # buffers read in forward (a causal mask sliced and compared) are traced as get_attr, like
    # parameters, instead of being computed eagerly into an anonymous constant
    tracer.proxy_buffer_attributes = True
    graph = tracer.trace(model, concrete_args=_unsupplied_defaults(model, len(inputs)))
    _drop_specialised(graph, len(inputs))
    gm = torch.fx.GraphModule(tracer.root, graph, type(model).__name__)
    for n in gm.graph.nodes:
        if n.op == "get_attr" and "_value" not in n.meta:  # a constant fx lifted (create_node, no proxy)
            obj = gm
            for atom in n.target.split("."):
                obj = getattr(obj, atom, None)
            n.meta["_value"] = obj
        found = False

        def tensor_meta(v: Any) -> Any:
            nonlocal found
            if isinstance(v, torch.Tensor):
                found = True
                return _extract_tensor_metadata(v)
            return v

        tm = map_aggregate(n.meta.get("_value"), tensor_meta)
        if found:
            n.meta["tensor_meta"] = tm
    return gm


def _unsupplied_defaults(model: Any, supplied: int) -> dict[str, Any] | None:
    """forward's parameters after the `supplied` ones get_inputs() gives, with their defaults
    (``forward(self, x, mask=None)``): bound as constants, so the trace is specialised to the call
    the reference makes (``if mask is not None`` takes the branch it takes at run time)."""
    import inspect

    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    out = {}
    for p in params[supplied:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            break
        if p.default is not p.empty:
            out[p.name] = p.default
    return out or None


def _drop_specialised(graph: Any, supplied: int) -> None:
    """Erase the placeholders of forward's parameters bound to their defaults
    (`_unsupplied_defaults`) and the guards fx adds for them (``_assert_is_none``, or
    ``torch._assert(x == default)``): ModelNew is called with get_inputs() only."""
    import torch

    placeholders = [n for n in graph.nodes if n.op == "placeholder"][supplied:]
    for ph in placeholders:
        for u in list(ph.users):
            name = getattr(u.target, "__name__", "")
            if name == "_assert_is_none":
                graph.erase_node(u)
            elif u.target is operator.eq and all(a.target is torch._assert for a in u.users):
                for a in list(u.users):
                    graph.erase_node(a)
                graph.erase_node(u)
        if not ph.users:
            graph.erase_node(ph)


def _init_params(source: str) -> str:
    """Text of Model.__init__'s parameters after self (ModelNew repeats it)."""
    tree = parse(source)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Model":
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    args = item.args
                    if args.posonlyargs:
                        args.posonlyargs = args.posonlyargs[1:]
                    elif args.args:
                        args.args = args.args[1:]
                    return ast.unparse(args)
    return ""


_DTYPE_NAMES = {"torch.float32": "float32", "torch.float16": "float16", "torch.bfloat16": "bfloat16"}


class _Cmp:
    """A comparison (only consumed by where / masked_fill patterns)."""

    def __init__(self, op: str, lhs: Any, rhs: Any):
        self.op, self.lhs, self.rhs = op, lhs, rhs


class _Multi:
    """A tuple-valued call (cummax, max over a dim): only its values may be used, and its indices
    where the call sets `indices` (torch.max / min over a dim: argmax / argmin)."""

    indices: Any = None

    def __init__(self, values: Any):
        self.values = values


class _Mapper:
    def __init__(self, gm: Any, model: Any, inputs: list[Any], init_params: str):
        import torch

        self.torch = torch
        self.gm = gm
        self.model = model
        self.inputs = inputs
        self.init_params = init_params
        self.nodes: list[Node] = []
        self.env: dict[Any, Any] = {}
        self.errors: list[str] = []
        sd = model.state_dict()
        buffers = {k for k, _ in model.named_buffers()}
        self.state = [StateEntry(k, tuple(v.shape), k in buffers,
                                 None if v.is_floating_point() else str(v.dtype).removeprefix("torch."))
                      for k, v in sd.items()]
        self.state_index = {s.key: i for i, s in enumerate(self.state)}
        floats = [t.dtype for t in inputs if isinstance(t, torch.Tensor) and t.is_floating_point()]
        floats += [v.dtype for v in sd.values() if v.is_floating_point()]
        self.dtype = _DTYPE_NAMES.get(str(floats[0]), "float32") if floats else "float32"
        if floats and str(floats[0]) not in _DTYPE_NAMES:
            raise TraceError(f"unsupported float dtype {floats[0]}")

    # -- helpers ---------------------------------------------------------------------------------
    def shape_of(self, fx_node: Any) -> tuple[int, ...]:
        meta = fx_node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            why = fx_node.meta.get("value_error")
            raise _Unsupported(f"{fx_node.name}: " + (f"its value cannot be computed on the meta device ({why})"
                                                      if why else "no single tensor result"))
        return tuple(int(s) for s in meta.shape)

    def add(self, op: str, params: dict[str, Any], args: list[Any], shape: tuple[int, ...],
            state: dict[str, str] | None = None) -> tuple[str, int]:
        refs = [self.ref(a) for a in args]
        p = dict(params)
        if state:
            p["_state"] = state
        self.nodes.append(Node(op=op, params=p, args=tuple(refs), shape=tuple(shape)))
        return ("node", len(self.nodes) - 1)

    def ref(self, a: Any) -> tuple[str, int]:
        v = self.env.get(a) if not isinstance(a, tuple) else a
        if isinstance(v, tuple) and len(v) == 2 and v[0] in ("input", "node", "state"):
            return v
        raise _Unsupported(f"argument {getattr(a, 'name', a)!r} is not a tensor the catalog ops can take")

    def rank(self, a: Any) -> int:
        return len(self.arg_shape(a))

    def arg_shape(self, a: Any) -> tuple[int, ...]:
        kind, k = self.ref(a)
        if kind == "input":
            return tuple(getattr(self.inputs[k], "shape", ()))  # a number argument: shape ()
        if kind == "state":
            return self.state[k].shape
        return self.nodes[k].shape

    def is_tensor(self, a: Any) -> bool:
        v = self.env.get(a) if hasattr(a, "op") else None
        return isinstance(v, tuple) and v[0] in ("input", "node", "state")

    def state_key(self, a: Any) -> str | None:
        v = self.env.get(a) if hasattr(a, "op") else None
        if isinstance(v, tuple) and v[0] == "state":
            return self.state[v[1]].key
        return None

    # -- the walk --------------------------------------------------------------------------------
    def run(self) -> TracedGraph:
        for graph_pass in GRAPH_PASSES:
            graph_pass(self.gm)
        in_specs: list[InputSpec] = []
        outputs: list[int] = []
        failed: set[Any] = set()  # fx nodes already reported, directly or through an input
        consts = _fold_constants(self.gm, self.state_index)
        placeholders = 0
        for n in self.gm.graph.nodes:
            if n in consts and not n.users:   # a constant folded into every call that used it
                self.env[n] = ("const", 0)
                continue
            if any(u in failed for u in n.all_input_nodes):
                failed.add(n)  # reported once, at the unsupported call it depends on
                self.env[n] = None
                continue
            try:
                if n.op == "placeholder":
                    placeholders += 1
                    t = self.inputs[placeholders - 1] if placeholders <= len(self.inputs) else None
                    if _scalar(t):   # a number ModelNew takes at run time (kernels get it as an argument)
                        in_specs.append(InputSpec((), "scalar"))
                    elif isinstance(t, self.torch.Tensor):
                        in_specs.append(InputSpec(tuple(t.shape), "float" if t.is_floating_point() else "index"))
                    else:
                        raise _Unsupported(f"forward argument of type {type(t).__name__} (tensors and numbers "
                                           "are supported)")
                    self.env[n] = ("input", len(in_specs) - 1)
                elif n in consts:
                    raise _Unsupported(consts[n])
                elif n.op == "get_attr":
                    if n.target not in self.state_index:
                        raise _Unsupported(f"attribute {n.target!r} is not in the state dict")
                    self.env[n] = ("state", self.state_index[n.target])
                elif n.op == "output":
                    outs = n.args[0] if isinstance(n.args[0], (tuple, list)) else (n.args[0],)
                    for o in outs:
                        r = self.env.get(o)
                        if not (isinstance(r, tuple) and r[0] == "node"):
                            raise _Unsupported("an output is not computed by forward (an input or a parameter)")
                        outputs.append(r[1])
                else:
                    self.env[n] = self.call(n)
            except _Unsupported as exc:
                self.errors.append(f"{_where(n)}: {exc}")
                self.env[n] = None
                failed.add(n)
            except TraceError:
                raise
            except Exception as exc:  # noqa: BLE001 - a mapping bug must still name the call
                self.errors.append(f"{_where(n)}: {type(exc).__name__}: {exc}")
                self.env[n] = None
                failed.add(n)
        for n, v in self.env.items():
            if isinstance(v, (_Cmp, _Multi)) and any(self.env.get(u) is not None and u.op != "output"
                                                     for u in n.users) and not _only_pattern_users(n, self.env):
                self.errors.append(f"{_where(n)}: {'comparison' if isinstance(v, _Cmp) else 'tuple result'} "
                                   "used outside a supported pattern")
        if self.errors:
            raise TraceError("unsupported calls in Model.forward (no catalog op): " + "; ".join(self.errors))
        if not self.nodes:
            raise TraceError("Model.forward computes nothing")
        return TracedGraph(inputs=tuple(in_specs), nodes=tuple(self.nodes), outputs=tuple(outputs),
                           state=tuple(self.state), init_params=self.init_params, dtype=self.dtype)

    def call(self, n: Any) -> Any:
        if n.op == "call_module":
            sub = self.gm.get_submodule(n.target)
            handler = _MODULES.get(type(sub).__name__)
            if handler is None:
                raise _Unsupported(f"module {type(sub).__name__} has no catalog op")
            return handler(self, n, sub)
        if n.op == "call_method":
            handler = _METHODS.get(n.target)
            if handler is None:
                raise _Unsupported(f"method .{n.target}() has no catalog op")
            return handler(self, n)
        if n.op == "call_function":
            handler = _function_handler(n.target)
            if handler is None:
                raise _Unsupported(f"function {_fn_name(n.target)} has no catalog op")
            return handler(self, n)
        raise _Unsupported(f"fx node kind {n.op}")

    # -- common patterns -------------------------------------------------------------------------
    def arg(self, n: Any, pos: int, name: str, default: Any = None) -> Any:
        if len(n.args) > pos:
            return n.args[pos]
        return n.kwargs.get(name, default)

    def unary(self, op: str, n: Any, params: dict[str, Any] | None = None) -> Any:
        return self.add(op, params or {}, [n.args[0]], self.shape_of(n))

    def dim_from_right(self, x: Any, dim: Any) -> int:
        r = self.rank(x)
        if not isinstance(dim, int):
            raise _Unsupported(f"dim {dim!r} must be one int")
        if not -r <= dim < r:
            raise _Unsupported(f"dim {dim} out of range for rank {r}")
        return r - (dim % r)


class _Unsupported(Exception):
    pass


# Calls whose number argument may be a constant tensor of one value instead (x * torch.tensor(2.0)).
_FOLD_INTO = frozenset({"add", "sub", "subtract", "mul", "multiply", "truediv", "div", "divide", "pow",
                        "clamp", "clip", "gt", "lt", "masked_fill"})
# Elementwise min / max of a tensor and a constant of one value: a clamp.
_MIN_MAX = frozenset({"min", "max", "minimum", "maximum"})
# Constants a forward builds from a tensor's shape: (positional index of the fill value, or the value).
_LIKE_FILL: dict[str, Any] = {"ones_like": 1, "zeros_like": 0, "full_like": 1, "new_ones": 1, "new_zeros": 0,
                              "new_full": 2}


def _fold_constants(gm: Any, state_index: dict[str, int]) -> dict[Any, str]:
    """Fold constants built in forward into the calls that use them, in place; returns every
    constant node with the reason it cannot be mapped if some use remains.

    A constant is a tensor fx kept as an attribute that is not in the state dict (what
    ``torch.tensor(2.0, device=x.device)`` or ``torch.ones(1, c, 1, 1)`` becomes; its value is
    real, see `shape_trace`) or a ``torch.ones_like(x)`` / ``full_like`` / ``x.new_full(...)``
    whose value is in its arguments. One that holds a single value is replaced by that number in
    arithmetic with a tensor that has the result's shape and dtype (so the number changes neither
    broadcasting nor type promotion); other uses keep the constant, which no catalog op takes."""
    import torch

    out: dict[Any, str] = {}
    for n in gm.graph.nodes:
        value: Any = None
        name = getattr(n.target, "__name__", n.target) if n.op in ("call_function", "call_method") else None
        if n.op == "get_attr" and n.target not in state_index:
            t = n.meta.get("_value")
            if not isinstance(t, torch.Tensor):
                continue   # left to the mapper's state-dict error
            if t.device.type == "meta":   # no value: from the model's tensors, which live on meta
                out[n] = (f"constant tensor of shape {tuple(t.shape)}: a tensor the model holds outside its state "
                          "dict, or one forward computes from a buffer without fx tracing it (e.g. "
                          "self.mask[:t, :t] == 0); no catalog op takes a constant tensor")
                continue
            what = f"constant tensor of shape {tuple(t.shape)} built in forward"
            if t.numel() > 0 and not t.dtype.is_complex and bool((t == t.reshape(-1)[0]).all()):
                value = t.reshape(-1)[0].item()
        elif name in _LIKE_FILL and n.op == ("call_method" if name.startswith("new_") else "call_function"):
            what = f"constant {name}(...) built in forward"
            fill = _LIKE_FILL[name]
            if name in ("full_like", "new_full"):
                fill = n.args[fill] if len(n.args) > fill else n.kwargs.get("fill_value")
            value = fill
        else:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            out[n] = f"{what}: no catalog op takes a constant tensor (only one of a single value, used in " \
                     "arithmetic, is folded into it)"
            continue
        for u in list(n.users):
            uname = getattr(u.target, "__name__", u.target)
            if uname in _MIN_MAX and _foldable(n, u, _MIN_MAX):
                # torch.min(x, torch.tensor(c)) is a clamp; the number is not put in min's arguments,
                # where an int would be read as a dim (torch.min(x, 1): a reduction)
                x = next(a for a in (*u.args, *u.kwargs.values()) if a is not n)
                u.op, u.target, u.args = "call_function", torch.clamp, (x,)
                u.kwargs = {"max" if uname in ("min", "minimum") else "min": float(value)}
            elif _foldable(n, u, _FOLD_INTO):
                u.args = tuple(value if a is n else a for a in u.args)
                u.kwargs = {k: value if a is n else a for k, a in u.kwargs.items()}
        out[n] = f"{what} with one value {value!r}, used where no number can stand for it (a call other " \
                 "than arithmetic, or one whose result has another shape or dtype than its tensor argument)"
    return out


def _foldable(const: Any, user: Any, names: frozenset[str]) -> bool:
    """Whether `user` may take the number of `const` instead: a call of `names` with another tensor
    whose shape and dtype are those of the result (for min / max: that tensor and `const` only)."""
    import torch

    if user.op not in ("call_function", "call_method") or getattr(user.target, "__name__", user.target) not in names:
        return False
    res = user.meta.get("tensor_meta")
    args = (*user.args, *user.kwargs.values())
    others = [a for a in args if hasattr(a, "op") and a is not const]
    if not hasattr(res, "shape") or not others or (names is _MIN_MAX and (len(args) != 2 or const not in args)):
        return False
    tm = others[0].meta.get("tensor_meta")
    if not hasattr(tm, "shape"):
        return False
    same_dtype = tm.dtype == res.dtype or res.dtype == torch.bool   # a comparison's result is bool
    return tuple(tm.shape) == tuple(res.shape) and same_dtype


def _where(n: Any) -> str:
    stack = n.meta.get("stack_trace") or ""
    line = ""
    for part in stack.strip().splitlines():
        if "line" in part:
            line = part.strip()
    target = getattr(n.target, "__name__", n.target)
    return f"{n.name} ({n.op} {target}{', ' + line if line else ''})"


def _fn_name(fn: Any) -> str:
    mod = getattr(fn, "__module__", "") or ""
    return f"{mod}.{getattr(fn, '__name__', fn)}".lstrip(".")


def _only_pattern_users(n: Any, env: dict[Any, Any]) -> bool:
    """Comparisons may only feed where / masked_fill; tuple results only getitem / .values."""
    for u in n.users:
        if u.op == "call_function" and u.target in (operator.getitem, getattr):
            continue
        name = getattr(u.target, "__name__", str(u.target))
        if name in ("where", "masked_fill"):
            continue
        return False
    return True


# ---- handlers --------------------------------------------------------------------------------------

_UNARY_FUNCS = {
    "relu": "relu", "relu6": "relu6", "selu": "selu", "silu": "silu", "mish": "mish", "sigmoid": "sigmoid",
    "logsigmoid": "logsigmoid", "hardsigmoid": "hardsigmoid", "hardswish": "hardswish", "softsign": "softsign",
    "tanh": "tanh", "exp": "exp", "expm1": "expm1", "log": "log", "log1p": "log1p", "sqrt": "sqrt",
    "rsqrt": "rsqrt", "reciprocal": "reciprocal", "abs": "abs", "neg": "neg", "negative": "neg",
    "square": "square", "sin": "sin", "cos": "cos", "erf": "erf", "absolute": "abs", "log_sigmoid": "logsigmoid",
}


def _h_unary(op: str) -> Callable[[_Mapper, Any], Any]:
    return lambda m, n: m.unary(op, n)


def _h_leaky(m: _Mapper, n: Any) -> Any:
    return m.unary("leaky_relu", n, {"slope": float(m.arg(n, 1, "negative_slope", 0.01))})


def _h_elu(m: _Mapper, n: Any) -> Any:
    return m.unary("elu", n, {"alpha": float(m.arg(n, 1, "alpha", 1.0))})


def _h_gelu(m: _Mapper, n: Any) -> Any:
    approx = n.kwargs.get("approximate", "none")
    return m.unary("gelu_tanh" if approx == "tanh" else "gelu", n)


def _h_hardtanh(m: _Mapper, n: Any) -> Any:
    return m.unary("hardtanh", n, {"lo": float(m.arg(n, 1, "min_val", -1.0)), "hi": float(m.arg(n, 2, "max_val", 1.0))})


def _h_softplus(m: _Mapper, n: Any) -> Any:
    if m.arg(n, 1, "beta", 1) != 1 or m.arg(n, 2, "threshold", 20) != 20:
        raise _Unsupported("softplus with beta != 1 or threshold != 20")
    return m.unary("softplus", n)


def _h_clamp(m: _Mapper, n: Any) -> Any:
    lo, hi = m.arg(n, 1, "min"), m.arg(n, 2, "max")
    if m.is_tensor(lo) or m.is_tensor(hi):
        raise _Unsupported("clamp with tensor bounds")
    return m.unary("clamp", n, {"lo": None if lo is None else float(lo), "hi": None if hi is None else float(hi)})


def _h_pow(m: _Mapper, n: Any) -> Any:
    x, e = n.args[0], m.arg(n, 1, "exponent")
    if not m.is_tensor(x) or m.is_tensor(e):
        raise _Unsupported("pow needs a tensor base and a number exponent")
    if e == 2:
        return m.unary("square", n)
    if e == 0.5:
        return m.unary("sqrt", n)
    return m.unary("pow_scalar", n, {"c": e})


def _scalar(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _h_arith(kind: str) -> Callable[[_Mapper, Any], Any]:
    def handler(m: _Mapper, n: Any) -> Any:
        a, b = n.args[0], n.args[1]
        alpha = n.kwargs.get("alpha", 1)
        if alpha != 1:
            raise _Unsupported(f"{kind} with alpha={alpha}")
        if n.kwargs.get("rounding_mode") is not None:
            raise _Unsupported("div with a rounding mode")
        shape = m.shape_of(n)
        ta, tb = m.is_tensor(a), m.is_tensor(b)
        if ta and tb:
            return m.add(kind, {}, [a, b], shape)
        if ta and _scalar(b):
            if kind == "add":
                return m.add("add_scalar", {"c": b}, [a], shape)
            if kind == "sub":
                return m.add("add_scalar", {"c": -b}, [a], shape)
            if kind == "mul":
                return m.add("mul_scalar", {"c": b}, [a], shape)
            return m.add("div_scalar", {"c": b}, [a], shape)
        if tb and _scalar(a):
            if kind == "add":
                return m.add("add_scalar", {"c": a}, [b], shape)
            if kind == "mul":
                return m.add("mul_scalar", {"c": a}, [b], shape)
            if kind == "sub":
                neg = m.add("neg", {}, [b], shape)
                return m.add("add_scalar", {"c": a}, [neg], shape)
            rec = m.add("reciprocal", {}, [b], shape)
            return rec if a == 1 else m.add("mul_scalar", {"c": a}, [rec], shape)
        raise _Unsupported(f"{kind} of {type(a).__name__} and {type(b).__name__}")

    return handler


def _h_minmax(kind: str) -> Callable[[_Mapper, Any], Any]:
    """torch.maximum / minimum of two tensors; torch.max / min(x, dim) as amax / amin when only its
    values are used (``[0]`` or ``.values``; the indices have no catalog op)."""
    reduce_op = "amax" if kind == "maximum" else "amin"

    def handler(m: _Mapper, n: Any) -> Any:
        a = n.args[0]
        b = n.args[1] if len(n.args) > 1 else n.kwargs.get("other", n.kwargs.get("dim"))
        if m.is_tensor(a) and m.is_tensor(b):
            return m.add(kind, {}, [a, b], m.shape_of(n))
        if m.is_tensor(a) and isinstance(b, int) and not isinstance(b, bool):
            keepdim = bool(m.arg(n, 2, "keepdim", False))
            meta = n.meta.get("tensor_meta")
            shape = tuple(int(x) for x in meta[0].shape)
            return _Multi(m.add(reduce_op, {"dim": m.dim_from_right(a, b), "keepdim": keepdim}, [a], shape))
        raise _Unsupported(f"{_fn_name(n.target) if callable(n.target) else n.target} of the whole tensor or "
                           "with a number; use amax / amin with a dim")

    return handler


def _h_cmp(op: str) -> Callable[[_Mapper, Any], Any]:
    return lambda m, n: _Cmp(op, n.args[0], n.args[1])


def _h_where(m: _Mapper, n: Any) -> Any:
    cond, a, b = n.args[0], n.args[1], n.args[2]
    c = m.env.get(cond)
    if isinstance(c, _Cmp) and c.op == "gt" and c.lhs is a and c.rhs == 0 and m.is_tensor(b):
        return m.add("where_gt", {}, [a, b], m.shape_of(n))
    raise _Unsupported("torch.where is only supported as torch.where(x > 0, x, y)")


def _h_masked_fill(m: _Mapper, n: Any) -> Any:
    x, cond, value = n.args[0], n.args[1], m.arg(n, 2, "value")
    c = m.env.get(cond)
    if isinstance(c, _Cmp) and c.op == "lt" and c.rhs == 0 and value == 0 and m.is_tensor(c.lhs):
        return m.add("masked_fill", {}, [x, c.lhs], m.shape_of(n))
    raise _Unsupported("masked_fill is only supported as x.masked_fill(y < 0, 0.0)")


_REDUCE_NAMES = {"sum": "sum", "mean": "mean", "amax": "amax", "amin": "amin", "logsumexp": "logsumexp",
                 "var": "var", "std": "std", "vector_norm": "norm", "norm": "norm"}


def _h_reduce(op: str) -> Callable[[_Mapper, Any], Any]:
    def handler(m: _Mapper, n: Any) -> Any:
        x = n.args[0]
        if op == "norm":
            p = m.arg(n, 1, "ord" if "vector_norm" in str(n.target) else "p", 2)
            if p not in (2, 2.0, "fro", None):
                raise _Unsupported(f"norm with p={p!r}")
            dim = m.arg(n, 2, "dim")
            keepdim = bool(m.arg(n, 3, "keepdim", False))
        else:
            dim = m.arg(n, 1, "dim")
            pos = 3 if op in ("var", "std") else 2  # var(x, dim, unbiased, keepdim)
            keepdim = bool(m.arg(n, pos, "keepdim", False))
        if n.kwargs.get("dtype") is not None:
            raise _Unsupported(f"{op} with a dtype")
        r = m.rank(x)
        if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
            axes = list(range(r))
        elif isinstance(dim, (tuple, list)):
            axes = sorted({int(d) % r for d in dim})
        else:
            axes = [int(dim) % r]
        params: dict[str, Any] = {"keepdim": keepdim}
        if len(axes) == 1:
            params["dim"] = r - axes[0]
        else:
            params["axes"] = axes
        if op in ("var", "std"):
            corr = n.kwargs.get("correction")
            unbiased = m.arg(n, 2, "unbiased")
            if corr is None:
                corr = 0 if unbiased is False else 1
            params["correction"] = int(corr)
        return m.add(op, params, [x], m.shape_of(n))

    return handler


def _h_softmax(op: str) -> Callable[[_Mapper, Any], Any]:
    def handler(m: _Mapper, n: Any) -> Any:
        x = n.args[0]
        dim = m.arg(n, 1, "dim")
        if dim is None:
            raise _Unsupported(f"{op} without dim")
        if n.kwargs.get("dtype") is not None:
            raise _Unsupported(f"{op} with a dtype")
        return m.add(op, {"dim": m.dim_from_right(x, dim)}, [x], m.shape_of(n))

    return handler


def _h_scan(op: str) -> Callable[[_Mapper, Any], Any]:
    def handler(m: _Mapper, n: Any) -> Any:
        x = n.args[0]
        dim = m.arg(n, 1, "dim")
        if n.kwargs.get("dtype") is not None:
            raise _Unsupported(f"{op} with a dtype")
        if op == "cummax":
            shape = tuple(int(s) for s in n.meta["tensor_meta"][0].shape)
            return _Multi(m.add(op, {"dim": m.dim_from_right(x, dim)}, [x], shape))
        return m.add(op, {"dim": m.dim_from_right(x, dim)}, [x], m.shape_of(n))

    return handler


def _h_getitem(m: _Mapper, n: Any) -> Any:
    src = m.env.get(n.args[0])
    if isinstance(src, _Multi) and n.args[1] == 1 and src.indices is not None:
        return src.indices
    if isinstance(src, _Multi) and (n.args[1] == 0 or n.args[1] == "values"):
        return src.values
    if isinstance(src, _Parts):
        return src.part(m, n.args[1])
    if m.is_tensor(n.args[0]):
        return _h_index(m, n)
    raise _Unsupported("indexing or slicing has no catalog op (only the values of cummax / max / min: [0] or "
                       ".values)")


def _h_state_fn(op: str, roles: tuple[str, ...]) -> Callable[[_Mapper, Any], Any]:
    """F.linear / F.conv* / F.layer_norm ... with parameters passed explicitly (get_attr args)."""
    def handler(m: _Mapper, n: Any) -> Any:
        return _state_call(m, n, op, roles)

    return handler


def _state_keys(m: _Mapper, n: Any, roles: dict[str, Any]) -> dict[str, str]:
    keys: dict[str, str] = {}
    for role, a in roles.items():
        if a is None:
            continue
        key = m.state_key(a)
        if key is None:
            raise _Unsupported(f"{role} must be a parameter or buffer of the model")
        keys[role] = key
    return keys


def _state_call(m: _Mapper, n: Any, op: str, roles: tuple[str, ...]) -> Any:
    x = n.args[0]
    shape = m.shape_of(n)
    if op == "linear":
        st = _state_keys(m, n, {"weight": m.arg(n, 1, "weight"), "bias": m.arg(n, 2, "bias")})
        return m.add("linear", {}, [x], shape, st)
    if op in _CONV_OPS:
        # F.conv*d(x, w, b, stride, padding, dilation, groups);
        # F.conv_transpose*d(x, w, b, stride, padding, output_padding, groups, dilation)
        transposed = op.startswith("conv_transpose")
        st = _state_keys(m, n, {"weight": m.arg(n, 1, "weight"), "bias": m.arg(n, 2, "bias")})
        kernel = tuple(m.state[m.state_index[st["weight"]]].shape[2:])
        if transposed:
            params = _conv_params(op, kernel, m.arg(n, 3, "stride", 1), m.arg(n, 4, "padding", 0),
                                  m.arg(n, 7, "dilation", 1), m.arg(n, 6, "groups", 1), "bias" in st,
                                  m.arg(n, 5, "output_padding", 0))
        else:
            params = _conv_params(op, kernel, m.arg(n, 3, "stride", 1), m.arg(n, 4, "padding", 0),
                                  m.arg(n, 5, "dilation", 1), m.arg(n, 6, "groups", 1), "bias" in st)
        return m.add(op, params, [x], shape, st)
    if op == "layer_norm":
        norm_shape = tuple(m.arg(n, 1, "normalized_shape"))
        st = _state_keys(m, n, {"weight": m.arg(n, 2, "weight"), "bias": m.arg(n, 3, "bias")})
        return m.add("layer_norm", {"ndims": len(norm_shape), "eps": float(m.arg(n, 4, "eps", 1e-5))}, [x], shape, st)
    if op == "rms_norm":
        norm_shape = tuple(m.arg(n, 1, "normalized_shape"))
        st = _state_keys(m, n, {"weight": m.arg(n, 2, "weight")})
        eps = m.arg(n, 3, "eps")
        return m.add("rms_norm", {"ndims": len(norm_shape), "eps": _eps(m, eps)}, [x], shape, st)
    if op == "group_norm":
        st = _state_keys(m, n, {"weight": m.arg(n, 2, "weight"), "bias": m.arg(n, 3, "bias")})
        return m.add("group_norm", {"groups": int(m.arg(n, 1, "num_groups")), "eps": float(m.arg(n, 4, "eps", 1e-5))},
                     [x], shape, st)
    if op == "batch_norm":
        if m.arg(n, 5, "training", False):
            raise _Unsupported("batch_norm in training mode")
        st = _state_keys(m, n, {"running_mean": m.arg(n, 1, "running_mean"), "running_var": m.arg(n, 2, "running_var"),
                                "weight": m.arg(n, 3, "weight"), "bias": m.arg(n, 4, "bias")})
        return m.add("batch_norm", {"eps": float(m.arg(n, 7, "eps", 1e-5))}, [x], shape, st)
    if op == "embedding":
        st = _state_keys(m, n, {"weight": m.arg(n, 1, "weight")})
        return m.add("embedding", {}, [x], shape, st)
    raise _Unsupported(f"{op} with explicit parameters")


_CONV_OPS = frozenset({"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"})


def _conv_params(op: str, kernel: tuple[int, ...], stride: Any, padding: Any, dilation: Any, groups: Any,
                 bias: bool, output_padding: Any = 0) -> dict[str, Any]:
    """A convolution's catalog parameters, per spatial dim. ``padding="valid"`` is 0; ``"same"``
    (stride 1) pads each side by half the dilated window, which must be even: PyTorch pads the odd
    remainder on one side only, and the catalog's convolutions pad both sides alike."""
    spatial = len(kernel)
    stride, dilation = _per_dim(stride, spatial), _per_dim(dilation, spatial)
    if padding == "valid":
        padding = 0
    elif padding == "same":
        reach = [d * (k - 1) for k, d in zip(kernel, dilation)]
        if any(r % 2 for r in reach):
            raise _Unsupported(f"{op} with padding='same' for kernel {kernel} and dilation {dilation} "
                               "(PyTorch pads one side more than the other)")
        padding = tuple(r // 2 for r in reach)
    elif isinstance(padding, str):
        raise _Unsupported(f"{op} with padding={padding!r}")
    params: dict[str, Any] = {"kernel": kernel, "stride": stride, "padding": _per_dim(padding, spatial),
                              "dilation": dilation, "groups": int(groups), "bias": bool(bias)}
    if op.startswith("conv_transpose"):
        params["output_padding"] = _per_dim(output_padding, spatial)
    return params


def _per_dim(v: Any, spatial: int) -> tuple[int, ...]:
    """An int or a per-dim tuple / list as a tuple of `spatial` ints."""
    if isinstance(v, (tuple, list)) and len(v) not in (1, spatial):
        raise _Unsupported(f"{len(v)} values {tuple(v)} for a {spatial}-D convolution")
    return per_dim(v, spatial)


def _eps(m: _Mapper, eps: Any) -> float:
    import torch

    return float(eps) if eps is not None else float(torch.finfo(getattr(torch, m.dtype)).eps)


def _h_instance_norm(m: _Mapper, n: Any) -> Any:
    """F.instance_norm(x, running_mean, running_var, weight, bias, use_input_stats, momentum, eps)."""
    if not m.arg(n, 5, "use_input_stats", True):
        raise _Unsupported("instance_norm with use_input_stats=False (running statistics)")
    # running statistics are only updated (not used) when the input's own statistics are
    st = _state_keys(m, n, {"weight": m.arg(n, 3, "weight"), "bias": m.arg(n, 4, "bias")})
    params = {"affine": bool(st), "eps": float(m.arg(n, 7, "eps", 1e-5))}
    return m.add("instance_norm", params, [n.args[0]], m.shape_of(n), st)


def _h_matmul(m: _Mapper, n: Any) -> Any:
    a, b = n.args[0], n.args[1]
    ra, rb = m.rank(a), m.rank(b)
    shape = m.shape_of(n)
    if ra == 2 and rb == 2:
        return m.add("matmul", {}, [a, b], shape)
    if ra == 3 and rb == 3 and m.arg_shape(a)[0] == m.arg_shape(b)[0]:
        return m.add("bmm", {}, [a, b], shape)
    if ra >= 2 and rb == 2:
        return m.add("matmul", {}, [a, b], shape)
    if ra >= 2 and rb >= 2:
        return m.add("einsum", {"eq": _matmul_equation(m.arg_shape(a), m.arg_shape(b))}, [a, b], shape)
    raise _Unsupported(f"matmul of ranks {ra} and {rb} (a 1-D operand; supported: both of rank 2 or more)")


def _h_addmm(m: _Mapper, n: Any) -> Any:
    if n.kwargs.get("beta", 1) != 1 or n.kwargs.get("alpha", 1) != 1:
        raise _Unsupported("addmm with alpha or beta")
    return m.add("addmm", {}, [n.args[0], n.args[1], n.args[2]], m.shape_of(n))


def _h_transpose(m: _Mapper, n: Any) -> Any:
    x = n.args[0]
    r = m.rank(x)
    if n.target == "t" or getattr(n.target, "__name__", "") == "t":
        d0, d1 = 0, 1
    else:
        d0, d1 = int(m.arg(n, 1, "dim0")) % r, int(m.arg(n, 2, "dim1")) % r
    if d0 == d1:
        return m.ref(x)
    return m.add("transpose", {"dims": (min(d0, d1), max(d0, d1))}, [x], m.shape_of(n))


def _h_permute(m: _Mapper, n: Any) -> Any:
    x = n.args[0]
    r = m.rank(x)
    perm = n.args[1:] if len(n.args) > 2 else m.arg(n, 1, "dims")
    if len(n.args) == 2 and isinstance(n.args[1], (tuple, list)):
        perm = n.args[1]
    perm = tuple(int(p) % r for p in perm)
    if sorted(perm) != list(range(r)):
        raise _Unsupported(f"permute {perm} is not a permutation")
    if perm == tuple(range(r)):
        return m.ref(x)
    return m.add("permute", {"perm": perm}, [x], m.shape_of(n))


def _merge_range(src: tuple[int, ...], dst: tuple[int, ...]) -> tuple[int, int] | None:
    """(start, end) when dst is src with dims start..end merged into one."""
    if len(dst) >= len(src):
        return None
    k = len(src) - len(dst) + 1
    for start in range(len(dst)):
        end = start + k - 1
        if src[:start] == dst[:start] and src[end + 1:] == dst[start + 1:] and math.prod(src[start:end + 1]) == dst[start]:
            return start, end
    return None


def _h_reshape(m: _Mapper, n: Any) -> Any:
    x = n.args[0]
    src, dst = m.arg_shape(x), m.shape_of(n)
    if src == dst:
        return m.ref(x)
    rng = _merge_range(src, dst)
    if rng is None:  # a split, unit dims, or any regrouping: the general row-major reshape
        if math.prod(src) != math.prod(dst):
            raise _Unsupported(f"reshape {src} -> {dst} changes the number of elements")
        return m.add("reshape", {"shape": tuple(dst)}, [x], dst)
    return m.add("flatten", {"start": rng[0], "end": rng[1]}, [x], dst)


def _h_identity(m: _Mapper, n: Any) -> Any:
    return m.ref(n.args[0])


def _h_cat(m: _Mapper, n: Any) -> Any:
    parts = list(n.args[0])
    dim = m.arg(n, 1, "dim", 0)
    if len(parts) < 2:
        raise _Unsupported("cat of fewer than two tensors")
    out = parts[0]
    for i, p in enumerate(parts[1:], 1):
        shapes = [m.arg_shape(q) for q in parts[: i + 1]]
        r = len(shapes[0])
        ax = int(dim) % r
        shape = list(shapes[0])
        shape[ax] = sum(s[ax] for s in shapes)
        out = m.add("concat", {"dim": r - ax}, [out, p], tuple(shape))
    return out


def _h_tril(m: _Mapper, n: Any) -> Any:
    return m.unary("tril", n, {"diagonal": int(m.arg(n, 1, "diagonal", 0))})


def _h_gather(m: _Mapper, n: Any) -> Any:
    x, dim, idx = n.args[0], m.arg(n, 1, "dim"), m.arg(n, 2, "index")
    if int(dim) % m.rank(x) != m.rank(x) - 1:
        raise _Unsupported("gather over a dim other than the last")
    return m.add("gather", {}, [x, idx], m.shape_of(n))


def _h_pool(op: str) -> Callable[[_Mapper, Any], Any]:
    """F.max_pool*d(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices) and
    F.avg_pool*d(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)."""
    def handler(m: _Mapper, n: Any) -> Any:
        win = {"kernel_size": m.arg(n, 1, "kernel_size"), "stride": m.arg(n, 2, "stride"),
               "padding": m.arg(n, 3, "padding", 0)}
        if op.startswith("max"):
            win |= {"dilation": m.arg(n, 4, "dilation", 1), "ceil_mode": m.arg(n, 5, "ceil_mode", False),
                    "return_indices": m.arg(n, 6, "return_indices", False)}
        else:
            win |= {"ceil_mode": m.arg(n, 4, "ceil_mode", False), "count_include_pad": m.arg(n, 5, "count_include_pad", True),
                    "divisor_override": m.arg(n, 6, "divisor_override")}
        return _pool(m, n, op, win)

    return handler


def _pool(m: _Mapper, n: Any, op: str, win: dict[str, Any]) -> Any:
    """A max / avg pool node with torch's window arguments (ints or per-dim tuples)."""
    if win.get("return_indices"):
        raise _Unsupported(f"{op} with return_indices (the indices have no catalog op)")
    spatial = int(op[-2])
    k = win["kernel_size"]
    stride = win.get("stride")
    params: dict[str, Any] = {"kernel": _compact(k, spatial),
                              "stride": _compact(k if stride in (None, (), []) else stride, spatial),
                              "padding": _compact(win.get("padding", 0), spatial)}
    if op.startswith("max"):
        params["dilation"] = _compact(win.get("dilation", 1), spatial)
    params["ceil_mode"] = bool(win.get("ceil_mode", False))
    if op.startswith("avg"):
        params["count_include_pad"] = bool(win.get("count_include_pad", True))
        if win.get("divisor_override") is not None:
            params["divisor_override"] = int(win["divisor_override"])
    if isinstance(params["padding"], str):
        raise _Unsupported(f"{op} with padding={params['padding']!r}")
    return m.add(op, params, [n.args[0]], m.shape_of(n))


def _compact(v: Any, spatial: int) -> Any:
    """torch's int-or-tuple window argument as one int when every dim agrees, else a tuple."""
    if isinstance(v, str):
        return v
    vals = tuple(int(x) for x in v) if isinstance(v, (tuple, list)) else (int(v),) * spatial
    if len(vals) == 1:
        vals = vals * spatial
    if len(vals) != spatial:
        raise _Unsupported(f"window argument {v!r} for {spatial} spatial dims")
    return vals[0] if len(set(vals)) == 1 else vals


def _adaptive(m: _Mapper, n: Any, spatial: int) -> Any:
    """Adaptive average pools: to size 1 everywhere a global pool (a reduction), else windows."""
    shape = m.shape_of(n)
    if m.rank(n.args[0]) != spatial + 2:
        raise _Unsupported(f"adaptive_avg_pool{spatial}d of a rank-{m.rank(n.args[0])} input (batched only)")
    size = tuple(shape[2:])
    if all(s == 1 for s in size):
        return m.add(f"adaptive_avg_pool{spatial}d", {}, [n.args[0]], shape)
    return m.add(f"adaptive_avg_pool{spatial}d_windows", {"size": _compact(size, spatial)}, [n.args[0]], shape)


def _h_adaptive(spatial: int) -> Callable[[_Mapper, Any], Any]:
    return lambda m, n: _adaptive(m, n, spatial)


def _h_getattr(m: _Mapper, n: Any) -> Any:
    src = m.env.get(n.args[0])
    if isinstance(src, _Multi) and n.args[1] == "values":
        return src.values
    if isinstance(src, _Multi) and n.args[1] == "indices" and src.indices is not None:
        return src.indices
    if n.args[1] in ("T", "mT") and m.is_tensor(n.args[0]):  # x.T (2-D), x.mT: swap the last two dims
        r = m.rank(n.args[0])
        if r < 2 or (n.args[1] == "T" and r != 2):
            raise _Unsupported(f".{n.args[1]} of a rank-{r} tensor")
        return m.add("transpose", {"dims": (r - 2, r - 1)}, [n.args[0]], m.shape_of(n))
    raise _Unsupported(f"attribute .{n.args[1]} of a tensor")


def _h_meta(m: _Mapper, n: Any) -> Any:
    return ("meta", 0)  # x.size(), x.shape, x.dim(): shape logic, no tensor


_FUNCTIONS: dict[str, Callable[[_Mapper, Any], Any]] = {}
for _name, _op in _UNARY_FUNCS.items():
    _FUNCTIONS[_name] = _h_unary(_op)
_FUNCTIONS.update({
    "leaky_relu": _h_leaky, "elu": _h_elu, "gelu": _h_gelu, "hardtanh": _h_hardtanh, "softplus": _h_softplus,
    "clamp": _h_clamp, "clip": _h_clamp, "pow": _h_pow,
    "add": _h_arith("add"), "sub": _h_arith("sub"), "subtract": _h_arith("sub"), "mul": _h_arith("mul"),
    "multiply": _h_arith("mul"), "truediv": _h_arith("div"), "div": _h_arith("div"), "divide": _h_arith("div"),
    "maximum": _h_minmax("maximum"), "minimum": _h_minmax("minimum"), "max": _h_minmax("maximum"),
    "min": _h_minmax("minimum"), "gt": _h_cmp("gt"), "lt": _h_cmp("lt"), "where": _h_where,
    "masked_fill": _h_masked_fill, "softmax": _h_softmax("softmax"), "log_softmax": _h_softmax("log_softmax"),
    "cumsum": _h_scan("cumsum"), "cummax": _h_scan("cummax"), "logcumsumexp": _h_scan("logcumsumexp"),
    "getitem": _h_getitem, "getattr": _h_getattr,
    "linear": _h_state_fn("linear", ()), **{op: _h_state_fn(op, ()) for op in _CONV_OPS},
    "layer_norm": _h_state_fn("layer_norm", ()), "rms_norm": _h_state_fn("rms_norm", ()),
    "group_norm": _h_state_fn("group_norm", ()), "batch_norm": _h_state_fn("batch_norm", ()),
    "embedding": _h_state_fn("embedding", ()), "instance_norm": _h_instance_norm,
    "matmul": _h_matmul, "mm": _h_matmul, "bmm": _h_matmul, "addmm": _h_addmm,
    "transpose": _h_transpose, "t": _h_transpose, "permute": _h_permute,
    "reshape": _h_reshape, "view": _h_reshape, "cat": _h_cat, "concat": _h_cat, "concatenate": _h_cat,
    "tril": _h_tril, "gather": _h_gather, "contiguous": _h_identity, "dropout": _h_identity,
    "size": _h_meta, "dim": _h_meta,
})
for _sp in (1, 2, 3):
    _FUNCTIONS[f"max_pool{_sp}d"] = _h_pool(f"max_pool{_sp}d")
    _FUNCTIONS[f"avg_pool{_sp}d"] = _h_pool(f"avg_pool{_sp}d")
    _FUNCTIONS[f"adaptive_avg_pool{_sp}d"] = _h_adaptive(_sp)
for _name, _op in _REDUCE_NAMES.items():
    _FUNCTIONS[_name] = _h_reduce(_op)


def _h_flatten(m: _Mapper, n: Any) -> Any:
    x = n.args[0]
    r = m.rank(x)
    start = int(m.arg(n, 1, "start_dim", 0)) % r
    end = int(m.arg(n, 2, "end_dim", -1)) % r
    if start == end:
        return m.ref(x)
    return m.add("flatten", {"start": start, "end": end}, [x], m.shape_of(n))


_FUNCTIONS["flatten"] = _h_flatten
# torch.max / torch.min over a dim return (values, indices): the values map to amax / amin (_h_minmax)


# ---- the matmul / attention / view family: einsum, attention, triu, views, copies, indexing ---------


class _Parts:
    """The pieces of ``split`` / ``chunk`` along one axis: each becomes a narrow node when used."""

    def __init__(self, x: Any, axis: int, bounds: list[tuple[int, int]]):
        self.x, self.axis, self.bounds = x, axis, bounds
        self.made: dict[int, Any] = {}

    def part(self, m: _Mapper, i: Any) -> Any:
        if not isinstance(i, int) or not -len(self.bounds) <= i < len(self.bounds):
            raise _Unsupported(f"piece {i!r} of a split of {len(self.bounds)}")
        i %= len(self.bounds)
        if i not in self.made:
            start, stop = self.bounds[i]
            self.made[i] = _narrow(m, self.x, self.axis, start, stop - start)
        return self.made[i]


def _axis(m: _Mapper, x: Any, dim: Any, extra: int = 0) -> int:
    """`dim` of a tensor of `x`'s rank (+ `extra`) as an axis from the left."""
    r = m.rank(x) + extra
    if not isinstance(dim, int) or isinstance(dim, bool) or not -r <= dim < r:
        raise _Unsupported(f"dim {dim!r} for rank {r}")
    return dim % r


def _narrow(m: _Mapper, x: Any, axis: int, start: int, length: int) -> Any:
    shape = list(m.arg_shape(x))
    if length < 1 or start < 0 or start + length > shape[axis]:
        raise _Unsupported(f"an empty or out-of-range slice [{start}:{start + length}] of a dim of {shape[axis]}")
    if (start, length) == (0, shape[axis]):
        return m.ref(x)
    r = len(shape)
    drop = shape[axis] - length
    shape[axis] = length
    return m.add("narrow", {"dim": r - axis, "start": start, "drop": drop}, [x], tuple(shape))


def _select(m: _Mapper, x: Any, axis: int, index: int) -> Any:
    shape = list(m.arg_shape(x))
    size, r = shape[axis], len(shape)
    if not -size <= index < size or r < 2:
        raise _Unsupported(f"index {index} of a dim of {size} (rank {r})")
    del shape[axis]
    return m.add("select", {"dim": r - axis, "index": index % size}, [x], tuple(shape))


def _strided(m: _Mapper, x: Any, axis: int, start: int, stop: int, step: int) -> Any:
    """``x[..., start:stop:step]`` (step > 1, Swin's ``x[:, 0::2, 1::2]``): the slice from `start`,
    padded to a whole number of steps (pad), split into (count, step) (reshape), index 0 of each
    step (select)."""
    if step < 1:
        raise _Unsupported(f"a slice with step {step}")
    count = len(range(start, stop, step))
    if count < 1:
        raise _Unsupported(f"an empty slice [{start}:{stop}:{step}]")
    cur = _narrow(m, x, axis, start, min(count * step, m.arg_shape(x)[axis] - start))
    shape = list(m.arg_shape(cur))
    r = len(shape)
    if shape[axis] < count * step:   # the last step is short: pad it (the padding is never read)
        extra = count * step - shape[axis]
        shape[axis] = count * step
        cur = m.add("pad", {"pads": (0, 0) * (r - 1 - axis) + (0, extra), "value": 0.0}, [cur], tuple(shape))
    split = (*shape[:axis], count, step, *shape[axis + 1:])
    cur = m.add("reshape", {"shape": split}, [cur], split)
    return _select(m, cur, axis + 1, 0)


def _unsqueeze(m: _Mapper, x: Any, axis: int) -> Any:
    shape = list(m.arg_shape(x))
    shape.insert(axis, 1)
    return m.add("unsqueeze", {"dim": len(shape) - axis}, [x], tuple(shape))


def _h_index(m: _Mapper, n: Any) -> Any:
    """Basic indexing ``x[i, a:b, None, ...]``: select, narrow and unsqueeze nodes (a step > 1: `_strided`)."""
    x, idx = n.args[0], n.args[1]
    items = list(idx) if isinstance(idx, tuple) else [idx]
    used = sum(1 for it in items if it is not None and it is not Ellipsis)
    if sum(1 for it in items if it is Ellipsis) > 1 or used > m.rank(x):
        raise _Unsupported(f"index {idx!r} of a rank-{m.rank(x)} tensor")
    cur, axis = x, 0
    for it in items:
        if it is None:
            cur = _unsqueeze(m, cur, axis)
            axis += 1
        elif it is Ellipsis:
            axis += m.rank(x) - used
        elif isinstance(it, int) and not isinstance(it, bool):
            cur = _select(m, cur, axis, it)
        elif isinstance(it, slice) and all(v is None or (isinstance(v, int) and not isinstance(v, bool))
                                           for v in (it.start, it.stop, it.step)):
            start, stop, step = it.indices(m.arg_shape(cur)[axis])
            cur = _narrow(m, cur, axis, start, stop - start) if step == 1 else _strided(m, cur, axis, start, stop, step)
            axis += 1
        else:
            raise _Unsupported(f"indexing with {type(it).__name__} (only ints, slices, None and ...)")
    return m.ref(cur)


def _matmul_equation(sa: tuple[int, ...], sb: tuple[int, ...]) -> str:
    """The einsum equation of torch.matmul of shapes sa (..., M, K) and sb (..., K, N), batch dims
    broadcast: a batch dim of size 1 on one side only gets a letter of its own there."""
    r = max(len(sa), len(sb))
    nb = r - 2
    ba, bb = (1,) * (r - len(sa)) + tuple(sa[:-2]), (1,) * (r - len(sb)) + tuple(sb[:-2])
    out_b, a_b, b_b = "", "", ""
    for i, (x, y) in enumerate(zip(ba, bb)):
        letter = "abcdefgh"[i]
        out_b += letter
        a_b += letter if x == max(x, y) else "pqrstuvw"[i]
        b_b += letter if y == max(x, y) else "PQRSTUVW"[i]
    a_b, b_b = a_b[nb - (len(sa) - 2):], b_b[nb - (len(sb) - 2):]
    return f"{a_b}mk,{b_b}kn->{out_b}mn"


def _h_einsum(m: _Mapper, n: Any) -> Any:
    from kernelgym.ops.catalog import einsum_operands

    eq, ops = n.args[0], list(n.args[1:])
    if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
        ops = list(ops[0])
    if not isinstance(eq, str):
        raise _Unsupported("einsum without an equation string first")
    eq = eq.replace(" ", "")
    if "->" not in eq:  # implicit output: the letters used once, in alphabetical order
        letters = eq.replace(",", "")
        eq += "->" + "".join(sorted(ch for ch in set(letters) if letters.count(ch) == 1))
    if len(ops) != 2:
        raise _Unsupported(f"einsum {eq!r} of {len(ops)} operand(s) (supported: two, a contraction that is a matmul)")
    try:
        subs, out = einsum_operands(eq)
    except ValueError as exc:
        raise _Unsupported(str(exc)) from None
    sizes: dict[str, int] = {}
    for s, t in zip(subs, ops):
        for ch, d in zip(s, m.arg_shape(t)):
            sizes.setdefault(ch, d)
    lone = [ch for ch in sizes if ch not in out and (ch in subs[0]) != (ch in subs[1]) and sizes[ch] != 1]
    if lone:
        raise _Unsupported(f"einsum {eq!r} sums letter {lone[0]!r} within one operand (a reduction, not a product)")
    return m.add("einsum", {"eq": eq}, ops, m.shape_of(n))


def _h_sdpa(m: _Mapper, n: Any) -> Any:
    q, k, v = n.args[0], m.arg(n, 1, "key"), m.arg(n, 2, "value")
    if m.arg(n, 3, "attn_mask") is not None:
        raise _Unsupported("scaled_dot_product_attention with an attn_mask")
    if m.arg(n, 4, "dropout_p", 0.0) not in (0, 0.0):
        raise _Unsupported("scaled_dot_product_attention with dropout (random)")
    if n.kwargs.get("enable_gqa", False):
        raise _Unsupported("scaled_dot_product_attention with enable_gqa")
    sq, sk, sv = m.arg_shape(q), m.arg_shape(k), m.arg_shape(v)
    if not (len(sq) == len(sk) == len(sv) >= 2 and sq[:-2] == sk[:-2] == sv[:-2]):
        raise _Unsupported(f"scaled_dot_product_attention of shapes {sq}, {sk}, {sv} (batch dims must match)")
    params: dict[str, Any] = {"causal": bool(m.arg(n, 5, "is_causal", False))}
    scale = m.arg(n, 6, "scale")
    if scale is not None:
        params["scale"] = float(scale)
    return m.add("sdpa", params, [q, k, v], m.shape_of(n))


def _h_triu(m: _Mapper, n: Any) -> Any:
    return m.unary("triu", n, {"diagonal": int(m.arg(n, 1, "diagonal", 0))})


def _h_unsqueeze(m: _Mapper, n: Any) -> Any:
    x = n.args[0]
    return _unsqueeze(m, x, _axis(m, x, m.arg(n, 1, "dim"), extra=1))


def _h_squeeze(m: _Mapper, n: Any) -> Any:
    x = n.args[0]
    shape = m.arg_shape(x)
    dim = n.args[1:] if len(n.args) > 2 else m.arg(n, 1, "dim")
    if dim is None:
        axes = [i for i, d in enumerate(shape) if d == 1]
    else:
        axes = [_axis(m, x, d) for d in (dim if isinstance(dim, (tuple, list)) else (dim,))]
        axes = [a for a in axes if shape[a] == 1]  # squeezing a dim that is not 1 is a no-op
    cur, cur_shape = x, list(shape)
    for a in sorted(set(axes), reverse=True):
        if len(cur_shape) < 2:
            raise _Unsupported("squeeze to a 0-d tensor")
        r = len(cur_shape)
        del cur_shape[a]
        cur = m.add("squeeze", {"dim": r - a}, [cur], tuple(cur_shape))
    return m.ref(cur)


def _h_clone(m: _Mapper, n: Any) -> Any:
    if n.kwargs.get("memory_format") not in (None,) and "contiguous" not in str(n.kwargs.get("memory_format")):
        raise _Unsupported("clone with a memory format")
    return m.unary("clone", n)


def _h_flip(m: _Mapper, n: Any) -> Any:
    x = n.args[0]
    dims = n.args[1:] if len(n.args) > 2 else m.arg(n, 1, "dims")
    dims = dims if isinstance(dims, (tuple, list)) else (dims,)
    axes = tuple(sorted({_axis(m, x, d) for d in dims if m.arg_shape(x)[_axis(m, x, d)] > 1}))
    if not axes:
        return m.unary("clone", n)
    return m.unary("flip", n, {"dims": axes})


def _h_narrow(m: _Mapper, n: Any) -> Any:
    x = n.args[0]
    start, length = m.arg(n, 2, "start"), m.arg(n, 3, "length")
    if not isinstance(start, int) or not isinstance(length, int):
        raise _Unsupported("narrow with a tensor start or length")
    axis = _axis(m, x, m.arg(n, 1, "dim"))
    return _narrow(m, x, axis, start % m.arg_shape(x)[axis] if start < 0 else start, length)


def _h_select(m: _Mapper, n: Any) -> Any:
    x = n.args[0]
    index = m.arg(n, 2, "index")
    if not isinstance(index, int):
        raise _Unsupported("select with a tensor index")
    return _select(m, x, _axis(m, x, m.arg(n, 1, "dim")), index)


def _h_expand(m: _Mapper, n: Any) -> Any:
    x = n.args[0]
    if tuple(m.shape_of(n)) == tuple(m.arg_shape(x)):
        return m.ref(x)
    return m.add("expand", {}, [x], m.shape_of(n))


def _h_repeat(m: _Mapper, n: Any) -> Any:
    x = n.args[0]
    if tuple(m.shape_of(n)) == tuple(m.arg_shape(x)):
        return m.unary("clone", n)
    return m.add("repeat", {}, [x], m.shape_of(n))


def _h_split(kind: str) -> Callable[[_Mapper, Any], Any]:
    def handler(m: _Mapper, n: Any) -> Any:
        x = n.args[0]
        arg = m.arg(n, 1, "split_size_or_sections" if kind == "split" else "chunks")
        axis = _axis(m, x, m.arg(n, 2, "dim", 0))
        size = m.arg_shape(x)[axis]
        if kind == "chunk":
            if not isinstance(arg, int) or arg < 1:
                raise _Unsupported(f"chunk into {arg!r}")
            arg = -(-size // arg)
        if isinstance(arg, int):
            lengths = [min(arg, size - s) for s in range(0, size, arg)]
        elif isinstance(arg, (tuple, list)) and all(isinstance(v, int) for v in arg) and sum(arg) == size:
            lengths = list(arg)
        else:
            raise _Unsupported(f"{kind} by {arg!r}")
        starts = [sum(lengths[:i]) for i in range(len(lengths))]
        return _Parts(x, axis, [(s, s + length) for s, length in zip(starts, lengths)])

    return handler


_FUNCTIONS.update({
    "einsum": _h_einsum, "scaled_dot_product_attention": _h_sdpa, "triu": _h_triu,
    "unsqueeze": _h_unsqueeze, "squeeze": _h_squeeze, "clone": _h_clone, "detach": _h_identity,
    "flip": _h_flip, "narrow": _h_narrow, "select": _h_select, "expand": _h_expand, "expand_as": _h_expand,
    "repeat": _h_repeat, "split": _h_split("split"), "chunk": _h_split("chunk"),
})
_METHODS = dict(_FUNCTIONS)


def _h_to(m: _Mapper, n: Any) -> Any:
    """x.to(x.device), x.to(x.dtype), x.type_as(y) of the same dtype: x itself (tracing sees one
    device); a dtype conversion has no catalog op."""
    x = n.args[0]
    src, res = x.meta.get("tensor_meta") if hasattr(x, "meta") else None, n.meta.get("tensor_meta")
    if hasattr(src, "dtype") and hasattr(res, "dtype") and src.dtype == res.dtype and src.shape == res.shape:
        return m.ref(x)
    raise _Unsupported("a dtype conversion (.to / .type_as to another dtype) has no catalog op")


_METHODS.update({"to": _h_to, "type_as": _h_to})


def _function_handler(fn: Any) -> Callable[[_Mapper, Any], Any] | None:
    import torch

    name = getattr(fn, "__name__", None)
    if fn is operator.getitem:
        return _h_getitem
    if fn is getattr:
        return _h_getattr
    if fn in OPERATOR_HANDLERS:
        return OPERATOR_HANDLERS[fn]
    if fn in (operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pow,
              operator.matmul, operator.gt, operator.lt, operator.abs):
        return {"add": _FUNCTIONS["add"], "sub": _FUNCTIONS["sub"], "mul": _FUNCTIONS["mul"],
                "truediv": _FUNCTIONS["truediv"], "neg": _FUNCTIONS["neg"], "pow": _h_pow,
                "matmul": _h_matmul, "gt": _FUNCTIONS["gt"], "lt": _FUNCTIONS["lt"], "abs": _FUNCTIONS["abs"]}[name]
    module = getattr(fn, "__module__", "") or ""
    if not (module.startswith("torch") or fn in vars(torch).values()):
        return None
    if name in ("vector_norm", "linalg_vector_norm"):  # torch.linalg.vector_norm is torch._C._linalg's
        return _FUNCTIONS["norm"]
    return _FUNCTIONS.get(name) if name else None


# ---- nn.Module handlers ----------------------------------------------------------------------------


def _mod_unary(op: str) -> Callable[[_Mapper, Any, Any], Any]:
    return lambda m, n, sub: m.unary(op, n)


def _mod_params(m: _Mapper, n: Any, roles: dict[str, str | None]) -> dict[str, str]:
    out = {}
    for role, attr in roles.items():
        key = f"{n.target}.{attr}"
        if attr is not None and key in m.state_index:
            out[role] = key
    return out


def _m_linear(m: _Mapper, n: Any, sub: Any) -> Any:
    return m.add("linear", {}, [n.args[0]], m.shape_of(n), _mod_params(m, n, {"weight": "weight", "bias": "bias"}))


def _m_conv(op: str) -> Callable[[_Mapper, Any, Any], Any]:
    def handler(m: _Mapper, n: Any, sub: Any) -> Any:
        if sub.padding_mode != "zeros":
            raise _Unsupported(f"{type(sub).__name__} with padding_mode={sub.padding_mode!r}")
        roles = _mod_params(m, n, {"weight": "weight", "bias": "bias"})
        params = _conv_params(op, tuple(sub.kernel_size), sub.stride, sub.padding, sub.dilation, sub.groups,
                              "bias" in roles, getattr(sub, "output_padding", 0))
        return m.add(op, params, [n.args[0]], m.shape_of(n), roles)

    return handler


def _m_layer_norm(m: _Mapper, n: Any, sub: Any) -> Any:
    params = {"ndims": len(sub.normalized_shape), "eps": float(sub.eps)}
    return m.add("layer_norm", params, [n.args[0]], m.shape_of(n), _mod_params(m, n, {"weight": "weight", "bias": "bias"}))


def _m_rms_norm(m: _Mapper, n: Any, sub: Any) -> Any:
    params = {"ndims": len(sub.normalized_shape), "eps": _eps(m, sub.eps)}
    return m.add("rms_norm", params, [n.args[0]], m.shape_of(n), _mod_params(m, n, {"weight": "weight"}))


def _m_batch_norm(m: _Mapper, n: Any, sub: Any) -> Any:
    if not sub.track_running_stats or sub.running_mean is None:
        raise _Unsupported("BatchNorm without running statistics (batch statistics in eval)")
    roles = {"weight": "weight", "bias": "bias", "running_mean": "running_mean", "running_var": "running_var"}
    return m.add("batch_norm", {"eps": float(sub.eps)}, [n.args[0]], m.shape_of(n), _mod_params(m, n, roles))


def _m_group_norm(m: _Mapper, n: Any, sub: Any) -> Any:
    return m.add("group_norm", {"groups": int(sub.num_groups), "eps": float(sub.eps)}, [n.args[0]], m.shape_of(n),
                 _mod_params(m, n, {"weight": "weight", "bias": "bias"}))


def _m_instance_norm(m: _Mapper, n: Any, sub: Any) -> Any:
    if sub.track_running_stats:
        raise _Unsupported("InstanceNorm with running statistics (used in eval mode)")
    params = {"affine": bool(sub.affine), "eps": float(sub.eps)}
    return m.add("instance_norm", params, [n.args[0]], m.shape_of(n), _mod_params(m, n, {"weight": "weight", "bias": "bias"}))


def _m_softmax(op: str) -> Callable[[_Mapper, Any, Any], Any]:
    def handler(m: _Mapper, n: Any, sub: Any) -> Any:
        if sub.dim is None:
            raise _Unsupported(f"{type(sub).__name__} without dim")
        return m.add(op, {"dim": m.dim_from_right(n.args[0], sub.dim)}, [n.args[0]], m.shape_of(n))

    return handler


def _m_pool(op: str) -> Callable[[_Mapper, Any, Any], Any]:
    def handler(m: _Mapper, n: Any, sub: Any) -> Any:
        win = {"kernel_size": sub.kernel_size, "stride": sub.stride, "padding": sub.padding,
               "ceil_mode": sub.ceil_mode}
        if op.startswith("max"):
            win |= {"dilation": sub.dilation, "return_indices": sub.return_indices}
        else:
            win |= {"count_include_pad": sub.count_include_pad, "divisor_override": getattr(sub, "divisor_override", None)}
        return _pool(m, n, op, win)

    return handler


def _m_adaptive(spatial: int) -> Callable[[_Mapper, Any, Any], Any]:
    return lambda m, n, sub: _adaptive(m, n, spatial)


def _m_embedding(m: _Mapper, n: Any, sub: Any) -> Any:
    if sub.max_norm is not None:
        raise _Unsupported("Embedding with max_norm")
    return m.add("embedding", {}, [n.args[0]], m.shape_of(n), _mod_params(m, n, {"weight": "weight"}))


def _m_flatten(m: _Mapper, n: Any, sub: Any) -> Any:
    x = n.args[0]
    r = m.rank(x)
    start, end = sub.start_dim % r, sub.end_dim % r
    if start == end:
        return m.ref(x)
    return m.add("flatten", {"start": start, "end": end}, [x], m.shape_of(n))


def _m_with(op: str, **attrs: str) -> Callable[[_Mapper, Any, Any], Any]:
    return lambda m, n, sub: m.unary(op, n, {k: float(getattr(sub, a)) for k, a in attrs.items()})


def _m_gelu(m: _Mapper, n: Any, sub: Any) -> Any:
    return m.unary("gelu_tanh" if sub.approximate == "tanh" else "gelu", n)


def _m_softplus(m: _Mapper, n: Any, sub: Any) -> Any:
    if sub.beta != 1 or sub.threshold != 20:
        raise _Unsupported("Softplus with beta != 1 or threshold != 20")
    return m.unary("softplus", n)


_MODULES: dict[str, Callable[[_Mapper, Any, Any], Any]] = {
    "ReLU": _mod_unary("relu"), "ReLU6": _mod_unary("relu6"), "SELU": _mod_unary("selu"), "SiLU": _mod_unary("silu"),
    "Mish": _mod_unary("mish"), "Sigmoid": _mod_unary("sigmoid"), "LogSigmoid": _mod_unary("logsigmoid"),
    "Hardsigmoid": _mod_unary("hardsigmoid"), "Hardswish": _mod_unary("hardswish"), "Softsign": _mod_unary("softsign"),
    "Tanh": _mod_unary("tanh"), "GELU": _m_gelu, "Softplus": _m_softplus,
    "LeakyReLU": _m_with("leaky_relu", slope="negative_slope"), "ELU": _m_with("elu", alpha="alpha"),
    "Hardtanh": _m_with("hardtanh", lo="min_val", hi="max_val"),
    "Linear": _m_linear, "Conv1d": _m_conv("conv1d"), "Conv2d": _m_conv("conv2d"), "Conv3d": _m_conv("conv3d"),
    "ConvTranspose1d": _m_conv("conv_transpose1d"), "ConvTranspose2d": _m_conv("conv_transpose2d"),
    "ConvTranspose3d": _m_conv("conv_transpose3d"),
    "LayerNorm": _m_layer_norm, "RMSNorm": _m_rms_norm, "BatchNorm1d": _m_batch_norm, "BatchNorm2d": _m_batch_norm,
    "BatchNorm3d": _m_batch_norm, "GroupNorm": _m_group_norm, "InstanceNorm1d": _m_instance_norm,
    "InstanceNorm2d": _m_instance_norm, "InstanceNorm3d": _m_instance_norm,
    "Softmax": _m_softmax("softmax"), "LogSoftmax": _m_softmax("log_softmax"),
    "Embedding": _m_embedding,
    "Flatten": _m_flatten, "Identity": lambda m, n, sub: m.ref(n.args[0]),
    "Dropout": lambda m, n, sub: m.ref(n.args[0]),
}
for _sp in (1, 2, 3):
    _MODULES[f"MaxPool{_sp}d"] = _m_pool(f"max_pool{_sp}d")
    _MODULES[f"AvgPool{_sp}d"] = _m_pool(f"avg_pool{_sp}d")
    _MODULES[f"AdaptiveAvgPool{_sp}d"] = _m_adaptive(_sp)

