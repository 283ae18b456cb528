"""Catalog ops the compiler lowers as a few other ops: the losses and cosine similarity. `expand` replaces each by the
ops it is made of (elementwise ops, reductions, `pick_last`) when the program is built, so the
partitioner fuses them like any other ops: ``F.mse_loss(a, b)`` becomes sub -> square -> mean over
every dim, one kernel; ``F.cross_entropy(x, t)`` a logsumexp row whose epilogue subtracts the
target logit, then a mean.

The formulas are PyTorch's (the loss functions' documented definitions):
- mse_loss: (a - b)^2; smooth_l1_loss (beta): 0.5 d^2 / beta where |d| < beta, else |d| - beta / 2,
  written as 0.5 m^2 / beta + (|d| - m) with m = min(|d|, beta) (no select); beta 0 is |d|;
- kl_div (input = log q): t * (log t - input) (target > 0; torch's xlogy gives 0 where t = 0);
  "batchmean" divides the sum by the batch size (dim 0);
- cross_entropy (int targets, no weights, no ignored index): logsumexp(x_n) - x_n[t_n];
- triplet_margin_loss (p = 2, eps = 1e-6, no swap): relu(|a - p + eps| - |a - n + eps| + margin),
  the norms over the last dim;
- cosine_similarity (eps = 1e-8): sum(a / max(|a|, eps) * b / max(|b|, eps)) along the dim.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from kernelgym.graph import Node
from policies.compiler.ir import COMPOSITE, CompileError, Program, Ref


class _Builder:
    """Appends nodes to the expanded graph."""

    def __init__(self, prog: Program, nodes: list[Node]):
        self.prog = prog
        self.nodes = nodes

    def shape(self, ref: Ref) -> tuple[int, ...]:
        kind, k = ref
        if kind == "node":
            return tuple(self.nodes[k].shape)
        if kind == "input":
            return tuple(self.prog.graph.inputs[k].shape)
        return tuple(self.prog.state[k].shape)

    def add(self, op: str, args: list[Ref], shape: tuple[int, ...] | None = None, **params: Any) -> Ref:
        if shape is None:  # elementwise: the broadcast of the arguments
            shape = _broadcast([self.shape(a) for a in args])
        self.nodes.append(Node(op=op, params=params, args=tuple(args), shape=tuple(shape)))
        return ("node", len(self.nodes) - 1)

    def reduce(self, x: Ref, reduction: str, batch_divisor: int | None = None) -> Ref:
        """`reduction` ("mean", "sum", "batchmean" or "none") of the per-element losses `x`."""
        if reduction == "none":
            return x
        if reduction not in ("mean", "sum", "batchmean"):
            raise CompileError(f"loss reduction {reduction!r}")
        op = "mean" if reduction == "mean" else "sum"
        out = self.add(op, [x], (), dim="all", keepdim=False)
        if reduction == "batchmean":
            out = self.add("div_scalar", [out], (), c=float(batch_divisor or 1))
        return out


def _broadcast(shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    rank = max(len(s) for s in shapes)
    out = []
    for k in range(rank):
        dims = {s[len(s) - rank + k] for s in shapes if len(s) - rank + k >= 0} - {1}
        if len(dims) > 1:
            raise CompileError(f"shapes {shapes} do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def _mse(b: _Builder, args: list[Ref], p: dict[str, Any]) -> Ref:
    d = b.add("sub", args)
    return b.reduce(b.add("square", [d]), p.get("reduction", "mean"))


def _smooth_l1(b: _Builder, args: list[Ref], p: dict[str, Any]) -> Ref:
    beta = float(p.get("beta", 1.0))
    ad = b.add("abs", [b.add("sub", args)])
    if beta == 0:
        return b.reduce(ad, p.get("reduction", "mean"))
    m = b.add("clamp", [ad], lo=None, hi=beta)
    quad = b.add("mul_scalar", [b.add("square", [m])], c=0.5 / beta)
    return b.reduce(b.add("add", [quad, b.add("sub", [ad, m])]), p.get("reduction", "mean"))


def _kl_div(b: _Builder, args: list[Ref], p: dict[str, Any]) -> Ref:
    x, t = args
    if p.get("log_target"):
        e = b.add("mul", [b.add("exp", [t]), b.add("sub", [t, x])])
    else:
        e = b.add("mul", [t, b.add("sub", [b.add("log", [t]), x])])
    shape = b.shape(e)
    return b.reduce(e, p.get("reduction", "mean"), shape[0] if shape else 1)


def _cross_entropy(b: _Builder, args: list[Ref], p: dict[str, Any]) -> Ref:
    x, t = args
    sx = b.shape(x)
    if len(sx) != 2 or b.shape(t) != sx[:1]:
        raise CompileError(f"cross_entropy of logits {sx} and targets {b.shape(t)} (supported: (N, C) and (N,))")
    lse = b.add("logsumexp", [x], sx[:1], dim=1, keepdim=False)
    picked = b.add("pick_last", [x, t], sx[:1])
    return b.reduce(b.add("sub", [lse, picked]), p.get("reduction", "mean"))


def _triplet(b: _Builder, args: list[Ref], p: dict[str, Any]) -> Ref:
    a, pos, neg = args
    eps = float(p.get("eps", 1e-6))

    def dist(y: Ref) -> Ref:
        e = b.add("add_scalar", [b.add("sub", [a, y])], c=eps)
        return b.add("norm", [e], b.shape(e)[:-1], dim=1, keepdim=False)

    u = b.add("add_scalar", [b.add("sub", [dist(pos), dist(neg)])], c=float(p.get("margin", 1.0)))
    return b.reduce(b.add("relu", [u]), p.get("reduction", "mean"))


def _cosine(b: _Builder, args: list[Ref], p: dict[str, Any]) -> Ref:
    x, y = args
    sx = b.shape(x)
    d = int(p["dim"])
    axis = len(sx) - d
    eps = float(p.get("eps", 1e-8))
    kept = tuple(1 if k == axis else s for k, s in enumerate(sx))

    def unit(t: Ref) -> Ref:  # t / max(|t|, eps) along the dim
        n = b.add("clamp", [b.add("norm", [t], kept, dim=d, keepdim=True)], lo=eps, hi=None)
        return b.add("div", [t, n])

    return b.add("sum", [b.add("mul", [unit(x), unit(y)])], sx[:axis] + sx[axis + 1:], dim=d, keepdim=False)


EXPANSIONS: dict[str, Callable[[_Builder, list[Ref], dict[str, Any]], Ref]] = {
    "mse_loss": _mse,
    "smooth_l1_loss": _smooth_l1,
    "kl_div": _kl_div,
    "cross_entropy": _cross_entropy,
    "triplet_margin_loss": _triplet,
    "cosine_similarity": _cosine,
}
assert set(EXPANSIONS) == COMPOSITE


def expand(prog: Program) -> Program:
    """`prog` with every composite node replaced by the nodes it is made of (the same program
    when it has none). Weights and outputs follow their nodes' new indices."""
    g = prog.graph
    if not any(n.op in COMPOSITE for n in g.nodes):
        return prog
    nodes: list[Node] = []
    b = _Builder(prog, nodes)
    where: dict[int, Ref] = {}
    weights: dict[int, dict[str, str]] = {}

    def remap(ref: Any) -> Ref:
        return where[ref[1]] if ref[0] == "node" else (ref[0], ref[1])

    for i, node in enumerate(g.nodes):
        args = [remap(a) for a in node.args]
        if node.op in COMPOSITE:
            out = EXPANSIONS[node.op](b, args, dict(node.params))
            if b.shape(out) != tuple(node.shape):
                raise CompileError(f"node {i} ({node.op}): expanded to shape {b.shape(out)}, not {tuple(node.shape)}")
            where[i] = out
            continue
        nodes.append(dataclasses.replace(node, args=tuple(args)))
        where[i] = ("node", len(nodes) - 1)
        if i in prog.weights:
            weights[len(nodes) - 1] = prog.weights[i]
    outputs = []
    for o in g.outputs:
        ref = where[o]
        if ref[0] != "node":
            raise CompileError(f"output node {o} ({g.nodes[o].op}) expands to no computation")
        outputs.append(ref[1])
    graph = dataclasses.replace(g, nodes=tuple(nodes), outputs=tuple(outputs))
    return dataclasses.replace(prog, graph=graph, weights=weights)
