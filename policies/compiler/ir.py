"""What the compiler knows about a task graph: op kinds, producers and consumers, state (weights),
and which groups of nodes one kernel can compute (fusion partitions).

A *group* is a set of node indices computed by one kernel. It has at most one *anchor* (an op
that needs its own loop structure: a reduction, softmax, norm or scan row, a matmul, a
convolution); every other member is *pointwise*: its value at an output coordinate is an
expression of its arguments at derived coordinates, so the code generator can inline it anywhere.
Members that are ancestors of the anchor form its *prologue* (computed where the anchor reads
its input), members after it its *epilogue* (computed where the anchor writes), and members that
are neither are *side* values (computed where someone reads them). One exception to "one
anchor": a normalising row (softmax, a norm) may end in a *tail*, a reduction over the same rows
of its (epilogue's) value, accumulated while the normalised values are written (`TAIL_REDUCE`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kernelgym.graph import Graph
from kernelgym.ops import get_op

Ref = tuple[str, int]  # ("input", k) | ("node", j) | ("state", k): a graph input, node or state tensor

# Ops computed pointwise (an output element needs a bounded number of input elements).
ELEMENTWISE = frozenset({
    "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "gelu_tanh", "silu", "mish", "sigmoid",
    "logsigmoid", "hardsigmoid", "hardswish", "hardtanh", "softplus", "softsign", "tanh", "exp", "expm1",
    "log", "log1p", "sqrt", "rsqrt", "reciprocal", "abs", "neg", "square", "sin", "cos", "erf",
    "add", "sub", "mul", "div", "maximum", "minimum", "where_gt", "masked_fill",
    "add_scalar", "mul_scalar", "div_scalar", "pow_scalar", "clamp", "tril", "batch_norm",
    "triu", "clone", "masked_fill_cmp",
})
# Pools: a window of the input per output element (max / average; adaptive pools to an output
# size other than 1 average windows of varying length). Global average pools are reductions.
POOLS = frozenset({f"{kind}_pool{n}d" for kind in ("max", "avg") for n in (1, 2, 3)}
                  | {f"adaptive_avg_pool{n}d_windows" for n in (1, 2, 3)})
GLOBAL_POOLS = {"adaptive_avg_pool1d": 1, "adaptive_avg_pool2d": 2, "adaptive_avg_pool3d": 3}  # op -> spatial dims
INDEXING = frozenset({"transpose", "permute", "flatten", "merge_last", "concat", "gather", "embedding"}) | POOLS | frozenset({
    # views and copies: each output element is one input element at derived coordinates
    "unsqueeze", "squeeze", "flip", "narrow", "select", "expand", "repeat", "reshape"})
# Compiler-internal pointwise ops (no catalog entry), made by `composite.expand`: x[..., idx[...]].
INDEXING |= frozenset({"pick_last"})
# Constant padding: an output element is an input element or the fill value.
INDEXING |= frozenset({"pad"})
POINTWISE = ELEMENTWISE | INDEXING
REDUCE = frozenset({"sum", "mean", "amax", "amin", "logsumexp", "var", "std", "norm", *GLOBAL_POOLS,
                    "prod", "argmax", "argmin"})
# Reductions whose result is int64 indices (the output tensor is allocated as int64).
INDEX_OUT = frozenset({"argmax", "argmin"})
# Elementwise ops that keep integer arguments integer (with an int scalar, for the scalar ops).
INDEX_ARITHMETIC = frozenset({"add", "sub", "mul", "neg", "abs", "maximum", "minimum", "add_scalar", "mul_scalar"})
NORMALIZE = frozenset({"softmax", "log_softmax", "layer_norm", "rms_norm", "group_norm", "instance_norm"})
SCAN = frozenset({"cumsum", "cummax", "logcumsumexp", "cumprod"})
ROW = REDUCE | NORMALIZE | SCAN
# Reductions that can close a normalising row's kernel (a *tail*): accumulated chunk by chunk in
# the pass that writes the normalised values, over the same rows, so the normalised tensor is
# never written out and read back (layer_norm -> amax: one kernel, as torch.compile does).
TAIL_REDUCE = frozenset({"sum", "mean", "amax", "amin", "norm"})
# einsum: any contraction of two operands that is a (batched) matmul; sdpa: flash attention (two
# products with an online softmax between them, in one kernel)
MATMUL = frozenset({"linear", "matmul", "bmm", "addmm", "einsum", "sdpa"})
CONV = frozenset({"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"})
# Recurrent layers (`policies.compiler.recurrent`): a loop over the sequence in their own kernels,
# alone in their group (nothing fuses into or after them).
RECURRENT = frozenset({"lstm", "gru", "rnn"})
ANCHORS = ROW | MATMUL | CONV | RECURRENT
# Catalog ops the compiler lowers as a few of the ops above (`policies.compiler.composite`),
# expanded when the program is built, so they never reach a partition.
COMPOSITE = frozenset({"mse_loss", "smooth_l1_loss", "kl_div", "cross_entropy", "triplet_margin_loss",
                       "cosine_similarity"})
SUPPORTED = POINTWISE | ANCHORS | COMPOSITE


class CompileError(ValueError):
    """The compiler cannot produce a kernel for this task (unsupported op, bad input)."""


class PartitionError(CompileError):
    """A fusion partition that does not cover the graph or puts together what one kernel can't do."""


