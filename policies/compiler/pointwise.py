"""The pointwise template: one program per BLOCK elements of a group of elementwise ops."""

from __future__ import annotations

from collections.abc import Sequence

from policies.compiler.codegen import KernelWriter
from policies.compiler.coords import Coords, layout_order
from policies.compiler.ir import Program, numel
from policies.compiler.template import Kernel, clamp_pow2, reserve


def pointwise_kernel(prog: Program, nodes: Sequence[int], stored: Sequence[int], name: str) -> Kernel:
    """One program per BLOCK elements of the stored values' common shape, in their layout's order."""
    shape = tuple(prog.graph.nodes[stored[0]].shape)
    n = numel(shape)
    w = KernelWriter(prog, set(nodes))
    reserve(w, "pid", "offs", "mask")
    w.emit("pid = tl.program_id(0)")
    w.emit("offs = pid * BLOCK + tl.arange(0, BLOCK)")
    w.emit(f"mask = offs < {n}")
    axes = frozenset({"i"})
    with w.tile(["i"], "mask", ["BLOCK"]):
        # walk the output in its layout's order (channels-last: dims 0, 2.., then 1)
        layout = prog.layout(("node", stored[0]))
        order = layout_order(len(shape), layout)
        walked = w.decompose("offs", [shape[d] for d in order], axes, "i")
        dims = [walked[order.index(d)] for d in range(len(shape))]
        c = Coords(shape, dims, w.new_key(), "offs", axes, layout)
        for j in stored:
            w.store(j, c)
    return Kernel(name, "pointwise", list(nodes), w.params, {"BLOCK": clamp_pow2(n, 16, 1024)},
                  {"num_warps": 4}, f'lambda meta: (triton.cdiv({n}, meta["BLOCK"]),)', w.body_lines(),
                  w.stored, w.helpers)
