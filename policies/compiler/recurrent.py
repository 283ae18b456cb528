"""Triton lowering of the recurrent layers (catalog ops `lstm`, `gru`, `rnn`): all compute in Triton.

Each (layer, direction) is two launches, in a loop over a literal tuple of per-layer arguments in
``ModelNew.forward``:

- ``<name>_proj``: the input products of every time step at once, ``gx = x W_ih^T + b_ih`` for
  the T*B rows (one tiled ``tl.dot`` GEMM; rows read through (time, batch) strides, so batch-first
  inputs need no copy);
- ``<name>_cell``: the recurrence. One program per batch row walks the sequence (reversed for the
  reverse direction) inside the kernel: per step the hidden products ``W_hh h`` of every gate,
  the gate nonlinearities and the state update, fused. A program's h lives in a two-slot fp32
  scratch row (read one slot, write the other; a barrier per step makes the new h visible to the
  program's other threads), the LSTM's c in an fp32 row updated in place. The step's h is written
  to the layer's output (the next layer's input, or the node's result) and, after the last step,
  h_n / c_n of that layer and direction.

So a layer costs 2 launches per direction, not one per time step, and no step leaves the GPU. A
node computes the whole stack whatever its ``result`` ("output", "h_n", "c_n") and keeps that one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kernelgym.ops.catalog import RECURRENT_GATES
from policies.compiler.codegen import ref_expr, state_expr
from policies.compiler.ir import CompileError, Program
from policies.compiler.kernels import Kernel, clamp_pow2

# Programs of the cell kernel hold gates x BLOCK_J x BLOCK_H hidden weights in registers at a time.
CELL_WARPS = 8


@dataclass
class RecurrentKernel(Kernel):
    """Two jit functions (input products, recurrence) and the loop over layers that launches them.
    `blocks` holds the products' tile (BLOCK_M / BLOCK_N / BLOCK_K, at least 16 for ``tl.dot``) and
    the recurrence's (BLOCK_J hidden units by BLOCK_H of the hidden products' reduction);
    `options` the recurrence's launch options: a launch config sets both as for other kernels."""

    text: str = ""
    loop: list[str] = field(default_factory=list)   # launch lines with {key} fields for blocks / options

    def source(self) -> str:
        return self.text

    def launch(self) -> list[str]:
        fields = {k: (max(16, v) if k in ("BLOCK_M", "BLOCK_N", "BLOCK_K") else v) for k, v in self.blocks.items()}
        fields["options"] = "".join(f", {k}={v}" for k, v in self.options.items())
        return [line.format(**fields) for line in self.loop]



_PROJ = '''@triton.jit
def {name}_proj(x, w, bias, out, sx_t, sx_b, K, M: tl.constexpr, N: tl.constexpr, B: tl.constexpr,
        HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """{op}: the input products of every time step, out[t * B + b, :] = x[t, b, :] @ w^T + bias"""
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mm = rm < M
    mn = rn < N
    rows = (rm // B) * sx_t + (rm % B) * sx_b
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        mk = k < K
        a = tl.load(x + rows[:, None] + k[None, :], mask=mm[:, None] & mk[None, :], other=0.0)
        wt = tl.load(w + rn[None, :] * K + k[:, None], mask=mk[:, None] & mn[None, :], other=0.0)
        acc += tl.dot(a, wt{precision})
    if HAS_BIAS:
        acc += tl.load(bias + rn, mask=mn, other=0.0).to(tl.float32)[None, :]
    tl.store(out + rm[:, None] * N + rn[None, :], acc, mask=mm[:, None] & mn[None, :])
'''

_CELL_HEAD = '''@triton.jit
def {name}_cell(gx, whh, bhh, h0, c0, y, hn, cn, hbuf, cbuf, st_off, y_col, sy_t, sy_b, T: tl.constexpr,
        B: tl.constexpr, H: tl.constexpr, REVERSE: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_J: tl.constexpr,
        BLOCK_H: tl.constexpr):
    """{op}: the recurrence of one layer and direction, one program per batch row, the steps in a loop"""
    b = tl.program_id(0)
    jr = tl.arange(0, BLOCK_J)
    kr = tl.arange(0, BLOCK_H)
    for j0 in range(0, H, BLOCK_J):
        j = j0 + jr
        mj = j < H
        tl.store(hbuf + b * H + j, tl.load(h0 + st_off + b * H + j, mask=mj, other=0.0), mask=mj)
{init_c}    tl.debug_barrier()
    for s in range(T):
        t = s + REVERSE * (T - 1 - 2 * s)
        cur = (s % 2) * B * H
        nxt = ((s + 1) % 2) * B * H
        for j0 in range(0, H, BLOCK_J):
            j = j0 + jr
            mj = j < H
{zeros}            for k0 in range(0, H, BLOCK_H):
                k = k0 + kr
                mk = k < H
                hk = tl.load(hbuf + cur + b * H + k, mask=mk, other=0.0, volatile=True)
                wm = mj[:, None] & mk[None, :]
{products}            gxb = gx + (t * B + b) * {gh}
{gates}            tl.store(hbuf + nxt + b * H + j, h, mask=mj)
            tl.store(y + t * sy_t + b * sy_b + y_col + j, h, mask=mj)
        tl.debug_barrier()
    last = (T % 2) * B * H
    for j0 in range(0, H, BLOCK_J):
        j = j0 + jr
        mj = j < H
        tl.store(hn + st_off + b * H + j, tl.load(hbuf + last + b * H + j, mask=mj, other=0.0, volatile=True),
                 mask=mj)
{final_c}'''