def kind(op: str) -> str:
    """'pointwise', 'row', 'matmul', 'conv', 'recurrent' or 'unknown'."""
    if op in POINTWISE:
        return "pointwise"
    if op in ROW:
        return "row"
    if op in MATMUL:
        return "matmul"
    if op in CONV:
        return "conv"
    if op in RECURRENT:
        return "recurrent"
    return "unknown"


@dataclass(frozen=True)
class StateEntry:
    """One entry of the reference's state dict, which ModelNew must declare with the same name."""

    key: str                       # state-dict key, e.g. "n0_weight" or "fc.weight"
    shape: tuple[int, ...]
    buffer: bool = False
    dtype: str | None = None       # None: the task's float dtype; else a torch dtype name ("int64")


# A dense tensor's memory layout other than row-major (""): torch.channels_last /
# channels_last_3d, dim 1 innermost (`coords.layout_order`).
CHANNELS_LAST = "channels_last"
# bytes an element of a program dtype takes (`Program.dtype`)
ELEMENT_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass
class Program:
    """A graph plus everything code generation needs beyond it.

    `weights[i][role]` is the state-dict key of the tensor that node i reads in that role
    (``weight``, ``bias``, ``running_mean``, ...); `state` lists every state-dict entry in
    declaration order; `init_params` is the text of the reference constructor's parameter list
    (after ``self``), which ModelNew repeats.
    """

    graph: Graph
    dtype: str = "float32"
    weights: dict[int, dict[str, str]] = field(default_factory=dict)
    state: list[StateEntry] = field(default_factory=list)
    init_params: str = ""
    name: str = ""
    # extern convolutions run without their bias: every Triton kernel that reads one adds it
    # (`extern.late_bias`)
    late_bias: frozenset[int] = frozenset()
    # nodes whose tensor is channels-last (`layout.channels_last`): an extern convolution run so
    # and the pointwise kernels after it; every load and store of them follows that layout
    channels_last: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        g = self.graph
        self.consumers: list[list[int]] = [[] for _ in g.nodes]
        for i, n in enumerate(g.nodes):
            for kind_, k in n.args:
                if kind_ == "node":
                    if not 0 <= k < i:
                        raise CompileError(f"node {i} reads node {k}: nodes must be in topological order")
                    if i not in self.consumers[k]:
                        self.consumers[k].append(i)
        self.outputs = set(g.outputs)
        self.state_by_key = {s.key: s for s in self.state}

    @property
    def n(self) -> int:
        return len(self.graph.nodes)

    def layout(self, ref: Ref) -> str:
        """The memory layout of the tensor behind `ref`: "" (row-major) or `CHANNELS_LAST`."""
        return CHANNELS_LAST if ref[0] == "node" and ref[1] in self.channels_last else ""

    def shape(self, ref: Ref) -> tuple[int, ...]:
        kind_, k = ref
        if kind_ == "input":
            return tuple(self.graph.inputs[k].shape)
        if kind_ == "node":
            return tuple(self.graph.nodes[k].shape)
        return tuple(self.state[k].shape)

    def producers(self, i: int) -> list[int]:
        return [k for kind_, k in self.graph.nodes[i].args if kind_ == "node"]

    def is_scalar(self, ref: Ref) -> bool:
        """A number argument of forward (input kind ``scalar``, shape ()): kernels take it by value."""
        return ref[0] == "input" and self.graph.inputs[ref[1]].kind == "scalar"

    def is_index(self, ref: Ref) -> bool:
        """Whether `ref` holds integer indices: an int input or state tensor, an argmax / argmin,
        or integer arithmetic on such values only (torch keeps int64 there: ``argmax + argmin``)."""
        if ref[0] == "node":
            node = self.graph.nodes[ref[1]]
            if node.op in INDEX_OUT:
                return True
            if node.op not in INDEX_ARITHMETIC or not node.args:
                return False
            c = node.params.get("c", 0)
            return (isinstance(c, int) and not isinstance(c, bool)) and all(self.is_index(a) for a in node.args)
        if ref[0] == "input":
            return self.graph.inputs[ref[1]].kind == "index"
        if ref[0] == "state":
            return (self.state[ref[1]].dtype or "float").startswith("int")
        return False


