"""The product templates: matmul, addmm, bmm and linear as a tiled tl.dot (split-K when few
tiles), one-row products (GEMV) on CUDA cores; einsum and attention go to their own templates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from policies.compiler.attention import attention_kernel
from policies.compiler.codegen import KernelWriter
from policies.compiler.coords import ZERO, Coords, Expr, broadcast
from policies.compiler.dot import batch_offset, dot, dot_blocks, dot_kernel, dot_operand, grid_axis, split_k
from policies.compiler.einsum import einsum_kernel
from policies.compiler.ir import ELEMENT_BYTES, CompileError, Program, numel
from policies.compiler.template import Descriptor, Kernel, clamp_pow2, reserve, store_result, tile_view

# Programs a one-row product (GEMV) aims for. On an H200 the bench GEMV (1 x 3253 @ 3253 x 8192,
# fp32) took 98.6 / 56.6 / 34.0 us with 256 / 512 / 1024 programs of 4 warps (cuBLAS: 32.5 us):
# streaming at full bandwidth needs about 32 warps' loads in flight on every SM.
GEMV_PROGRAMS = 1024
# The row tile of a warp-specialised product loop. Triton 3.9's sm_90 compile (num_warps 4)
# specialises a 64-row tile into a TMA producer and wgmma consumer warp groups (12 warps); it
# splits a 128-row tile between two consumer groups and fails (its halved TMA copy no longer
# matches the descriptor's block), and leaves narrower tiles (no wgmma) or 8 warps unspecialised.
WS_BLOCK_M = 64


def _product(prog: Program, w: KernelWriter, anchor: int) -> tuple[Any, tuple, Any, tuple, int, int, int, int]:
    """(a_ref, a_shape, b_ref, b_shape, m, n, k, batch) of a matmul-kind node; linear's b is its
    (n, k) weight, the other ops' b is (k, n) (bmm: (batch, k, n))."""
    node = prog.graph.nodes[anchor]
    op = node.op
    if op == "linear":
        a_ref = node.args[0]
        a_shape = tuple(prog.shape(a_ref))
        k, n = a_shape[-1], tuple(node.shape)[-1]
        b_ref = w.weight_ref(anchor, "weight")
        if b_ref is None:
            raise CompileError(f"node {anchor}: linear without a weight")
        return a_ref, a_shape, b_ref, (n, k), numel(a_shape[:-1]), n, k, 1
    if op in ("matmul", "addmm"):
        # matmul's a may have any rank: its leading dims are rows, as linear's are
        a_ref, b_ref = node.args[-2], node.args[-1]
        a_shape, b_shape = tuple(prog.shape(a_ref)), tuple(prog.shape(b_ref))
        return a_ref, a_shape, b_ref, b_shape, numel(a_shape[:-1]), b_shape[1], a_shape[-1], 1
    if op == "bmm":
        a_ref, b_ref = node.args
        a_shape, b_shape = tuple(prog.shape(a_ref)), tuple(prog.shape(b_ref))
        return a_ref, a_shape, b_ref, b_shape, a_shape[1], b_shape[2], a_shape[2], a_shape[0]
    raise CompileError(f"no matmul lowering for {op!r}")


def _splittable(w: KernelWriter, nodes: Sequence[int], stored: Sequence[int], anchor: int) -> bool:
    """Split-K adds partial products into a zeroed output, so only fp32 products whose group ends
    at the product (a prologue, no epilogue: an epilogue needs the whole sum) can split."""
    return w.float_dtype is None and list(stored) == [anchor] and max(nodes) == anchor