_I16 = " " * 16
_I12 = " " * 12


def _cell_source(name: str, op: str, nonlinearity: str) -> str:
    gates = RECURRENT_GATES[op]
    zeros = "".join(f"{_I12}acc{g} = tl.zeros([BLOCK_J], dtype=tl.float32)\n" for g in range(gates))
    products = "".join(
        f"{_I16}acc{g} += tl.sum(tl.load(whh + ({g} * H + j)[:, None] * H + k[None, :], mask=wm, other=0.0)"
        f".to(tl.float32) * hk[None, :], axis=1)\n" for g in range(gates))
    lines = ["if HAS_BIAS:"]
    lines += [f"    acc{g} += tl.load(bhh + {g} * H + j, mask=mj, other=0.0).to(tl.float32)" for g in range(gates)]
    lines += [f"x{g} = tl.load(gxb + {g} * H + j, mask=mj, other=0.0)" for g in range(gates)]
    if op == "lstm":
        lines += ["c = tl.load(cbuf + b * H + j, mask=mj, other=0.0, volatile=True)",
                  "c = tl.sigmoid(x1 + acc1) * c + tl.sigmoid(x0 + acc0) * _tanh(x2 + acc2)",
                  "h = tl.sigmoid(x3 + acc3) * _tanh(c)",
                  "tl.store(cbuf + b * H + j, c, mask=mj)"]
    elif op == "gru":
        lines += ["r = tl.sigmoid(x0 + acc0)",
                  "z = tl.sigmoid(x1 + acc1)",
                  "n = _tanh(x2 + r * acc2)",
                  "hp = tl.load(hbuf + cur + b * H + j, mask=mj, other=0.0, volatile=True)",
                  "h = (1.0 - z) * n + z * hp"]
    elif nonlinearity == "tanh":
        lines += ["h = _tanh(x0 + acc0)"]
    elif nonlinearity == "relu":
        lines += ["h = tl.maximum(x0 + acc0, 0.0)"]
    else:
        raise CompileError(f"rnn nonlinearity {nonlinearity!r} (tanh or relu)")
    lstm = op == "lstm"
    init_c = (f"{' ' * 8}tl.store(cbuf + b * H + j, tl.load(c0 + st_off + b * H + j, mask=mj, other=0.0), mask=mj)\n"
              if lstm else "")
    final_c = (f"{' ' * 8}tl.store(cn + st_off + b * H + j, tl.load(cbuf + b * H + j, mask=mj, other=0.0, "
               "volatile=True), mask=mj)\n" if lstm else "")
    return _CELL_HEAD.format(name=name, op=op, init_c=init_c, zeros=zeros, products=products, gh=f"{gates} * H",
                             gates="".join(f"{_I12}{line}\n" for line in lines), final_c=final_c)