def program_from_graph(graph: Graph, dtype: str = "float32", name: str = "") -> Program:
    """A Program for a sampler graph: weights named ``n{i}_{name}`` as `kernelgym.sampler.emit` does."""
    weights: dict[int, dict[str, str]] = {}
    state: list[StateEntry] = []
    for i, node in enumerate(graph.nodes):
        try:
            spec = get_op(node.op)
        except KeyError as exc:
            raise CompileError(f"node {i}: {exc.args[0]}") from None
        if not spec.weights:
            continue
        in_shapes = graph.in_shapes(i)
        p = {**node.params, "_in": in_shapes, "_out": node.shape, "_fresh": node.fresh}
        weights[i] = {}
        for w in spec.weights(in_shapes, node.shape, p):
            key = f"n{i}_{w.name}"
            weights[i][w.name] = key
            state.append(StateEntry(key, tuple(w.shape), buffer=w.buffer))
    return Program(graph, dtype, weights, state, "", name)


# ---- partitions ------------------------------------------------------------------------------------


def _graph_of(graph: Graph | Program) -> Graph:
    if isinstance(graph, Program):
        return graph.graph
    if isinstance(graph, Graph):
        return graph
    raise TypeError(f"expected a Graph (e.g. Task.graph) or a Program, got {type(graph).__name__}")


class Analysis:
    """Reachability and consumers of a graph, shared by the partition functions. Ops in
    `torch_ops` are computed in torch (lenient fallback) and so each stays alone in its group;
    so does each node in `extern` (node indices: extern anchors, a vendor call in lenient mode)."""

    def __init__(self, graph: Graph, torch_ops: Iterable[str] = frozenset(), extern: Iterable[int] = frozenset()):
        self.graph = graph
        self.torch_ops = frozenset(torch_ops)
        self.extern = frozenset(extern)
        n = len(graph.nodes)
        self.n = n
        self.consumers: list[set[int]] = [set() for _ in range(n)]
        self.producers: list[set[int]] = [set() for _ in range(n)]
        for i, node in enumerate(graph.nodes):
            for kind_, k in node.args:
                if kind_ == "node":
                    self.consumers[k].add(i)
                    self.producers[i].add(k)
        self.desc: list[set[int]] = [set() for _ in range(n)]  # strict descendants
        for i in reversed(range(n)):
            for c in self.consumers[i]:
                self.desc[i] |= {c} | self.desc[c]
        self.outputs = set(graph.outputs)

    def kind(self, i: int) -> str:
        op = self.graph.nodes[i].op
        return "torch" if op in self.torch_ops or i in self.extern else kind(op)

    def stored(self, group: set[int]) -> set[int]:
        """Members a kernel must write: graph outputs and values read by other kernels."""
        return {i for i in group if i in self.outputs or self.consumers[i] - group}


