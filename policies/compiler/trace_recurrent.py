"""Tracer handlers of the recurrent layers, registered into `trace`'s tables when it is imported:
``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` (tanh or relu) called with an explicit initial state,
``self.lstm(x, (h0, c0))`` / ``self.gru(x, h0)``, batched (3-D) input, any number of layers,
bidirectional or not, batch-first or not, with or without biases (no ``proj_size``).

The layer's tuple result maps lazily: each part the forward uses (``out, (h, c) = ...``,
``state[0]``, ``self.gru(x, h0)[1]``) becomes one catalog node of the op (`lstm`, `gru`, `rnn`)
whose ``result`` parameter says which tensor it is ("output", "h_n" or "c_n"); unused parts make
no node. While tracing the layer is not run (on meta it would still step through the sequence in
Python): `recurrent_value` gives its result as meta tensors of the shapes torch documents.
"""

from __future__ import annotations

from typing import Any

from kernelgym.ops.catalog import recurrent_weight_names
from policies.compiler.trace import _FUNCTIONS, _MODULES, FUNCTION_VALUES, GRAPH_PASSES, MODULE_VALUES
from policies.compiler.trace_mapper import _Mapper, _Unsupported
from policies.compiler.trace_modules import _mod_params
from policies.compiler.trace_views import _Parts, _unsqueeze

_OPS = {"LSTM": "lstm", "GRU": "gru", "RNN": "rnn"}


def recurrent_value(sub: Any, x: Any, hx: Any = None) -> Any:
    """What ``sub(x, hx)`` returns, as meta tensors: (output, h_n) or, for an LSTM, (output, (h_n, c_n))."""
    import torch

    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise LookupError(f"{type(sub).__name__} of an input that is not a batched (3-D) tensor")
    d = 2 if sub.bidirectional else 1
    batch = x.shape[0] if sub.batch_first else x.shape[1]
    out = torch.empty((*x.shape[:2], d * sub.hidden_size), dtype=x.dtype, device="meta")
    h_n = torch.empty((sub.num_layers * d, batch, sub.hidden_size), dtype=x.dtype, device="meta")
    if type(sub).__name__ == "LSTM":
        return out, (h_n, torch.empty_like(h_n))
    return out, h_n


class _RecurrentResult(_Parts):
    """The (output, state) tuple of a recurrent layer: part 0 is the output node, part 1 the h_n
    node (GRU, RNN) or the (h_n, c_n) pair (LSTM); nodes are made when a part is used."""

    def __init__(self, op: str, params: dict[str, Any], args: list[Any], shapes: dict[str, tuple[int, ...]],
                 roles: dict[str, str]):
        self.op, self.params, self.args, self.shapes, self.roles = op, params, args, shapes, roles
        self.made: dict[Any, Any] = {}

    def node(self, m: _Mapper, result: str) -> Any:
        if result not in self.made:
            self.made[result] = m.add(self.op, {**self.params, "result": result}, self.args, self.shapes[result],
                                      self.roles)
        return self.made[result]

    def part(self, m: _Mapper, i: Any) -> Any:
        if i in (0, -2):
            return self.node(m, "output")
        if i in (1, -1):
            return _StatePair(self) if self.op == "lstm" else self.node(m, "h_n")
        raise _Unsupported(f"part {i!r} of a recurrent layer's (output, state) result")


class _StatePair(_Parts):
    """An LSTM's (h_n, c_n)."""

    def __init__(self, owner: _RecurrentResult):
        self.owner = owner

    def part(self, m: _Mapper, i: Any) -> Any:
        if i in (0, -2):
            return self.owner.node(m, "h_n")
        if i in (1, -1):
            return self.owner.node(m, "c_n")
        raise _Unsupported(f"part {i!r} of an LSTM's (h_n, c_n) state")