def recurrent_kernel(prog: Program, nodes: list[int], stored: list[int], anchor: int, name: str) -> Kernel:
    """The kernels and launch loop of one recurrent node (alone in its group)."""
    if len(nodes) != 1:
        raise CompileError(f"{name}: a recurrent layer must be alone in its kernel group, got nodes {nodes}")
    j = anchor
    node = prog.graph.nodes[j]
    op, p = node.op, node.params
    gates = RECURRENT_GATES[op]
    layers, bidir = int(p["layers"]), bool(p["bidirectional"])
    batch_first, bias = bool(p["batch_first"]), bool(p["bias"])
    result = p.get("result", "output")
    if result not in (("output", "h_n", "c_n") if op == "lstm" else ("output", "h_n")):
        raise CompileError(f"node {j} ({op}): result {result!r}")
    xs, hs = prog.shape(node.args[0]), prog.shape(node.args[1])
    if len(xs) != 3 or len(hs) != 3:
        raise CompileError(f"node {j} ({op}): input {xs} and state {hs} must be 3-D")
    d = 2 if bidir else 1
    t_len, batch = (xs[1], xs[0]) if batch_first else (xs[0], xs[1])
    hidden = hs[2]
    if hs != (layers * d, batch, hidden):
        raise CompileError(f"node {j} ({op}): state {hs}, expected {(layers * d, batch, hidden)}")
    roles = prog.weights.get(j, {})
    w = {role: state_expr(prog, key) for role, key in roles.items()}
    out_var = f"v{j}" if j in stored else None
    scratch: dict[str, str] = {}

    def buf(suffix: str, shape: tuple[int, ...], dtype: str = "DTYPE") -> str:
        var = f"{name}_{suffix}"
        scratch[var] = f"torch.empty({shape!r}, device={{dev}}, dtype={dtype})"
        return var

    gx = buf("gx", (t_len * batch, gates * hidden), "torch.float32")
    hbuf = buf("h", (2, batch, hidden), "torch.float32")
    cbuf = buf("c", (batch, hidden), "torch.float32") if op == "lstm" else hbuf
    final = out_var if result == "output" and out_var else None
    y_scratch = [buf(f"y{i}", (t_len, batch, d * hidden)) for i in range(min(2, layers - (1 if final else 0)))]
    hn = out_var if result == "h_n" and out_var else buf("hn", hs)
    cn = (out_var if result == "c_n" and out_var else buf("cn", hs)) if op == "lstm" else hn
    h0 = ref_expr(prog, node.args[1])
    c0 = ref_expr(prog, node.args[2]) if op == "lstm" else h0
    # per (layer, direction): the input with its (time, batch) strides and width, the weights, the
    # state offset, where the step outputs go (strides and column), the direction
    rows = []
    for k in range(layers):
        if k == 0:
            xin, width = ref_expr(prog, node.args[0]), xs[2]
            sx_t, sx_b = (width, t_len * width) if batch_first else (batch * width, width)
        else:
            xin, width = y_scratch[(k - 1) % 2], d * hidden
            sx_t, sx_b = batch * width, width
        if k == layers - 1 and final:
            y = final
            sy_t, sy_b = (d * hidden, t_len * d * hidden) if batch_first else (batch * d * hidden, d * hidden)
        else:
            y = y_scratch[k % 2]
            sy_t, sy_b = batch * d * hidden, d * hidden
        for di, sfx in enumerate(("", "_reverse")[:d]):
            wih, whh = w[f"weight_ih_l{k}{sfx}"], w[f"weight_hh_l{k}{sfx}"]
            bih, bhh = (w[f"bias_ih_l{k}{sfx}"], w[f"bias_hh_l{k}{sfx}"]) if bias else (wih, whh)
            soff = (k * d + di) * batch * hidden
            rows.append(f"({xin}, {sx_t}, {sx_b}, {width}, {wih}, {bih}, {whh}, {bhh}, {soff}, {y}, {sy_t}, "
                        f"{sy_b}, {di * hidden}, {di}),")
    m, n = t_len * batch, gates * hidden
    bm, bn = clamp_pow2(m, 16, 64), clamp_pow2(n, 16, 64)
    bk = clamp_pow2(max(xs[2], d * hidden if layers > 1 else 1), 16, 32)
    bj, bh = clamp_pow2(hidden, 16, 32), clamp_pow2(hidden, 16, 64)
    loop = ["for xin, sx_t, sx_b, width, wih, bih, whh, bhh, soff, y, sy_t, sy_b, ycol, rev in ("]
    loop += [f"        {r}" for r in rows]
    loop = [line.replace("{", "{{").replace("}", "}}") for line in loop]   # literal text: no fields
    loop += [
        "):",
        f'    grid = lambda meta: (triton.cdiv({m}, meta["BLOCK_M"]), triton.cdiv({n}, meta["BLOCK_N"]))'
        "  # noqa: E731",
        f"    {name}_proj[grid](xin, wih, bih, {gx}, sx_t, sx_b, width, M={m}, N={n}, B={batch}, HAS_BIAS={bias}, "
        "BLOCK_M={BLOCK_M}, BLOCK_N={BLOCK_N}, BLOCK_K={BLOCK_K}, num_warps=4)",
        f"    grid = lambda meta: ({batch},)  # noqa: E731",
        f"    {name}_cell[grid]({gx}, whh, bhh, {h0}, {c0}, y, {hn}, {cn}, {hbuf}, {cbuf}, soff, ycol, sy_t, sy_b, "
        f"T={t_len}, B={batch}, H={hidden}, REVERSE=rev, HAS_BIAS={bias}, "
        "BLOCK_J={BLOCK_J}, BLOCK_H={BLOCK_H}{options})",
    ]
    precision = ', input_precision="ieee"' if prog.dtype == "float32" else ""
    text = (_PROJ.format(name=name, op=op, precision=precision) + "\n\n"
            + _cell_source(name, op, p.get("nonlinearity", "tanh")))
    blocks = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_J": bj, "BLOCK_H": bh}
    return RecurrentKernel(name, "recurrent", [j], [], blocks, {"num_warps": CELL_WARPS}, "", [], list(stored),
                           {"_tanh"}, scratch=scratch, text=text, loop=loop)