def reduced_axes(graph: Graph, i: int) -> tuple[int, ...] | None:
    """The input axes a row op reduces (softmax and norms: the axes each statistic spans), or
    None when they are not plain axes (group_norm's channel groups) or the op is no row op."""
    node = graph.nodes[i]
    op, p = node.op, node.params
    if not node.args:
        return None
    rank = len(graph.arg_shape(node.args[0]))
    if op in ("layer_norm", "rms_norm"):
        return tuple(range(rank - int(p.get("ndims", 1)), rank))
    if op == "instance_norm":
        return tuple(range(2, rank))
    if op in GLOBAL_POOLS:
        return tuple(range(rank - GLOBAL_POOLS[op], rank))
    if op not in ROW or op == "group_norm":
        return None
    if "axes" in p or "dim" in p:
        return tuple(reduce_axes(p, rank))
    return None


def reduce_axes(p: Mapping[str, Any], rank: int) -> list[int]:
    """The input axes (from the left) a reduction or scan node's parameters name: traced
    ``axes``, or the catalog's ``dim`` counted from the right: one int, a tuple, or "all"."""
    if "axes" in p:
        return sorted({int(a) for a in p["axes"]})
    d = p["dim"]
    if d == "all":
        return list(range(rank))
    ds = d if isinstance(d, (tuple, list)) else (d,)
    for k in ds:
        if not 1 <= int(k) <= rank:
            raise CompileError(f"dim {k} (from the right) out of range for rank {rank}")
    return sorted({rank - int(k) for k in ds})


def _tail_problem(an: Analysis, group: set[int], a: int, t: int) -> str | None:
    """Why reduction `t` cannot be the tail of normalising row `a`'s kernel (None when it can)."""
    g = an.graph
    if g.nodes[a].op not in NORMALIZE or g.nodes[t].op not in TAIL_REDUCE or t not in an.desc[a]:
        return f"nodes {a} and {t} both need their own loop structure"
    axes = reduced_axes(g, a)
    if axes is None or reduced_axes(g, t) != axes:
        return f"node {t} ({g.nodes[t].op}) does not reduce the rows node {a} ({g.nodes[a].op}) normalises"
    if tuple(g.arg_shape(g.nodes[t].args[0])) != tuple(g.nodes[a].shape):
        return f"node {t} reduces a value of another shape than node {a}'s"
    after = sorted(an.desc[t] & group)
    if after:
        return f"node {after[0]} comes after the tail reduction {t}"
    return None


def group_problem(an: Analysis, group: set[int]) -> str | None:
    """Why one kernel cannot compute `group` (None when it can); ignores the other groups."""
    g = an.graph
    if not group:
        return "empty group"
    bad = [i for i in group if not 0 <= i < an.n]
    if bad:
        return f"node index {bad[0]} out of range"
    unknown = sorted(i for i in group if an.kind(i) == "unknown")
    if unknown:
        return f"node {unknown[0]} ({g.nodes[unknown[0]].op}) has no Triton lowering"
    in_torch = sorted(i for i in group if an.kind(i) == "torch")
    if in_torch and len(group) > 1:
        return f"node {in_torch[0]} ({g.nodes[in_torch[0]].op}) runs in torch and cannot share a kernel"
    if in_torch:
        return None
    recurrent = sorted(i for i in group if an.kind(i) == "recurrent")
    if recurrent and len(group) > 1:
        return f"node {recurrent[0]} ({g.nodes[recurrent[0]].op}) is a recurrent layer and cannot share a kernel"
    anchors = sorted(i for i in group if an.kind(i) != "pointwise")
    tail: set[int] = set()
    if len(anchors) > 2:
        return f"nodes {anchors[0]} and {anchors[1]} both need their own loop structure"
    if len(anchors) == 2:
        problem = _tail_problem(an, group, *anchors)
        if problem:
            return problem
        tail = {anchors.pop()}
    # convexity: a path that leaves the group and comes back would need the group's output first
    for i in group:
        for c in an.consumers[i] - group:
            if an.desc[c] & group:
                return f"path {i} -> {c} -> ... re-enters the group through node {c}"
    stored = an.stored(group)
    if not anchors:
        shapes = {tuple(g.nodes[i].shape) for i in stored}
        if len(shapes) > 1:
            return f"stored values have different shapes {sorted(shapes)}"
        return None
    a = anchors[0]
    out_shape = tuple(g.nodes[a].shape)
    prologue = {i for i in group if a in an.desc[i]}
    epilogue = {i for i in group if i in an.desc[a]}
    for i in sorted(stored - {a} - tail):
        if i in prologue:
            return f"node {i} feeds the anchor {a} and is needed outside the kernel"
        if tuple(g.nodes[i].shape) != out_shape:
            return f"stored node {i} has shape {tuple(g.nodes[i].shape)}, not the anchor's {out_shape}"
    for i in sorted(epilogue - tail):
        node = g.nodes[i]
        if node.op not in ELEMENTWISE:
            return f"node {i} ({node.op}) after the anchor is not elementwise"
        if tuple(node.shape) != out_shape:
            return f"node {i} after the anchor has shape {tuple(node.shape)}, not {out_shape}"
        for kind_, k in node.args:
            if kind_ == "node" and (k == a or k in epilogue) and tuple(g.nodes[k].shape) != out_shape:
                return f"node {i} broadcasts the anchor's value"
    return None


