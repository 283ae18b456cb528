"""The walk from a shape-traced fx graph to catalog-op nodes: `_Mapper` visits each fx node,
dispatches calls to the handler tables (`_FUNCTIONS`, `_METHODS`, `_MODULES`,
`OPERATOR_HANDLERS`; `GRAPH_PASSES` rewrite the graph first) and collects every unsupported call
(`_Unsupported`) into one `TraceError`. Handlers get the mapper and the fx node and return a node
reference (`_Mapper.add`), or a marker only some patterns consume (`_Cmp`, `_Multi`). The tables
are filled by the handler modules (`policies.compiler.trace` registers the built-in ones)."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from kernelgym.sampler.graph import InputSpec, Node
from policies.compiler.ir import StateEntry
from policies.compiler.trace_constants import _fold_constants
from policies.compiler.trace_reference import TracedGraph, TraceError

# Rewrites of the shape-propagated fx graph run before mapping (in order): each replaces an idiom
# spanning several calls (a reversed scan written as flip / cumsum / flip) by one node the handlers
# map; registered by the modules that define them (`trace_reduce`).
GRAPH_PASSES: list[Callable[[Any], None]] = []
# Handlers of Python operators beyond the arithmetic ones `_function_handler` knows (``a == b``),
# registered by the modules that define them (`trace_nn`).
OPERATOR_HANDLERS: dict[Any, Callable[[Any, Any], Any]] = {}

# Calls of torch functions and tensor methods by name, and of nn modules by class name: name ->
# handler of (mapper, fx node), or of (mapper, fx node, module) for `_MODULES`.
_FUNCTIONS: dict[str, Callable[[_Mapper, Any], Any]] = {}
_METHODS: dict[str, Callable[[_Mapper, Any], Any]] = {}
_MODULES: dict[str, Callable[[_Mapper, Any, Any], Any]] = {}

# Python operators fx records as calls, by the name of their handler in `_FUNCTIONS`.
_OPERATORS = {operator.add: "add", operator.sub: "sub", operator.mul: "mul", operator.truediv: "truediv",
              operator.neg: "neg", operator.pow: "pow", operator.matmul: "matmul", operator.gt: "gt",
              operator.lt: "lt", operator.abs: "abs"}


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
    """A call with no catalog op: the mapper records it, with where it is, and goes on."""


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


def _scalar(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _function_handler(fn: Any) -> Callable[[_Mapper, Any], Any] | None:
    import torch

    name = getattr(fn, "__name__", None)
    if fn is operator.getitem:
        return _FUNCTIONS["getitem"]
    if fn is getattr:
        return _FUNCTIONS["getattr"]
    if fn in OPERATOR_HANDLERS:
        return OPERATOR_HANDLERS[fn]
    if fn in _OPERATORS:
        return _FUNCTIONS[_OPERATORS[fn]]
    module = getattr(fn, "__module__", "") or ""
    if not (module.startswith("torch") or fn in vars(torch).values()):
        return None
    if name in ("vector_norm", "linalg_vector_norm"):  # torch.linalg.vector_norm is torch._C._linalg's
        return _FUNCTIONS["norm"]
    return _FUNCTIONS.get(name) if name else None
