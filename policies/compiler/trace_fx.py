"""torch.fx tracing with concrete sizes (`shape_trace`): every traced value is computed on the
meta device as tracing goes, so shape logic in forward traces to constants; forward's parameters
that get_inputs() does not supply are bound to their defaults. Modules and functions too slow to
run even on meta (the recurrent layers) get their result shapes from `MODULE_VALUES` /
`FUNCTION_VALUES`, filled by the modules that handle them."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

# Modules not run while tracing (the recurrent layers: step by step in Python even on meta): their
# name -> a function of (module, *args, **kwargs) giving the result's meta tensors (`trace_recurrent`).
MODULE_VALUES: dict[str, Callable[..., Any]] = {}
# The same for functions (``torch.lstm``, ...): function -> a function of its arguments.
FUNCTION_VALUES: dict[Any, Callable[..., Any]] = {}


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
    *values* still fails to trace, as in plain fx. Callers in threads must hold `trace._TRACE_LOCK`."""
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