def partition_problem(graph: Graph | Program, partition: Sequence[Iterable[int]],
                      torch_ops: Iterable[str] = frozenset(), extern: Iterable[int] = frozenset()) -> str | None:
    """Why `partition` is not a valid fusion partition of `graph` (None when it is)."""
    an = Analysis(_graph_of(graph), torch_ops, extern)
    return _partition_problem(an, [set(p) for p in partition])


def _partition_problem(an: Analysis, groups: list[set[int]]) -> str | None:
    seen: dict[int, int] = {}
    for gi, grp in enumerate(groups):
        for i in grp:
            if not isinstance(i, int) or isinstance(i, bool):
                return f"group {gi}: node indices must be ints, got {i!r}"
            if i in seen:
                return f"node {i} is in groups {seen[i]} and {gi}"
            seen[i] = gi
    missing = sorted(set(range(an.n)) - set(seen))
    if missing:
        return f"nodes {missing} are in no group"
    for gi, grp in enumerate(groups):
        problem = group_problem(an, grp)
        if problem:
            return f"group {gi} {sorted(grp)}: {problem}"
    if _group_order(an, groups) is None:
        return "the groups depend on each other in a cycle"
    return None


def _group_order(an: Analysis, groups: list[set[int]]) -> list[int] | None:
    """Groups in an order where every group runs after those it reads from (None on a cycle)."""
    where = {i: gi for gi, grp in enumerate(groups) for i in grp}
    deps = [{where[p] for i in grp for p in an.producers[i]} - {gi} for gi, grp in enumerate(groups)]
    order: list[int] = []
    done: set[int] = set()
    while len(order) < len(groups):
        ready = [gi for gi in range(len(groups)) if gi not in done and deps[gi] <= done]
        if not ready:
            return None
        # ties by smallest node index keep the order close to the reference's
        gi = min(ready, key=lambda x: min(groups[x]))
        order.append(gi)
        done.add(gi)
    return order


def order_groups(graph: Graph | Program, partition: Sequence[Iterable[int]],
                 torch_ops: Iterable[str] = frozenset(), extern: Iterable[int] = frozenset()) -> list[list[int]]:
    """Validated partition, groups sorted in launch order and each group's nodes sorted."""
    if isinstance(partition, (str, bytes)) or not isinstance(partition, Iterable):
        raise PartitionError(f"a partition is a list of groups of node indices, got {partition!r}")
    an = Analysis(_graph_of(graph), torch_ops, extern)
    groups = [set(p) for p in partition]
    problem = _partition_problem(an, groups)
    if problem:
        raise PartitionError(f"invalid partition {[sorted(g) for g in groups]}: {problem}")
    order = _group_order(an, groups)
    assert order is not None
    return [sorted(groups[gi]) for gi in order]