def _m_recurrent(m: _Mapper, n: Any, sub: Any) -> Any:
    name = type(sub).__name__
    op = _OPS[name]
    if getattr(sub, "proj_size", 0):
        raise _Unsupported(f"{name} with proj_size")
    x, hx = n.args[0], m.arg(n, 1, "hx")
    if not m.is_tensor(x) or m.rank(x) != 3:
        raise _Unsupported(f"{name} of an input that is not a batched (3-D) tensor")
    if hx is None:
        want = "(h0, c0)" if op == "lstm" else "h0"
        raise _Unsupported(f"{name} without an initial state (pass {want} explicitly)")
    if op == "lstm":
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise _Unsupported("LSTM state that is not a (h0, c0) pair")
        states = list(hx)
    else:
        states = [hx]
    params: dict[str, Any] = {"layers": int(sub.num_layers), "bidirectional": bool(sub.bidirectional),
                              "batch_first": bool(sub.batch_first), "bias": bool(sub.bias)}
    if op == "rnn":
        params["nonlinearity"] = str(sub.nonlinearity)
    names = recurrent_weight_names(params["layers"], params["bidirectional"], params["bias"])
    roles = _mod_params(m, n, {w: w for w in names})
    if len(roles) != len(names):
        raise _Unsupported(f"{name} whose weights are not all in the state dict")
    d = 2 if params["bidirectional"] else 1
    xs = m.arg_shape(x)
    batch = xs[0] if params["batch_first"] else xs[1]
    h_shape = (params["layers"] * d, batch, int(sub.hidden_size))
    for s in states:
        if m.arg_shape(s) != h_shape:
            raise _Unsupported(f"{name} initial state of shape {m.arg_shape(s)}, not {h_shape}")
    shapes = {"output": (*xs[:2], d * int(sub.hidden_size)), "h_n": h_shape, "c_n": h_shape}
    return _RecurrentResult(op, params, [x, *states], shapes, roles)


# torch's functional forms (what the catalog ops' sources call): op, nonlinearity
_FUNCTIONAL = {"lstm": ("lstm", None), "gru": ("gru", None), "rnn_tanh": ("rnn", "tanh"), "rnn_relu": ("rnn", "relu")}


def functional_value(x: Any, hx: Any, params: Any, has_biases: bool, num_layers: int, dropout: float, train: bool,
                     bidirectional: bool, batch_first: bool) -> Any:
    """What ``torch.lstm`` / ``torch.gru`` / ``torch.rnn_tanh`` / ``torch.rnn_relu`` return (not the
    packed-sequence overloads), as meta tensors: (output, h_n[, c_n])."""
    import torch

    if not isinstance(params, (list, tuple)) or not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise LookupError("a recurrent function of a packed sequence or an unbatched input")
    h = hx[0] if isinstance(hx, (list, tuple)) else hx
    d = 2 if bidirectional else 1
    out = torch.empty((*x.shape[:2], d * h.shape[-1]), dtype=x.dtype, device="meta")
    states = tuple(torch.empty(t.shape, dtype=t.dtype, device="meta") for t in (hx if isinstance(hx, (list, tuple))
                                                                                else [hx]))
    return (out, *states)


class _FlatResult(_RecurrentResult):
    """The flat (output, h_n[, c_n]) tuple of torch's functional forms."""

    def part(self, m: _Mapper, i: Any) -> Any:
        results = ("output", "h_n", "c_n") if self.op == "lstm" else ("output", "h_n")
        if not isinstance(i, int) or not -len(results) <= i < len(results):
            raise _Unsupported(f"part {i!r} of {self.op}'s {len(results)} results")
        return self.node(m, results[i])


