"""Channels-last extern convolutions (lenient mode).

cuDNN's tensor-core convolutions work in NHWC: on NCHW operands it transforms them itself, and on
an H100 KernelBench level 2's 63 convolutions ran 1.48x faster (geomean, 62 of 63) on
channels-last operands, converting the input included (`benchmarks/conv_layout.py`,
benchmarks/NOTES.md, session 17); torch.compile's Inductor converts its convolutions so. An extern
convolution is run channels-last when every kernel reading its output is a pointwise kernel that
can iterate in that layout or a row kernel over its channels alone (`channels_last`): pointwise
kernels then walk their output in NHWC order and write it channels-last too, and a row over the
channels is C consecutive elements, so every load and store stays coalesced, and so on
downstream. A convolution read by anything else (a norm over its pixels, a product, a vendor
call) stays NCHW: a row kernel over pixels reading NHWC would stride through memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from policies.compiler.ir import CompileError, Program, Ref, kind

# torch's channels-last memory format of a tensor of each rank (none for 3-D tensors)
FORMATS = {4: "torch.channels_last", 5: "torch.channels_last_3d"}
_CONVS = frozenset({"conv2d", "conv3d", "conv_transpose2d", "conv_transpose3d"})


def channels_last(prog: Program, groups: Sequence[Sequence[int]], stored: Sequence[Sequence[int]],
                  extern: Iterable[int]) -> frozenset[int]:
    """The nodes to keep channels-last: each extern 2-D / 3-D convolution whose readers, and their
    readers in turn, are pointwise kernels with outputs of the convolution's rank whose every
    other same-rank operand is channels-last too (a row-major one would be read across the grain);
    with those kernels' stored outputs. A convolution that fails the check is left NCHW whole."""
    ext = frozenset(extern)
    group_of = {j: gi for gi, g in enumerate(groups) for j in g}
    out: set[int] = set()
    for j in sorted(ext):
        node = prog.graph.nodes[j]
        rank = len(node.shape)
        if node.op not in _CONVS or rank not in FORMATS:
            continue
        closure = _closure(prog, groups, stored, group_of, ext, j, rank, frozenset(out))
        if closure:
            out |= closure
    return frozenset(out)


def _closure(prog: Program, groups: Sequence[Sequence[int]], stored: Sequence[Sequence[int]],
             group_of: dict[int, int], ext: frozenset[int], conv: int, rank: int, done: frozenset[int]) -> set[int]:
    """`conv` and every node it makes channels-last, or an empty set when some reader cannot follow."""
    cl = {conv}
    todo = [conv]
    seen_groups: set[int] = set()
    while todo:
        j = todo.pop()
        for reader in prog.consumers[j]:
            gi = group_of.get(reader)
            if gi is None or reader in ext:
                return set()
            if gi in seen_groups:
                continue
            rows = [k for k in groups[gi] if kind(prog.graph.nodes[k].op) != "pointwise"]
            if not all(_over_channels(prog, k, rank) for k in rows):
                return set()
            if not rows and any(len(prog.graph.nodes[k].shape) != rank for k in stored[gi]):
                return set()
            seen_groups.add(gi)
            # a row kernel's outputs of the input's rank (a softmax, a keepdim reduction) follow it
            for k in (k for k in stored[gi] if len(prog.graph.nodes[k].shape) == rank):
                if k not in cl:
                    cl.add(k)
                    todo.append(k)
    # every same-rank operand a chosen kernel reads at its full extent must be channels-last
    for gi in seen_groups:
        group = set(groups[gi])
        for k in group:
            for ref in prog.graph.nodes[k].args:
                if ref[0] == "node" and ref[1] in group:
                    continue
                if _full(prog, ref, rank) and not (ref[0] == "node" and (ref[1] in cl or ref[1] in done)):
                    return set()
    return cl


def _over_channels(prog: Program, j: int, rank: int) -> bool:
    """Whether node `j` is a row op (reduction, softmax, norm) over dim 1 alone of a rank-`rank`
    input: channels-last, each of its rows is C consecutive elements."""
    from policies.compiler.rows import row_plan  # the row template, only for row ops

    node = prog.graph.nodes[j]
    if kind(node.op) != "row" or len(prog.shape(node.args[0])) != rank:
        return False
    try:
        plan = row_plan(prog, j)
    except CompileError:
        return False
    return set(range(rank)) - set(plan.kept_axes) == {1}


def _full(prog: Program, ref: Ref, rank: int) -> bool:
    """Whether `ref` is read across its pixels (same rank, some spatial extent), not broadcast."""
    if ref[0] not in ("node", "input"):
        return False
    shape = prog.shape(ref)
    return len(shape) == rank and any(s > 1 for s in shape[2:])