def matmul_kernel(prog: Program, nodes: Sequence[int], stored: Sequence[int], anchor: int, name: str,
                  tma: bool = False, host_nodes: frozenset[int] = frozenset(),
                  warp_specialize: bool = False) -> Kernel:
    """The tiled tl.dot kernel of a product group (GEMV, einsum and attention go to theirs).

    tma: load each operand that `tma_eligible` allows through a host-side TMA tensor descriptor
    (``desc.load``, zero-padded out of bounds: no mask) instead of masked pointer loads; an operand
    that is a fused 2-D transpose (``x @ w.T``) is read through a descriptor over its source;
    host_nodes: nodes whose tensors torch made in forward (lenient fallbacks), never TMA operands;
    warp_specialize: with both operands descriptors, the k loop is ``tl.range(...,
    warp_specialize=...)`` (`_warp_specialized`)."""
    node = prog.graph.nodes[anchor]
    op = node.op
    if op == "einsum":
        return einsum_kernel(prog, nodes, stored, anchor, name)
    if op == "sdpa":
        return attention_kernel(prog, nodes, stored, anchor, name)
    out_shape = tuple(node.shape)
    w = KernelWriter(prog, set(nodes), anchor)
    reserve(w, "pid_m", "pid_n", "pid_b", "rm", "rn", "rk", "k0", "acc", "a_mask", "b_mask", "out_mask")
    a_ref, a_shape, b_ref, b_shape, m, n, k, batch = _product(prog, w, anchor)
    if m == 1:
        return _gemv_kernel(prog, w, nodes, stored, anchor, name)
    am, an_, ak = frozenset({"m"}), frozenset({"n"}), frozenset({"k"})
    batched = op == "bmm"
    blocks = dot_blocks(m, n, k)
    split = 1
    if _splittable(w, nodes, stored, anchor):
        split = split_k(-(-m // blocks["BLOCK_M"]) * -(-n // blocks["BLOCK_N"]) * batch, k)
    w.emit("pid_m = tl.program_id(0)")
    w.emit("pid_n = tl.program_id(1)")
    _batch_and_split_ids(w, 2, batched, split)
    w.emit("rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)")
    w.emit("rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)")
    # rows over a's leading dims: linear's, and a matmul's of a tensor (rank > 2) by a matrix
    rows = op == "linear" or (op == "matmul" and len(a_shape) > 2)
    lead = tuple(a_shape[:-1]) if rows else ()
    lead1 = w.decompose("rm", lead, am, "m") if rows else []
    lead2 = [tile_view(e, "[:, None]") for e in lead1]
    pb = Expr("pid_b") if batched and batch > 1 else ZERO
    rm2, rn2 = Expr("rm[:, None]", am), Expr("rn[None, :]", an_)
    w.emit("acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)")
    # TMA operands: each one's load (a descriptor's tile at this program's place); None: pointers
    a_tma = b_tma = a_src = b_src = None
    if tma:
        itemsize = ELEMENT_BYTES[prog.dtype]
        pb_txt = "pid_b" if batched and batch > 1 else "0"
        a_src = _transposed_source(prog, w, a_ref, stored) if len(a_shape) == 2 and not batched else None
        b_src = _transposed_source(prog, w, b_ref, stored) if op in ("matmul", "addmm") else None
        if a_src is not None:   # a = src.T: the (k, m) source's tile, transposed for tl.dot
            if tma_eligible(prog, w, a_src, m * itemsize, host_nodes):
                d = w.descriptor(a_src, Descriptor(("BLOCK_K", "BLOCK_M"), operand="a.T"))
                a_tma = f"{d}.load([k0, pid_m * BLOCK_M]).T"
        elif tma_eligible(prog, w, a_ref, k * itemsize, host_nodes):
            if batched:
                d = w.descriptor(a_ref, Descriptor((1, "BLOCK_M", "BLOCK_K"), operand="a"))
                a_tma = f"{d}.load([{pb_txt}, pid_m * BLOCK_M, k0]).reshape(BLOCK_M, BLOCK_K)"
            else:
                d = w.descriptor(a_ref, Descriptor(("BLOCK_M", "BLOCK_K"), (m, k) if len(a_shape) > 2 else None, "a"))
                a_tma = f"{d}.load([pid_m * BLOCK_M, k0])"
        if b_src is not None:   # b = src.T: the (n, k) source's tile, transposed as linear's weight
            if tma_eligible(prog, w, b_src, k * itemsize, host_nodes):
                b_tma = f"{w.descriptor(b_src, Descriptor(('BLOCK_N', 'BLOCK_K'), operand='b.T'))}.load([pid_n * BLOCK_N, k0]).T"
        elif tma_eligible(prog, w, b_ref, (k if op == "linear" else n) * itemsize, host_nodes):
            if op == "linear":   # the (n, k) weight's tile, transposed for tl.dot
                b_tma = f"{w.descriptor(b_ref, Descriptor(('BLOCK_N', 'BLOCK_K'), operand='b'))}.load([pid_n * BLOCK_N, k0]).T"
            elif batched:
                d = w.descriptor(b_ref, Descriptor((1, "BLOCK_K", "BLOCK_N"), operand="b"))
                b_tma = f"{d}.load([{pb_txt}, k0, pid_n * BLOCK_N]).reshape(BLOCK_K, BLOCK_N)"
            else:
                b_tma = f"{w.descriptor(b_ref, Descriptor(('BLOCK_K', 'BLOCK_N'), operand='b'))}.load([k0, pid_n * BLOCK_N])"
    ws_off = _warp_specialized(w, a_tma, b_tma, split, k_major_b=op == "linear" or b_src is not None) \
        if warp_specialize else None
    if ws_off == "":   # Triton's Hopper pass specialises 64-row tiles only (see `WS_BLOCK_M`)
        blocks["BLOCK_M"] = min(blocks["BLOCK_M"], WS_BLOCK_M)
    with w.block(_k_loop(w, k, split, ws_off == "")):
        if a_tma is None or b_tma is None:
            w.emit("rk = k0 + tl.arange(0, BLOCK_K)")
        if a_tma is None:
            w.emit(f"a_mask = (rm[:, None] < {m}) & (rk[None, :] < {k})")
        if b_tma is None:
            w.emit(f"b_mask = (rk[:, None] < {k}) & (rn[None, :] < {n})")
        rk_row, rk_col = Expr("rk[None, :]", ak), Expr("rk[:, None]", ak)
        if a_tma is not None:
            a = w.assign("a", a_tma)
        else:
            with w.tile(["m", "k"], "a_mask", ["BLOCK_M", "BLOCK_K"]):
                if rows:
                    dims = lead2 + [rk_row]
                    flat = f"rm[:, None] * {k} + rk[None, :]"
                elif batched:
                    dims = [pb, rm2, rk_row]
                    flat = f"{batch_offset(batched and batch > 1, m * k)}rm[:, None] * {k} + rk[None, :]"
                else:
                    dims = [rm2, rk_row]
                    flat = f"rm[:, None] * {k} + rk[None, :]"
                a = dot_operand(w, a_ref, Coords(tuple(a_shape), dims, w.new_key(), flat, am | ak), "a_mask", "a")
        if b_tma is not None:
            b = w.assign("b", b_tma)
        else:
            with w.tile(["k", "n"], "b_mask", ["BLOCK_K", "BLOCK_N"]):
                if op == "linear":
                    bc = Coords(b_shape, [rn2, rk_col], w.new_key())
                elif batched:
                    bc = Coords(tuple(b_shape), [pb, rk_col, rn2], w.new_key(),
                                f"{batch_offset(batch > 1, k * n)}rk[:, None] * {n} + rn[None, :]", ak | an_)
                else:
                    bc = Coords(tuple(b_shape), [rk_col, rn2], w.new_key(), f"rk[:, None] * {n} + rn[None, :]",
                                ak | an_)
                b = dot_operand(w, b_ref, bc, "b_mask", "b")
        w.emit(f"acc += {dot(w, a, b)}")
    w.emit(f"out_mask = (rm[:, None] < {m}) & (rn[None, :] < {n})")
    with w.tile(["m", "n"], "out_mask", ["BLOCK_M", "BLOCK_N"],
                {"m": f"rm[:, None] < {m}", "n": f"rn[None, :] < {n}"}):
        if rows:
            oc = Coords(out_shape, lead2 + [rn2], w.new_key(), f"rm[:, None] * {n} + rn[None, :]", am | an_)
        elif batched:
            oc = Coords(out_shape, [pb, rm2, rn2], w.new_key(), f"{batch_offset(batch > 1, m * n)}rm[:, None] * {n} + rn[None, :]",
                        am | an_)
        else:
            oc = Coords(out_shape, [rm2, rn2], w.new_key(), f"rm[:, None] * {n} + rn[None, :]", am | an_)
        store_result(w, oc, _with_bias(prog, w, anchor, oc, rn2, "acc", split), stored, atomic=split > 1)
    kern = dot_kernel(w, name, "matmul", nodes, m, n, k, batch, split=split, blocks=blocks)
    kern.descriptors = dict(w.descriptors)
    if tma:
        kern.comment_note = "; TMA loads: " + (", ".join(f"{d.operand} ({p})" for p, d in kern.descriptors.items())
                                               or "none") + \
            "".join(f"; {o} by pointers" for o, t in (("a", a_tma), ("b", b_tma)) if t is None)
    if ws_off is not None:
        kern.comment_note += (f"; k loop warp-specialised while BLOCK_M <= {WS_BLOCK_M}" if ws_off == ""
                              else f"; k loop not warp-specialised: {ws_off}")
    return kern


def tma_eligible(prog: Program, w: KernelWriter, ref: Any, row_bytes: int, host_nodes: frozenset[int]) -> bool:
    """Whether product operand `ref` can be read through a TMA descriptor: a float tensor in memory
    (a graph input, a weight or state tensor, or what an earlier kernel or vendor call stored; not
    a value this kernel computes in a prologue, not one torch made in forward: `host_nodes`),
    dense row-major, whose rows of `row_bytes` keep every row 16-byte aligned (TMA's rule for
    strides)."""
    kind_, j = ref
    if kind_ == "node" and (j in w.group or j in host_nodes or j in prog.late_bias):
        return False
    if prog.is_scalar(ref) or prog.is_index(ref) or prog.layout(ref) != "":
        return False
    return row_bytes % 16 == 0


def _transposed_source(prog: Program, w: KernelWriter, ref: Any, stored: Sequence[int]) -> Any:
    """The source of product operand `ref` when `ref` is a 2-D transpose (or ``permute(1, 0)``)
    fused into this kernel (``x @ w.T``: the kernel reads the source in place, swapping the
    coordinates) and not stored; else None."""
    kind_, j = ref
    if kind_ != "node" or j not in w.group or j in stored:
        return None
    node = prog.graph.nodes[j]
    swap = node.op == "transpose" or (node.op == "permute" and tuple(node.params.get("perm") or ()) == (1, 0))
    return node.args[0] if swap and len(node.shape) == 2 else None


def _warp_specialized(w: KernelWriter, a_tma: str | None, b_tma: str | None, split: int, k_major_b: bool) -> str:
    """Why a product's k loop cannot be warp-specialised ("": it can). Triton's automatic warp
    specialisation partitions a loop of tensor-descriptor loads feeding tl.dot into producer
    (TMA) and consumer (wgmma) warps, so both operands must be descriptor loads; on Triton 3.9's
    sm_90 compile an fp32 (TF32 wgmma) b must be k-contiguous in memory (linear's weight or a
    transposed b: a (k, n) b fails to lower, "WGMMA type or shape is not supported"), and a
    split-K span loop (bounds from ``pid_k``) fails in its Hopper pass ("'scf.for' op operation
    destroyed but still has uses")."""
    if a_tma is None or b_tma is None:
        return "an operand by pointers"
    if split > 1:
        return "split-K"
    if w.float_dtype is None and not k_major_b:
        return "fp32 b is not k-major"
    return ""


def _batch_and_split_ids(w: KernelWriter, axis: int, batched: bool, split: int) -> None:
    """The program ids of a product's grid `axis` after its tile axes: the batch (``pid_b``) when
    `batched`, the k span (``pid_k``) when split, both (batch-major) when both."""
    reserve(w, "pid_k", "pid_z", "k_lo")
    if split > 1 and batched:
        w.emit(f"pid_z = tl.program_id({axis})")
        w.emit("pid_b = pid_z // SPLIT_K")
        w.emit("pid_k = pid_z % SPLIT_K")
    elif split > 1:
        w.emit(f"pid_k = tl.program_id({axis})")
    elif batched:
        w.emit(f"pid_b = tl.program_id({axis})")


def _k_loop(w: KernelWriter, k: int, split: int, ws: bool = False) -> str:
    """The header of a product's loop over k in BLOCK_K steps; with split-K, over this program's
    span of whole steps (masks cut the tail); `ws`: a ``tl.range`` that Triton warp-specialises
    while BLOCK_M <= `WS_BLOCK_M` (`_warp_specialized`)."""
    if ws:
        return f"for k0 in tl.range(0, {k}, BLOCK_K, warp_specialize=BLOCK_M <= {WS_BLOCK_M}):"
    if split == 1:
        return f"for k0 in range(0, {k}, BLOCK_K):"
    span = f"(({k} + SPLIT_K * BLOCK_K - 1) // (SPLIT_K * BLOCK_K)) * BLOCK_K"
    w.emit(f"k_lo = pid_k * {span}")
    return f"for k0 in range(k_lo, k_lo + {span}, BLOCK_K):"


def _with_bias(prog: Program, w: KernelWriter, anchor: int, oc: Coords, n_coord: Expr, acc: str, split: int) -> str:
    """The product's value on the output tile: `acc` plus linear's or addmm's bias (with split-K,
    only the first span's program adds it)."""
    node = prog.graph.nodes[anchor]
    bv = None
    if node.op == "linear":
        bias = w.weight_ref(anchor, "bias")
        if bias is not None:
            bv = w.load(bias, Coords((node.shape[-1],), [n_coord], ("bias", oc.key)), name=f"n{anchor}_b")
    elif node.op == "addmm":
        bias_ref = node.args[0]
        bv = w.value(bias_ref, broadcast(oc, prog.shape(bias_ref)))
    if bv is None:
        return acc
    return w.assign("res", f"{acc} + {bv}" if split == 1 else f"tl.where(pid_k == 0, {acc} + {bv}, {acc})")


def _gemv_kernel(prog: Program, w: KernelWriter, nodes: Sequence[int], stored: Sequence[int], anchor: int,
                 name: str) -> Kernel:
    """A product with one row (m = 1: a GEMV, per batch for bmm) streams its other operand once
    and is memory-bound: instead of tl.dot on a row padded to 16, each program multiplies a
    [BLOCK_K, BLOCK_N] tile of that operand by the row's BLOCK_K values and sums over k at the end
    (CUDA-core FMAs on full-width loads), and programs split k when there are few column tiles."""
    node = prog.graph.nodes[anchor]
    op = node.op
    out_shape = tuple(node.shape)
    a_ref, a_shape, b_ref, b_shape, _, n, k, batch = _product(prog, w, anchor)
    batched = op == "bmm"
    an_, ak = frozenset({"n"}), frozenset({"k"})
    # linear's weight (n, k) is contiguous along k: its tiles are wide along k. The others' b (k, n)
    # is contiguous along n; on an H200 the bench GEMV ran at 34.0 us with 64 x 64 tiles (1024
    # programs), 56.6 us with 32 x 128 ones (512 programs; 35.8 us with 8 warps each).
    k_major = op == "linear"
    blocks = {"BLOCK_N": clamp_pow2(n, 16, 32 if k_major else 64), "BLOCK_K": clamp_pow2(k, 16, 128 if k_major else 64)}
    tiles = -(-n // blocks["BLOCK_N"]) * batch
    split = split_k(tiles, k, GEMV_PROGRAMS) if _splittable(w, nodes, stored, anchor) else 1
    w.emit("pid_n = tl.program_id(0)")
    _batch_and_split_ids(w, 1, batched and batch > 1, split)
    pb = Expr("pid_b") if batched and batch > 1 else ZERO
    w.emit("rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)")
    w.emit("acc = tl.zeros([BLOCK_K, BLOCK_N], dtype=tl.float32)")
    rk, rk_col, rn2 = Expr("rk", ak), Expr("rk[:, None]", ak), Expr("rn[None, :]", an_)
    with w.block(_k_loop(w, k, split)):
        w.emit("rk = k0 + tl.arange(0, BLOCK_K)")
        w.emit(f"a_mask = rk < {k}")
        w.emit(f"b_mask = (rk[:, None] < {k}) & (rn[None, :] < {n})")
        with w.tile(["k"], "a_mask", ["BLOCK_K"]):
            lead = [ZERO] * (len(a_shape) - 1)
            if batched:
                lead = [pb, ZERO]
            ac = Coords(a_shape, lead + [rk], w.new_key(), f"{batch_offset(batched and batch > 1, k)}rk", ak)
            a = dot_operand(w, a_ref, ac, "a_mask", "a")
        with w.tile(["k", "n"], "b_mask", ["BLOCK_K", "BLOCK_N"]):
            if k_major:
                bc = Coords(b_shape, [rn2, rk_col], w.new_key())
            else:
                bc = Coords(b_shape, ([pb] if batched else []) + [rk_col, rn2], w.new_key(),
                            f"{batch_offset(batched and batch > 1, k * n)}rk[:, None] * {n} + rn[None, :]", ak | an_)
            b = dot_operand(w, b_ref, bc, "b_mask", "b")
        w.emit(f"acc += {_subscriptable(a)}[:, None].to(tl.float32) * {_subscriptable(b)}.to(tl.float32)")
    w.emit(f"out_mask = rn < {n}")
    with w.tile(["n"], "out_mask", ["BLOCK_N"]):
        rn = Expr("rn", an_)
        dims = [ZERO] * (len(out_shape) - 1) + [rn]
        if batched:
            dims = [pb, ZERO, rn]
        oc = Coords(out_shape, dims, w.new_key(), f"{batch_offset(batched and batch > 1, n)}rn", an_)
        total = w.assign("dot", "tl.sum(acc, axis=0)")
        store_result(w, oc, _with_bias(prog, w, anchor, oc, rn, total, split), stored, atomic=split > 1)
    if split > 1:
        blocks["SPLIT_K"] = split
    axis = grid_axis(batch if batched and batch > 1 else None, split)
    grid = f'lambda meta: (triton.cdiv({n}, meta["BLOCK_N"]){axis or ","})'
    return Kernel(name, "matmul", list(nodes), w.params, blocks, {"num_warps": 4}, grid, w.body_lines(),
                  w.stored, w.helpers, zero_init=split > 1)


def _subscriptable(v: str) -> str:
    """`v` ready to be subscripted: a name as is, anything else in parentheses."""
    return v if v.isidentifier() else f"({v})"
