"""The attention template: scaled dot-product attention as one flash-attention kernel (online
softmax over key chunks; the score matrix never reaches memory)."""

from __future__ import annotations

from collections.abc import Sequence

from policies.compiler.codegen import KernelWriter
from policies.compiler.coords import NEG_INF, ZERO, Coords, Expr, lit
from policies.compiler.dot import batch_offset, dot, dot_operand
from policies.compiler.ir import CompileError, Program, numel
from policies.compiler.template import Kernel, clamp_pow2, reserve, store_result

# Widest slice of the value dim one attention program keeps in registers; wider heads split over
# the grid (each slice recomputes the scores).
ATTN_DV_MAX = 128


def attention_kernel(prog: Program, nodes: Sequence[int], stored: Sequence[int], anchor: int, name: str) -> Kernel:
    """Flash attention: one program per BLOCK_M query rows (and value-dim slice) of one batch entry
    streams the keys and values in BLOCK_N chunks, computing the scores chunk by chunk (a loop over
    the head dim in BLOCK_K steps) and keeping a running max, sum and output (the online softmax),
    so the L x S score matrix never reaches memory. Causal masks are top-left aligned (torch's
    ``is_causal``), and chunks past a row tile's diagonal are skipped."""
    node = prog.graph.nodes[anchor]
    p = node.params
    q_ref, k_ref, v_ref = node.args
    q_shape, k_shape, v_shape = (tuple(prog.shape(r)) for r in (q_ref, k_ref, v_ref))
    out_shape = tuple(node.shape)
    lead = q_shape[:-2]
    if k_shape[:-2] != lead or v_shape[:-2] != lead:
        raise CompileError(f"node {anchor}: sdpa with broadcast batch dims {q_shape}, {k_shape}, {v_shape}")
    seq_q, e = q_shape[-2:]
    seq_k, dv = v_shape[-2:]
    batch = numel(lead)
    causal = bool(p.get("causal", False))
    scale = p.get("scale")
    scale = 1.0 / e ** 0.5 if scale is None else float(scale)
    dv_block = clamp_pow2(dv, 16, ATTN_DV_MAX)
    dv_tiles = -(-dv // dv_block)
    w = KernelWriter(prog, set(nodes), anchor)
    reserve(w, "pid_m", "pid_b", "pid_v", "rm", "rn", "re", "rv", "n0", "e0", "n_hi", "acc", "s", "m_i", "l_i",
            "m_new", "m_safe", "alpha", "p", "q_mask", "k_mask", "v_mask", "out_mask", "out")
    am, an_, ae, av = frozenset({"m"}), frozenset({"n"}), frozenset({"e"}), frozenset({"v"})
    w.emit("pid_m = tl.program_id(0)")
    w.emit("pid_b = tl.program_id(1)")
    w.emit("rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)")
    if dv_tiles > 1:
        w.emit("pid_v = tl.program_id(2)")
        w.emit(f"rv = pid_v * {dv_block} + tl.arange(0, {dv_block})")
    else:
        w.emit(f"rv = tl.arange(0, {dv_block})")
    bdims = w.decompose("pid_b", lead, frozenset(), "b") if batch > 1 else [ZERO] * len(lead)
    rm2, rv2 = Expr("rm[:, None]", am), Expr("rv[None, :]", av)
    f32 = "dtype=tl.float32"
    w.emit(f"m_i = tl.full([BLOCK_M], {NEG_INF}, {f32})")
    w.emit(f"l_i = tl.zeros([BLOCK_M], {f32})")
    w.emit(f"acc = tl.zeros([BLOCK_M, {dv_block}], {f32})")
    # causal: key j is visible to query i when j <= i, so no key past this tile's last row is
    w.emit(f"n_hi = tl.minimum({seq_k}, (pid_m + 1) * BLOCK_M)" if causal else f"n_hi = {seq_k}")
    with w.block("for n0 in range(0, n_hi, BLOCK_N):"):
        w.emit("rn = n0 + tl.arange(0, BLOCK_N)")
        w.emit("s = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)")
        with w.block(f"for e0 in range(0, {e}, BLOCK_K):"):
            w.emit("re = e0 + tl.arange(0, BLOCK_K)")
            w.emit(f"q_mask = (rm[:, None] < {seq_q}) & (re[None, :] < {e})")
            w.emit(f"k_mask = (re[:, None] < {e}) & (rn[None, :] < {seq_k})")
            with w.tile(["m", "e"], "q_mask", ["BLOCK_M", "BLOCK_K"]):
                flat = f"{batch_offset(batch > 1, seq_q * e)}rm[:, None] * {e} + re[None, :]"
                qv = dot_operand(w, q_ref, Coords(q_shape, [*bdims, rm2, Expr("re[None, :]", ae)], w.new_key(), flat,
                                                  am | ae), "q_mask", "q")
            with w.tile(["e", "n"], "k_mask", ["BLOCK_K", "BLOCK_N"]):
                # k^T: a [BLOCK_K, BLOCK_N] tile of k (S, E)
                kv = dot_operand(w, k_ref, Coords(k_shape, [*bdims, Expr("rn[None, :]", an_), Expr("re[:, None]", ae)],
                                                  w.new_key()), "k_mask", "kt")
            w.emit(f"s += {dot(w, qv, kv)}")
        valid = f"(rn[None, :] < {seq_k})" + (" & (rn[None, :] <= rm[:, None])" if causal else "")
        w.emit(f"s = tl.where({valid}, s * {lit(scale)}, {NEG_INF})")
        w.emit("m_new = tl.maximum(m_i, tl.max(s, axis=1))")
        w.emit("# rows with no visible key yet keep an offset of 0 (no inf - inf)")
        w.emit(f"m_safe = tl.where(m_new == {NEG_INF}, 0.0, m_new)")
        w.emit("p = tl.exp(s - m_safe[:, None])")
        w.emit("alpha = tl.exp(m_i - m_safe)")
        w.emit("l_i = l_i * alpha + tl.sum(p, axis=1)")
        w.emit(f"v_mask = (rn[:, None] < {seq_k}) & (rv[None, :] < {dv})")
        with w.tile(["n", "v"], "v_mask", ["BLOCK_N", str(dv_block)]):
            flat = f"{batch_offset(batch > 1, seq_k * dv)}rn[:, None] * {dv} + rv[None, :]"
            vv = dot_operand(w, v_ref, Coords(v_shape, [*bdims, Expr("rn[:, None]", an_), rv2], w.new_key(), flat,
                                              an_ | av), "v_mask", "v")
        w.emit(f"acc = acc * alpha[:, None] + {dot(w, 'p', vv)}")
        w.emit("m_i = m_new")
    w.emit(f"out_mask = (rm[:, None] < {seq_q}) & (rv[None, :] < {dv})")
    with w.tile(["m", "v"], "out_mask", ["BLOCK_M", str(dv_block)]):
        w.emit("out = acc / l_i[:, None]")
        flat = f"{batch_offset(batch > 1, seq_q * dv)}rm[:, None] * {dv} + rv[None, :]"
        oc = Coords(out_shape, [*bdims, rm2, rv2], w.new_key(), flat, am | av)
        store_result(w, oc, "out", stored)
    blocks = {"BLOCK_M": clamp_pow2(seq_q, 16, 64), "BLOCK_N": clamp_pow2(seq_k, 16, 64),
              "BLOCK_K": clamp_pow2(e, 16, 64)}
    grid = f'lambda meta: (triton.cdiv({seq_q}, meta["BLOCK_M"]), {batch}{f", {dv_tiles}" if dv_tiles > 1 else ""})'
    return Kernel(name, "matmul", list(nodes), w.params, blocks, {"num_warps": 4, "num_stages": 2}, grid,
                  w.body_lines(), w.stored, w.helpers)
