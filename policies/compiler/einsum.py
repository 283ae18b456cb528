"""The einsum template: an einsum of two operands viewed as a batched matmul (`Contraction`)
and written as one tl.dot kernel."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from policies.compiler.codegen import KernelWriter
from policies.compiler.coords import ZERO, Coords, Expr
from policies.compiler.dot import batch_offset, dot, dot_kernel, dot_operand
from policies.compiler.ir import CompileError, Program, numel
from policies.compiler.template import Kernel, reserve, store_result, tile_view


@dataclass
class Contraction:
    """An einsum of two operands as a batched matmul: letters in both operands and the output are
    batch axes, in one operand and the output rows (a) or columns (b), in both operands only the
    reduction; each group in the output's (batch, rows, columns) or a's (reduction) order."""

    a: str
    b: str
    out: str
    batch: str
    rows: str
    cols: str
    red: str
    sizes: dict[str, int]

    def size(self, letters: str) -> int:
        return numel([self.sizes[ch] for ch in letters])


def contraction(eq: str, a_shape: Sequence[int], b_shape: Sequence[int]) -> Contraction:
    """The batched-matmul view of ``torch.einsum(eq, a, b)``; raises CompileError for what is not
    one (a letter summed within one operand, of size above 1: a reduction, not a product)."""
    from kernelgym.ops.catalog import einsum_operands

    try:
        (sa, sb), so = einsum_operands(eq)
    except ValueError as exc:
        raise CompileError(str(exc)) from None
    sizes = {ch: int(d) for s, shape in ((sa, a_shape), (sb, b_shape)) for ch, d in zip(s, shape)}
    lone = [ch for ch in sizes if ch not in so and (ch in sa) != (ch in sb) and sizes[ch] != 1]
    if lone:
        raise CompileError(f"einsum {eq!r} sums letter {lone[0]!r} within one operand (not a product)")
    batch = "".join(ch for ch in so if ch in sa and ch in sb)
    rows = "".join(ch for ch in so if ch in sa and ch not in sb)
    cols = "".join(ch for ch in so if ch in sb and ch not in sa)
    red = "".join(ch for ch in sa if ch in sb and ch not in so)
    return Contraction(sa, sb, so, batch, rows, cols, red, sizes)


def _letter_coords(subs: str, exprs: dict[str, Expr]) -> list[Expr]:
    """One coordinate per letter of an operand (letters of size 1 summed nowhere read index 0)."""
    return [exprs.get(ch, ZERO) for ch in subs]


def einsum_kernel(prog: Program, nodes: Sequence[int], stored: Sequence[int], anchor: int, name: str) -> Kernel:
    """A tl.dot kernel for any einsum that is a batched matmul (`contraction`): rows, columns and
    the reduction each run over their letters flattened, the batch over a third grid axis; an
    operand laid out (batch, rows, reduction) / (batch, reduction, columns) is read by flat index,
    any other layout (a transposed operand) through its coordinates."""
    node = prog.graph.nodes[anchor]
    a_ref, b_ref = node.args
    a_shape, b_shape, out_shape = tuple(prog.shape(a_ref)), tuple(prog.shape(b_ref)), tuple(node.shape)
    ct = contraction(str(node.params["eq"]), a_shape, b_shape)
    m, n, k, batch = ct.size(ct.rows), ct.size(ct.cols), ct.size(ct.red), ct.size(ct.batch)
    w = KernelWriter(prog, set(nodes), anchor)
    reserve(w, "pid_m", "pid_n", "pid_b", "rm", "rn", "rk", "k0", "acc", "a_mask", "b_mask", "out_mask")
    am, an_, ak = frozenset({"m"}), frozenset({"n"}), frozenset({"k"})
    w.emit("pid_m = tl.program_id(0)")
    w.emit("pid_n = tl.program_id(1)")
    if batch > 1:
        w.emit("pid_b = tl.program_id(2)")
    w.emit("rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)")
    w.emit("rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)")
    exprs: dict[str, Expr] = {}
    bsizes = [ct.sizes[ch] for ch in ct.batch]
    exprs |= dict(zip(ct.batch, w.decompose("pid_b", bsizes, frozenset(), "b") if batch > 1 else [ZERO] * len(bsizes)))
    exprs |= {ch: tile_view(e, "[:, None]") for ch, e in zip(ct.rows, w.decompose("rm", [ct.sizes[c] for c in ct.rows], am, "m"))}
    exprs |= {ch: tile_view(e, "[None, :]") for ch, e in zip(ct.cols, w.decompose("rn", [ct.sizes[c] for c in ct.cols], an_, "n"))}
    w.emit("acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)")
    with w.block(f"for k0 in range(0, {k}, BLOCK_K):"):
        w.emit("rk = k0 + tl.arange(0, BLOCK_K)")
        w.emit(f"a_mask = (rm[:, None] < {m}) & (rk[None, :] < {k})")
        w.emit(f"b_mask = (rk[:, None] < {k}) & (rn[None, :] < {n})")
        red1 = w.decompose("rk", [ct.sizes[ch] for ch in ct.red], ak, "r")

        def operand(side: str, ref: Any, shape: tuple, subs: str, axes: list[str], red_view: str,
                    flat: str | None, keys: frozenset) -> str:
            """One operand's tile: by flat index (`flat`, None for a transposed layout) or coordinates."""
            with w.tile(axes, f"{side}_mask", [f"BLOCK_{x.upper()}" for x in axes]):
                e = exprs | {ch: tile_view(x, red_view) for ch, x in zip(ct.red, red1)}
                coords = Coords(shape, _letter_coords(subs, e), w.new_key(), flat, keys if flat else frozenset())
                return dot_operand(w, ref, coords, f"{side}_mask", side)

        a = operand("a", a_ref, a_shape, ct.a, ["m", "k"], "[None, :]",
                    f"{batch_offset(batch > 1, m * k)}rm[:, None] * {k} + rk[None, :]"
                    if ct.a == ct.batch + ct.rows + ct.red else None, am | ak)
        b = operand("b", b_ref, b_shape, ct.b, ["k", "n"], "[:, None]",
                    f"{batch_offset(batch > 1, k * n)}rk[:, None] * {n} + rn[None, :]"
                    if ct.b == ct.batch + ct.red + ct.cols else None, ak | an_)
        w.emit(f"acc += {dot(w, a, b)}")
    w.emit(f"out_mask = (rm[:, None] < {m}) & (rn[None, :] < {n})")
    with w.tile(["m", "n"], "out_mask", ["BLOCK_M", "BLOCK_N"],
                {"m": f"rm[:, None] < {m}", "n": f"rn[None, :] < {n}"}):
        flat = f"{batch_offset(batch > 1, m * n)}rm[:, None] * {n} + rn[None, :]" \
            if ct.out == ct.batch + ct.rows + ct.cols else None
        oc = Coords(out_shape, _letter_coords(ct.out, exprs), w.new_key(), flat, am | an_ if flat else frozenset())
        store_result(w, oc, "acc", stored)
    return dot_kernel(w, name, "matmul", nodes, m, n, k, batch if batch > 1 else None)
