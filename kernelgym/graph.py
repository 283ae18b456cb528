"""The task graph: a DAG of catalog ops over fresh inputs, as produced by the sampler.

`Task.graph` holds one; the compiler policy reads it, and `to_dict` / `from_dict` are its JSON
form (the ``graph`` field of a task's ``<id>.json`` sidecar and of dataset rows).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kernelgym.ops import get_op
from kernelgym.ops.spec import RANGE_NAMES


@dataclass(frozen=True)
class InputSpec:
    """A fresh input tensor: float (with a value range) or int64 indices below `bound`."""

    shape: tuple[int, ...]
    kind: str = "float"   # float | index | scalar (a number argument of forward, shape (); traced tasks)
    range: str = "real"   # real | nonneg | positive (float inputs)
    bound: int | None = None


@dataclass(frozen=True)
class Node:
    """One op application. `args` are refs: ("input", k) or ("node", j)."""

    op: str
    params: dict[str, Any]
    args: tuple[tuple[str, int], ...]
    shape: tuple[int, ...]
    fresh: dict[str, int] = field(default_factory=dict)  # op-specific dims (out_features, ...)


@dataclass(frozen=True)
class Graph:
    """Fresh inputs, op nodes in a topological order, and which nodes forward returns."""

    inputs: tuple[InputSpec, ...]
    nodes: tuple[Node, ...]
    outputs: tuple[int, ...]  # node indices returned by forward, in order

    def arg_shape(self, ref: tuple[str, int]) -> tuple[int, ...]:
        kind, k = ref
        return self.inputs[k].shape if kind == "input" else self.nodes[k].shape

    def in_shapes(self, i: int) -> list[tuple[int, ...]]:
        return [self.arg_shape(r) for r in self.nodes[i].args]

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(n.op for n in self.nodes)

    def edges(self) -> list[tuple[int, int]]:
        """(producer node, consumer node) pairs."""
        return [(k, i) for i, n in enumerate(self.nodes) for kind, k in n.args if kind == "node"]

    def estimate(self, itemsize: int = 4) -> dict[str, int]:
        """FLOPs of all ops; bytes of a fused program (inputs, weights and outputs moved once)."""
        flops = weights = 0
        for i, n in enumerate(self.nodes):
            spec = get_op(n.op)
            p = {**n.params, "_fresh": n.fresh}
            flops += spec.estimate(self.in_shapes(i), n.shape, p)["flops"]
            if spec.weights:
                weights += sum(_numel(w.shape) for w in spec.weights(self.in_shapes(i), n.shape, p))
        moved = sum(_numel(x.shape) for x in self.inputs) + sum(_numel(self.nodes[o].shape) for o in self.outputs)
        return {"flops": int(flops), "bytes": int((moved + weights) * itemsize)}

    def expression(self) -> str:
        """The program as nested calls, e.g. ``cos(var(x0)), conv2d(x1)``: which op reads which, so
        a name never suggests a chain where the DAG has branches. A node read more than once is
        bound first (``v0 = relu(x0); add(sin(v0), cos(v0))``); outputs are separated by commas."""
        uses = [0] * len(self.nodes)
        for producer, _ in self.edges():
            uses[producer] += 1
        for o in self.outputs:
            uses[o] += 1
        bound = {i for i, n in enumerate(uses) if n > 1}

        def ref(arg: tuple[str, int]) -> str:
            kind, k = arg
            if kind == "input":
                return f"x{k}"
            return f"v{k}" if k in bound else call(k)

        def call(i: int) -> str:
            return f"{self.nodes[i].op}({', '.join(ref(a) for a in self.nodes[i].args)})"

        outs = ", ".join(f"v{o}" if o in bound else call(o) for o in self.outputs)
        return "; ".join([*(f"v{i} = {call(i)}" for i in sorted(bound)), outs])

    def to_dict(self) -> dict[str, Any]:
        # Written out rather than dataclasses.asdict: this runs once per sampled task and asdict's
        # recursive deep copy was a tenth of the sampler's time.
        return {
            "inputs": tuple({"shape": tuple(x.shape), "kind": x.kind, "range": x.range, "bound": x.bound}
                            for x in self.inputs),
            "nodes": tuple({"op": n.op, "params": dict(n.params), "args": tuple(tuple(a) for a in n.args),
                            "shape": tuple(n.shape), "fresh": dict(n.fresh)} for n in self.nodes),
            "outputs": tuple(self.outputs),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Graph:
        """The graph of a `to_dict` form (tuples or, after JSON, lists); ValueError when malformed."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a graph's JSON form is an object, got {type(d).__name__}")
        missing = [k for k in ("inputs", "nodes", "outputs") if k not in d]
        if missing:
            raise ValueError(f"graph has no {', '.join(missing)}")
        try:
            inputs = tuple(InputSpec(**{**x, "shape": tuple(x["shape"])}) for x in d["inputs"])
            nodes = tuple(
                Node(op=n["op"], params=dict(n["params"]), args=tuple((str(a), int(b)) for a, b in n["args"]),
                     shape=tuple(n["shape"]), fresh=dict(n.get("fresh", {})))
                for n in d["nodes"]
            )
            outputs = tuple(int(o) for o in d["outputs"])
        except (KeyError, TypeError, ValueError) as exc:
            what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ValueError(f"malformed graph: {what}") from None
        return cls(inputs=inputs, nodes=nodes, outputs=outputs)


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


RANGE_BY_NAME = {v: k for k, v in RANGE_NAMES.items()}
