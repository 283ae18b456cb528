"""Extern anchors (lenient mode): a convolution or product left to the vendor library.

In lenient mode an anchor node (a convolution, transposed convolution or product) may run as the
vendor call on the reference's weights (``F.conv2d``, ``F.linear``, ``torch.matmul`` ...: cuDNN
and cuBLAS) while every op around it is fused into Triton: the partition keeps such a node alone
in its group, so the greedy fusion puts the ops before it into one prologue kernel and the ops
after it (elementwise chain, then a row reduction or norm) into one epilogue kernel, as
torch.compile's Inductor does. The evaluator's lenient rule still holds as long as some compute
op of the reference stays in Triton (`extern_problem` checks that).

Which anchors go extern is a set of node indices: `default_extern` (every convolution; products
stay in Triton, whose templates beat cuBLAS on KernelBench's GEMM problems) and `extern_choices`
(the alternatives a search tries: none, all, each anchor flipped).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kernelgym.ops.catalog import conv_groups
from policies.compiler.codegen import ref_expr, state_expr
from policies.compiler.ir import CompileError, Program, kind
from policies.compiler.layout import FORMATS as CL_FORMATS

CONV_FNS = {op: f"F.{op}" for op in ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                                     "conv_transpose3d")}
# the node params a vendor convolution call takes (keyword names of F.conv* / F.conv_transpose*);
# "kernel" is the weight's shape, implied by the weight
_CONV_KEYS = {"kernel", "stride", "padding", "dilation", "groups", "bias"}
_CONVT_KEYS = _CONV_KEYS | {"output_padding"}
MATMUL_FNS = {"linear": "F.linear", "matmul": "torch.matmul", "bmm": "torch.bmm", "addmm": "torch.addmm"}
# ops that only move or relabel data: a graph whose Triton part is only these would leave every
# compute op of the reference in torch (the evaluator's reference_ops_in_torch)
_VIEW_OPS = frozenset({"transpose", "permute", "flatten", "merge_last", "reshape"})


def conv_keywords(prog: Program, j: int) -> dict[str, Any] | None:
    """The keyword arguments of convolution node `j`'s ``F.conv*`` call (stride, padding,
    dilation, groups, output_padding; lists as tuples), or None when its params include one the
    call cannot take."""
    node = prog.graph.nodes[j]
    # keys with a leading underscore are the tracer's notes (the state keys), not call params
    params: dict[str, Any] = {k: v for k, v in node.params.items() if not k.startswith("_")}
    if set(params) - (_CONVT_KEYS if node.op.startswith("conv_transpose") else _CONV_KEYS):
        return None
    if "groups" in params:  # "depthwise": one group per input channel
        params["groups"] = conv_groups(params, prog.shape(node.args[0])[1])
    # "kernel" is the weight's shape and "bias" whether it has one: neither is a keyword
    return {k: tuple(v) if isinstance(v, list) else v for k, v in params.items() if k not in ("kernel", "bias")}


def vendor_call(prog: Program, j: int) -> str | None:
    """The vendor call computing node `j` from its arguments (``x{k}`` inputs, ``v{k}`` nodes)
    and the reference's weights, or None when `j` has none (not a convolution or product, or
    params the call cannot take)."""
    node = prog.graph.nodes[j]
    args = [ref_expr(prog, r) for r in node.args]
    w = {role: state_expr(prog, key) for role, key in prog.weights.get(j, {}).items()}
    # keys with a leading underscore are the tracer's notes (the state keys), not call params
    params: dict[str, Any] = {k: v for k, v in node.params.items() if not k.startswith("_")}
    if node.op in CONV_FNS:
        keywords = conv_keywords(prog, j)
        if keywords is None or "weight" not in w or len(args) != 1:
            return None
        kw = "".join(f", {k}={_py(keywords[k])}" for k in sorted(keywords))
        bias = "None" if j in prog.late_bias else w.get("bias", "None")
        x, weight = args[0], w["weight"]
        if j in prog.channels_last:   # cuDNN's NHWC kernels (`layout`): operands and result so
            fmt = CL_FORMATS[len(node.shape)]
            x, weight = f"{x}.contiguous(memory_format={fmt})", f"{weight}.contiguous(memory_format={fmt})"
            return f"{CONV_FNS[node.op]}({x}, {weight}, {bias}{kw}).contiguous(memory_format={fmt})"
        return f"{CONV_FNS[node.op]}({x}, {weight}, {bias}{kw})"
    if node.op in MATMUL_FNS and not params:
        if node.op == "linear":
            if "weight" not in w or len(args) != 1:
                return None
            return f"F.linear({args[0]}, {w['weight']}, {w.get('bias', 'None')})"
        if w:   # products of two graph values carry no weights
            return None
        return f"{MATMUL_FNS[node.op]}({', '.join(args)})"
    return None



def absorbed_views(prog: Program, extern: Iterable[int]) -> frozenset[int]:
    """Transposes that only feed extern products (``x @ self.weight.T``): forward takes them as
    torch views, which cuBLAS reads transposed, instead of a Triton kernel copying them."""
    ext = set(extern)
    out: set[int] = set()
    for j in ext:
        if kind(prog.graph.nodes[j].op) != "matmul":
            continue
        for p in prog.producers(j):
            if (prog.graph.nodes[p].op == "transpose" and p not in prog.outputs
                    and all(c in ext for c in prog.consumers[p])):
                out.add(p)
    return frozenset(out)


def _py(v: Any) -> str:
    return repr(tuple(v)) if isinstance(v, list) else repr(v)


def extern_anchors(prog: Program) -> list[int]:
    """Nodes that can run as a vendor call: convolutions and products with a `vendor_call`."""
    return [j for j, n in enumerate(prog.graph.nodes)
            if kind(n.op) in ("conv", "matmul") and vendor_call(prog, j) is not None]


def extern_problem(prog: Program, extern: Iterable[int]) -> str | None:
    """Why `extern` (node indices) cannot be the extern anchors of `prog` (None when it can)."""
    ext = set(extern)
    bad = [j for j in ext if not isinstance(j, int) or isinstance(j, bool) or not 0 <= j < prog.n]
    if bad:
        return f"extern anchor {bad[0]!r} is not a node index of the {prog.n}-node graph"
    anchors = set(extern_anchors(prog)) | absorbed_views(prog, ext)
    for j in sorted(ext - anchors):
        return f"node {j} ({prog.graph.nodes[j].op}) has no vendor call to run as an extern anchor"
    left = [j for j in range(prog.n) if j not in ext and prog.graph.nodes[j].op not in _VIEW_OPS]
    if ext and not left:
        return "with every compute op a vendor call, no Triton kernel would compute anything"
    return None


def check_extern(prog: Program, extern: Iterable[int]) -> frozenset[int]:
    """`extern` as a frozenset with the transposes its products read (`absorbed_views`), or
    `CompileError` naming what is wrong with it."""
    if isinstance(extern, (str, bytes)) or not isinstance(extern, Iterable):
        raise CompileError(f"extern anchors are node indices, got {extern!r}")
    ext = list(extern)
    problem = extern_problem(prog, ext)
    if problem:
        raise CompileError(problem)
    return frozenset(ext) | absorbed_views(prog, ext)


def default_extern(prog: Program) -> frozenset[int]:
    """Lenient mode's default: every convolution and transposed convolution as the vendor call
    (cuDNN's algorithms beat the Triton conv templates at KernelBench sizes), products in Triton;
    nothing when that would leave no compute op to Triton (a lone convolution)."""
    convs = frozenset(j for j in extern_anchors(prog) if kind(prog.graph.nodes[j].op) == "conv")
    return convs | absorbed_views(prog, convs) if extern_problem(prog, convs) is None else frozenset()


def extern_choices(prog: Program, limit: int = 6) -> list[frozenset[int]]:
    """Up to `limit` distinct valid extern sets, `default_extern` first: then none (all Triton),
    every anchor, and the default with one anchor flipped."""
    anchors = extern_anchors(prog)
    default = default_extern(prog)
    cands = [default, frozenset(), frozenset(anchors)] + [default ^ {j} for j in anchors]
    out: list[frozenset[int]] = []
    for c in cands:
        c = c | absorbed_views(prog, c)
        if c not in out and extern_problem(prog, c) is None:
            out.append(c)
    return out[:max(limit, 1)]


def late_bias(prog: Program, extern: Iterable[int]) -> frozenset[int]:
    """The extern convolutions of `extern` whose bias the Triton kernels reading them add: those
    with a bias, not an output of the graph, read only by Triton kernels that read through
    `KernelWriter.value` (not a vendor call, not the recurrent template). torch adds a
    convolution's bias in a kernel of its own after cuDNN's, a whole pass over the output (on
    KernelBench level 2's ConvTranspose2d + Subtract + Tanh, a 2.1 GiB output: about 1.4 ms of
    the candidate's 7.4 ms, against torch.compile's 3.5 ms); added where the output is read
    anyway, it costs a load of C floats."""
    ext = frozenset(extern)
    out = set()
    for j in ext:
        node = prog.graph.nodes[j]
        if node.op not in CONV_FNS or "bias" not in prog.weights.get(j, {}) or j in prog.outputs:
            continue
        readers = prog.consumers[j]
        if readers and all(c not in ext and kind(prog.graph.nodes[c].op) != "recurrent" for c in readers):
            out.add(j)
    return frozenset(out)


def extern_line(prog: Program, j: int) -> str:
    """The forward line computing extern anchor `j` (or the view an extern product reads,
    `absorbed_views`)."""
    node = prog.graph.nodes[j]
    if node.op == "transpose":
        d0, d1 = node.params.get("dims", (-2, -1))
        return f"v{j} = {ref_expr(prog, node.args[0])}.transpose({d0}, {d1})  # transpose: a view the vendor call reads"
    call = vendor_call(prog, j)
    if call is None:
        raise CompileError(f"node {j} ({prog.graph.nodes[j].op}) has no vendor call")
    late = "; its bias is added by the kernels reading it" if j in prog.late_bias else ""
    late += "; channels-last" if j in prog.channels_last else ""
    return f"v{j} = {call}  # {prog.graph.nodes[j].op}: extern anchor (vendor call){late}"
