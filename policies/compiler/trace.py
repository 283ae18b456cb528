"""Graphs for hand-written KernelBench files: trace `Model` with torch.fx and map each call to a
catalog op (with concrete shapes from running the traced graph on `get_inputs()`).

Tracing (`shape_trace`) runs the model on the example inputs as it goes, so sizes are numbers
(``x.view(x.shape[0], -1)``, ``b, c, h, w = x.shape``, loops over ``range(x.shape[0])`` trace);
values are never branched on. Calls the catalog has no op for (``x.view(a, b, c)`` that splits a
dim, the indices of ``torch.max``, ``torch.fft``, control flow on tensor values, ...) raise
`TraceError` naming every unsupported call and where it is (once: calls that only depend on it
are not listed), rather than being guessed. The reference runs here (it is the task's own code,
as in `kernelgym.task.exec_source`); nothing of the candidate does.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kernelgym.pyast import parse
from kernelgym.sampler.graph import Graph, InputSpec, Node
from policies.compiler.ir import CompileError, Program, StateEntry

# Rewrites of the shape-propagated fx graph run before mapping (in order): each replaces an idiom
# spanning several calls (a reversed scan written as flip / cumsum / flip) by one node the handlers
# map; registered by the modules that define them (`trace_reduce`).
GRAPH_PASSES: list[Callable[[Any], None]] = []


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


def graph_from_source(source: str) -> TracedGraph:
    """Trace `Model` of a KernelBench-format source into a graph of catalog ops.

    Raises `TraceError` when the module does not run, `Model` cannot be symbolically traced, or
    some calls have no catalog op (all of them are listed in the message).
    """
    import torch
    from torch.fx.passes.shape_prop import ShapeProp

    from kernelgym.task import TaskFormatError, check_source, exec_source

    try:
        check_source(source, "<reference>")
    except TaskFormatError as exc:
        raise TraceError(str(exc)) from None
    try:
        mod = exec_source(source, "kernelgym_traced_reference")
        init_inputs = list(mod.get_init_inputs())
        torch.manual_seed(0)
        model = mod.Model(*init_inputs).eval()
        torch.manual_seed(1)
        inputs = list(mod.get_inputs())
    except Exception as exc:  # noqa: BLE001 - any failure of task code is reported, not raised raw
        raise TraceError(f"running the reference failed: {type(exc).__name__}: {exc}") from None
    try:
        gm = shape_trace(model, inputs)
    except Exception as exc:  # noqa: BLE001
        raise TraceError(f"torch.fx cannot trace Model.forward: {type(exc).__name__}: {exc}") from None
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*inputs)
    except Exception as exc:  # noqa: BLE001
        raise TraceError(f"running the traced graph failed: {type(exc).__name__}: {exc}") from None
    return _Mapper(gm, model, inputs, _init_params(source)).run()


def shape_trace(model: Any, inputs: list[Any]) -> Any:
    """`torch.fx.symbolic_trace` with concrete sizes: every proxy carries the real value of its node,
    computed on (copies of) the example inputs as tracing goes, so ``x.shape``, ``x.size(d)``,
    ``x.dim()``, ``x.ndim``, ``x.numel()`` and ``len(x)`` are numbers -- as they are for a task with
    fixed shapes -- and ``x.view(x.shape[0], -1)``, ``b, c, h, w = x.shape`` or
    ``x.permute(0, *range(2, x.dim()), 1)`` trace to calls with constant arguments. Only sizes are
    made concrete: Python control flow on tensor *values* still fails to trace, as in plain fx."""
    import torch
    import torch.fx
    from torch.fx.node import map_aggregate

    class ShapeProxy(torch.fx.Proxy):
        value: Any = None  # a class attribute, so reading it never reaches Proxy.__getattr__

        def _known(self) -> Any:
            v = self.value
            return v if isinstance(v, torch.Tensor) else None

        @property
        def shape(self) -> Any:
            t = self._known()
            return t.shape if t is not None else torch.fx.Proxy.__getattr__(self, "shape")

        @property
        def ndim(self) -> Any:
            t = self._known()
            return t.ndim if t is not None else torch.fx.Proxy.__getattr__(self, "ndim")

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

    class ShapeTracer(torch.fx.Tracer):
        def __init__(self, example: list[Any]):
            super().__init__()
            self.example = [t.clone() if isinstance(t, torch.Tensor) else t for t in example]
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
                rv.value = self.real_value(kind, target, args, kwargs)
            return rv

        def real_value(self, kind: str, target: Any, args: Any, kwargs: Any) -> Any:
            if kind == "placeholder":
                self.placeholders += 1
                return self.example[self.placeholders - 1] if self.placeholders <= len(self.example) else None

            def real(a: Any) -> Any:
                if isinstance(a, torch.fx.Proxy):
                    v = a.__dict__.get("value")
                    if v is None:
                        raise LookupError("no value")
                    return v
                return a

            try:
                a, k = map_aggregate(args, real), map_aggregate(kwargs, real)
                self.computing = True
                with torch.no_grad():
                    if kind == "call_function":
                        return target(*a, **k)
                    if kind == "call_method":
                        return getattr(a[0], target)(*a[1:], **k)
                    if kind == "call_module":
                        return self.root.get_submodule(target)(*a, **k)
                    if kind == "get_attr":
                        obj = self.root
                        for atom in target.split("."):
                            obj = getattr(obj, atom)
                        return obj
                    return None
            except Exception:  # noqa: BLE001 - no value: sizes of this node stay symbolic, as in plain fx
                return None
            finally:
                self.computing = False

    tracer = ShapeTracer(inputs)
    graph = tracer.trace(model)
    return torch.fx.GraphModule(tracer.root, graph, type(model).__name__)


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
            raise TraceError(f"{fx_node.name}: no single tensor result")
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
            return tuple(self.inputs[k].shape)
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
        for n in self.gm.graph.nodes:
            if any(u in failed for u in n.all_input_nodes):
                failed.add(n)  # reported once, at the unsupported call it depends on
                self.env[n] = None
                continue
            try:
                if n.op == "placeholder":
                    t = self.inputs[len(in_specs)]
                    if not isinstance(t, self.torch.Tensor):
                        raise _Unsupported("non-tensor forward argument")
                    kind = "float" if t.is_floating_point() else "index"
                    in_specs.append(InputSpec(tuple(t.shape), kind))
                    self.env[n] = ("input", len(in_specs) - 1)
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
    if op in ("conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d"):
        # F.conv*d(x, w, b, stride, padding, dilation, groups);
        # F.conv_transpose*d(x, w, b, stride, padding, output_padding, groups, dilation)
        transposed = op.startswith("conv_transpose")
        dil, groups = (m.arg(n, 7, "dilation", 1), m.arg(n, 6, "groups", 1)) if transposed else \
            (m.arg(n, 5, "dilation", 1), m.arg(n, 6, "groups", 1))
        if not _all_equal(dil, 1) or groups != 1:
            raise _Unsupported(f"{op} with dilation or groups")
        if transposed and not _all_equal(m.arg(n, 5, "output_padding", 0), 0):
            raise _Unsupported(f"{op} with output_padding")
        st = _state_keys(m, n, {"weight": m.arg(n, 1, "weight"), "bias": m.arg(n, 2, "bias")})
        w = m.state[m.state_index[st["weight"]]].shape
        pad = m.arg(n, 4, "padding", 0)
        if isinstance(pad, str):
            raise _Unsupported(f"{op} with padding={pad!r}")
        return m.add(op, {"kernel": tuple(w[2:]), "stride": _tup(m.arg(n, 3, "stride", 1)), "padding": _tup(pad)},
                     [x], shape, st)
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


def _eps(m: _Mapper, eps: Any) -> float:
    import torch

    return float(eps) if eps is not None else float(torch.finfo(getattr(torch, m.dtype)).eps)


def _all_equal(v: Any, value: int) -> bool:
    """An int or a tuple / list of ints, all equal to `value`."""
    return all(int(x) == value for x in (v if isinstance(v, (tuple, list)) else (v,)))


def _tup(v: Any) -> tuple[int, ...] | int:
    if isinstance(v, (tuple, list)):
        return tuple(int(x) for x in v)
    return int(v)


def _h_instance_norm(m: _Mapper, n: Any) -> Any:
    if any(m.arg(n, i, k) is not None for i, k in ((1, "running_mean"), (2, "running_var"), (3, "weight"),
                                                   (4, "bias"))):
        raise _Unsupported("instance_norm with running stats or affine parameters")
    return m.add("instance_norm", {"eps": float(m.arg(n, 7, "eps", 1e-5))}, [n.args[0]], m.shape_of(n))


def _h_matmul(m: _Mapper, n: Any) -> Any:
    a, b = n.args[0], n.args[1]
    ra, rb = m.rank(a), m.rank(b)
    shape = m.shape_of(n)
    if ra == 2 and rb == 2:
        return m.add("matmul", {}, [a, b], shape)
    if ra == 3 and rb == 3 and m.arg_shape(a)[0] == m.arg_shape(b)[0]:
        return m.add("bmm", {}, [a, b], shape)
    raise _Unsupported(f"matmul of ranks {ra} and {rb} (supported: 2-D x 2-D, batched 3-D x 3-D)")


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
    if rng is None:
        raise _Unsupported(f"reshape {src} -> {dst} (only merging adjacent dims maps to a catalog op)")
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
    def handler(m: _Mapper, n: Any) -> Any:
        return _pool(m, n, op, m.arg(n, 1, "kernel_size"), m.arg(n, 2, "stride"), m.arg(n, 3, "padding", 0),
                     n.kwargs.get("ceil_mode", False), n.kwargs.get("dilation", 1))

    return handler


def _pool(m: _Mapper, n: Any, op: str, k: Any, s: Any, pad: Any, ceil: Any, dil: Any) -> Any:
    k, s, pad, dil = _square(k), _square(s if s not in (None, ()) else k), _square(pad), _square(dil)
    if None in (k, s, pad, dil) or pad != 0 or dil != 1 or ceil:
        raise _Unsupported(f"{op} with non-square windows, padding, dilation or ceil_mode")
    return m.add(op, {"kernel": k, "stride": s}, [n.args[0]], m.shape_of(n))


def _square(v: Any) -> int | None:
    if isinstance(v, (tuple, list)):
        return int(v[0]) if len(set(v)) == 1 else None
    return int(v) if v is not None else None


def _h_adaptive(m: _Mapper, n: Any) -> Any:
    size = m.arg(n, 1, "output_size")
    if size not in (1, (1, 1), [1, 1]):
        raise _Unsupported("adaptive_avg_pool2d to a size other than 1")
    return m.add("adaptive_avg_pool2d", {}, [n.args[0]], m.shape_of(n))


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
    "linear": _h_state_fn("linear", ()), "conv1d": _h_state_fn("conv1d", ()), "conv2d": _h_state_fn("conv2d", ()),
    "conv_transpose1d": _h_state_fn("conv_transpose1d", ()), "conv_transpose2d": _h_state_fn("conv_transpose2d", ()),
    "layer_norm": _h_state_fn("layer_norm", ()), "rms_norm": _h_state_fn("rms_norm", ()),
    "group_norm": _h_state_fn("group_norm", ()), "batch_norm": _h_state_fn("batch_norm", ()),
    "embedding": _h_state_fn("embedding", ()), "instance_norm": _h_instance_norm,
    "matmul": _h_matmul, "mm": _h_matmul, "bmm": _h_matmul, "addmm": _h_addmm,
    "transpose": _h_transpose, "t": _h_transpose, "permute": _h_permute,
    "reshape": _h_reshape, "view": _h_reshape, "cat": _h_cat, "concat": _h_cat, "concatenate": _h_cat,
    "tril": _h_tril, "gather": _h_gather, "contiguous": _h_identity, "dropout": _h_identity,
    "max_pool1d": _h_pool("max_pool1d"), "max_pool2d": _h_pool("max_pool2d"),
    "avg_pool1d": _h_pool("avg_pool1d"), "avg_pool2d": _h_pool("avg_pool2d"),
    "adaptive_avg_pool2d": _h_adaptive, "size": _h_meta, "dim": _h_meta,
})
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
_METHODS = dict(_FUNCTIONS)


def _function_handler(fn: Any) -> Callable[[_Mapper, Any], Any] | None:
    import torch

    name = getattr(fn, "__name__", None)
    if fn is operator.getitem:
        return _h_getitem
    if fn is getattr:
        return _h_getattr
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
        if sub.groups != 1 or any(d != 1 for d in sub.dilation) or sub.padding_mode != "zeros":
            raise _Unsupported(f"{type(sub).__name__} with groups, dilation or padding_mode")
        if isinstance(sub.padding, str):
            raise _Unsupported(f"{type(sub).__name__} with padding={sub.padding!r}")
        if op.startswith("conv_transpose") and any(p != 0 for p in sub.output_padding):
            raise _Unsupported("transposed convolution with output_padding")
        params = {"kernel": tuple(sub.kernel_size), "stride": tuple(sub.stride), "padding": tuple(sub.padding)}
        return m.add(op, params, [n.args[0]], m.shape_of(n), _mod_params(m, n, {"weight": "weight", "bias": "bias"}))

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
    if sub.affine or sub.track_running_stats:
        raise _Unsupported("InstanceNorm with affine parameters or running statistics")
    return m.add("instance_norm", {"eps": float(sub.eps)}, [n.args[0]], m.shape_of(n))


def _m_softmax(op: str) -> Callable[[_Mapper, Any, Any], Any]:
    def handler(m: _Mapper, n: Any, sub: Any) -> Any:
        if sub.dim is None:
            raise _Unsupported(f"{type(sub).__name__} without dim")
        return m.add(op, {"dim": m.dim_from_right(n.args[0], sub.dim)}, [n.args[0]], m.shape_of(n))

    return handler


def _m_pool(op: str) -> Callable[[_Mapper, Any, Any], Any]:
    def handler(m: _Mapper, n: Any, sub: Any) -> Any:
        return _pool(m, n, op, sub.kernel_size, sub.stride, sub.padding, sub.ceil_mode, getattr(sub, "dilation", 1))

    return handler


def _m_adaptive(m: _Mapper, n: Any, sub: Any) -> Any:
    if sub.output_size not in (1, (1, 1), [1, 1]):
        raise _Unsupported("AdaptiveAvgPool2d to a size other than 1")
    return m.add("adaptive_avg_pool2d", {}, [n.args[0]], m.shape_of(n))


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
    "Linear": _m_linear, "Conv1d": _m_conv("conv1d"), "Conv2d": _m_conv("conv2d"),
    "ConvTranspose1d": _m_conv("conv_transpose1d"), "ConvTranspose2d": _m_conv("conv_transpose2d"),
    "LayerNorm": _m_layer_norm, "RMSNorm": _m_rms_norm, "BatchNorm1d": _m_batch_norm, "BatchNorm2d": _m_batch_norm,
    "GroupNorm": _m_group_norm, "InstanceNorm1d": _m_instance_norm, "InstanceNorm2d": _m_instance_norm,
    "Softmax": _m_softmax("softmax"), "LogSoftmax": _m_softmax("log_softmax"),
    "MaxPool1d": _m_pool("max_pool1d"), "MaxPool2d": _m_pool("max_pool2d"), "AvgPool1d": _m_pool("avg_pool1d"),
    "AvgPool2d": _m_pool("avg_pool2d"), "AdaptiveAvgPool2d": _m_adaptive, "Embedding": _m_embedding,
    "Flatten": _m_flatten, "Identity": lambda m, n, sub: m.ref(n.args[0]),
    "Dropout": lambda m, n, sub: m.ref(n.args[0]),
}


# Handlers of the reduction / scan / loss family (registered into the tables above).
from policies.compiler import trace_reduce as _trace_reduce  # noqa: E402,F401