def _greedy(an: Analysis, *, prologue: bool = True, epilogue: bool = True, merge: bool = True,
            cut: frozenset[tuple[int, int]] = frozenset()) -> list[set[int]]:
    """Fusion by walking nodes from the last: a node joins the group of its consumers when they
    are all in one group and the result stays valid; then groups that share a producer merge.
    `prologue` / `epilogue` allow fusing into an anchor's input / output; `cut` lists
    (producer, consumer) edges that must stay between kernels."""
    where: dict[int, int] = {}
    groups: list[set[int]] = []
    for i in reversed(range(an.n)):
        cons = an.consumers[i]
        target = {where[c] for c in cons}
        joined = False
        if len(target) == 1 and not any((i, c) in cut for c in cons):
            gi = target.pop()
            grp = groups[gi]
            anchors = [j for j in grp if an.kind(j) != "pointwise"]
            is_anchor = an.kind(i) != "pointwise"
            allowed = True
            if is_anchor and not epilogue:
                allowed = False
            if not is_anchor and anchors and not prologue and anchors[0] in an.desc[i]:
                allowed = False
            if allowed and group_problem(an, grp | {i}) is None:
                grp.add(i)
                where[i] = gi
                joined = True
        if not joined:
            where[i] = len(groups)
            groups.append({i})
    if merge:
        changed = True
        while changed:
            changed = False
            for i in range(an.n):
                gs = sorted({where[c] for c in an.consumers[i]} | {where[i]})
                if len(gs) < 2 or any((i, c) in cut for c in an.consumers[i]):
                    continue
                union = set().union(*(groups[g] for g in gs))
                if not prologue and any(an.kind(j) != "pointwise" for j in union):
                    continue
                trial = [grp for g, grp in enumerate(groups) if g not in gs] + [union]
                if _partition_problem(an, trial) is None:
                    groups = trial
                    where = {j: gi for gi, grp in enumerate(groups) for j in grp}
                    changed = True
                    break
    return [grp for grp in groups if grp]


def _normalise(groups: Iterable[Iterable[int]]) -> list[list[int]]:
    return sorted((sorted(g) for g in groups), key=lambda g: g[0])


def default_partition(graph: Graph | Program,
                      torch_ops: Iterable[str] = frozenset(), extern: Iterable[int] = frozenset()) -> list[list[int]]:
    """The compiler's default fusion: pointwise chains into their producer or consumer kernel,
    prologues and epilogues into reductions, norms, matmuls and convolutions. Nodes in `extern`
    (vendor calls) stay alone, so what follows one fuses into the kernel(s) after it."""
    an = Analysis(_graph_of(graph), torch_ops, extern)
    return _normalise(_greedy(an))


def candidate_partitions(graph: Graph | Program, limit: int = 8,
                         torch_ops: Iterable[str] = frozenset(),
                         extern: Iterable[int] = frozenset()) -> list[list[list[int]]]:
    """Up to `limit` distinct valid partitions, the default first: less fusion (no epilogue, no
    prologue, no sibling merging, one kernel per op) and the default with one fused edge cut."""
    if limit < 1:
        return []
    an = Analysis(_graph_of(graph), torch_ops, extern)
    out: list[list[list[int]]] = []

    def add(groups: Iterable[Iterable[int]]) -> None:
        p = _normalise(groups)
        if p not in out and _partition_problem(an, [set(g) for g in p]) is None:
            out.append(p)

    default = _greedy(an)
    add(default)
    add(_greedy(an, epilogue=False))
    add(_greedy(an, prologue=False))
    add(_greedy(an, merge=False))
    add([{i} for i in range(an.n)])
    where = {i: gi for gi, grp in enumerate(default) for i in grp}
    for c in range(an.n):
        for p in sorted(an.producers[c]):
            if where[p] == where[c]:
                add(_greedy(an, cut=frozenset({(p, c)})))
    return out[:limit]


def numel(shape: Sequence[int]) -> int:
    return math.prod(shape) if shape else 1