def _f_recurrent(m: _Mapper, n: Any) -> Any:
    name = getattr(n.target, "__name__", "")
    op, nonlinearity = _FUNCTIONAL[name]
    names = ("input", "hx", "params", "has_biases", "num_layers", "dropout", "train", "bidirectional", "batch_first")
    a = {k: m.arg(n, i, k) for i, k in enumerate(names)}
    if not isinstance(a["params"], (list, tuple)):
        raise _Unsupported(f"torch.{name} of a packed sequence")
    x, hx = a["input"], a["hx"]
    states = list(hx) if op == "lstm" and isinstance(hx, (list, tuple)) else [hx]
    if len(states) != (2 if op == "lstm" else 1) or not all(m.is_tensor(t) for t in states):
        raise _Unsupported(f"torch.{name} state must be {'(h0, c0)' if op == 'lstm' else 'one tensor'}")
    if not m.is_tensor(x) or m.rank(x) != 3:
        raise _Unsupported(f"torch.{name} of an input that is not a batched (3-D) tensor")
    params: dict[str, Any] = {"layers": a["num_layers"], "bidirectional": a["bidirectional"],
                              "batch_first": a["batch_first"], "bias": a["has_biases"]}
    flags = [v for k, v in params.items() if k != "layers"]
    if not all(isinstance(v, bool) for v in flags) or not isinstance(params["layers"], int):
        raise _Unsupported(f"torch.{name} with flags that are not constants")
    if nonlinearity:
        params["nonlinearity"] = nonlinearity
    roles = recurrent_weight_names(params["layers"], params["bidirectional"], params["bias"])
    if len(a["params"]) != len(roles):
        raise _Unsupported(f"torch.{name} with {len(a['params'])} weights, expected {len(roles)}")
    keys = {}
    for role, w in zip(roles, a["params"]):
        key = m.state_key(w)
        if key is None:
            raise _Unsupported(f"torch.{name} weight {role} is not a parameter of the model")
        keys[role] = key
    xs, hs = m.arg_shape(x), m.arg_shape(states[0])
    d = 2 if params["bidirectional"] else 1
    shapes = {"output": (*xs[:2], d * hs[-1]), "h_n": hs, "c_n": hs}
    return _FlatResult(op, params, [x, *states], shapes, keys)


def _h_stack(m: _Mapper, n: Any) -> Any:
    """``torch.stack(parts, dim)``: each part unsqueezed at dim, then concatenated there (what the
    outputs of an unrolled recurrence are gathered with)."""
    parts = list(m.arg(n, 0, "tensors") or [])
    dim = m.arg(n, 1, "dim", 0)
    if not parts or not all(m.is_tensor(p) for p in parts):
        raise _Unsupported("stack of something other than a list of tensors")
    shapes = {m.arg_shape(p) for p in parts}
    if len(shapes) != 1:
        raise _Unsupported(f"stack of tensors of different shapes {sorted(shapes)}")
    r = len(shapes.pop()) + 1
    if not isinstance(dim, int) or isinstance(dim, bool) or not -r <= dim < r:
        raise _Unsupported(f"stack dim {dim!r} for rank {r}")
    axis = dim % r
    out = _unsqueeze(m, parts[0], axis)
    for p in parts[1:]:
        shape = list(m.arg_shape(out))
        shape[axis] += 1
        out = m.add("concat", {"dim": r - axis}, [out, _unsqueeze(m, p, axis)], tuple(shape))
    return out


def drop_unused_results(gm: Any) -> None:
    """Remove calls that only compute unused values of a recurrent layer's result (``output, h_n =
    self.gru(x, h0)`` returning h_n, or KernelBench's ``out = self.fc(out[:, -1, :])`` left unused
    before ``return state[0]``): each part used is a node that runs the whole layer stack, so an
    unused one would double the work. In-place calls are kept; calls not fed by a layer are
    left as they are."""
    fed: set[Any] = set()
    for n in gm.graph.nodes:
        layer = (n.op == "call_module" and type(gm.get_submodule(n.target)).__name__ in _OPS
                 or n.op == "call_function" and n.target in _TORCH_FUNCTIONS)
        if layer or any(a in fed for a in n.all_input_nodes):
            fed.add(n)
    for n in reversed(list(gm.graph.nodes)):
        if n in fed and not n.users and n.op in ("call_function", "call_method", "call_module") and not _in_place(n):
            gm.graph.erase_node(n)


def _in_place(n: Any) -> bool:
    """A call that may write its arguments (``x.add_(1)``, ``torch.relu_(x)``, ``x[i] = v``)."""
    import operator

    name = n.target if n.op == "call_method" else getattr(n.target, "__name__", "")
    return str(name).endswith("_") or n.target is operator.setitem or n.is_impure()


def _torch_functions() -> frozenset[Any]:
    import torch

    return frozenset(getattr(torch, name) for name in _FUNCTIONAL)


_TORCH_FUNCTIONS = _torch_functions()
for _name in _OPS:
    _MODULES[_name] = _m_recurrent
    MODULE_VALUES[_name] = recurrent_value
for _fn in _TORCH_FUNCTIONS:
    FUNCTION_VALUES[_fn] = functional_value
_FUNCTIONS.update({name: _f_recurrent for name in _FUNCTIONAL})
_FUNCTIONS["stack"] = _h_stack
GRAPH_PASSES.append(drop_unused_results)
