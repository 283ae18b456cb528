"""One Triton kernel per fusion group: pointwise, row (reduction / softmax / norm / scan), matmul
and convolution templates, each inlining the group's pointwise members through `KernelWriter`.

Shapes are baked into the kernel as literals (a task has fixed shapes, and constant sizes let
Triton fold the index arithmetic); block sizes are ``tl.constexpr`` parameters given by keyword
at the launch, and grids are ``lambda meta: ...`` of those block sizes, so a launch-parameter
search can rewrite them without touching the kernel. Every kernel is correct for any
power-of-two block size (loops over rows, K and reduction chunks, masks on every edge).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kernelgym.ops.catalog import conv_dims, conv_groups
from policies.compiler.codegen import ZERO, Coords, Expr, KernelWriter, broadcast, lit, paren
from policies.compiler.ir import (
    GLOBAL_POOLS,
    NORMALIZE,
    REDUCE,
    CompileError,
    Program,
    kind,
    numel,
    reduce_axes,
)

NEG_INF = '-float("inf")'
POS_INF = 'float("inf")'
# Output positions an image needs for convolution tiles of its own (below, images share tiles).
CONV_TILE_MIN = 64
# Programs a memory-bound kernel aims for (about 4 per SM of a 132-SM H100/H200): row kernels over
# non-contiguous rows shrink their tiles towards it, and products with few tiles split k.
PROGRAMS_MIN = 512
# Largest default row tile of a tl.dot kernel (see `_dot_kernel`).
DOT_BLOCK_M = 128
# Least reduction length a split-K program keeps (shorter runs spend more on the atomic adds).
SPLIT_K_MIN = 256
# Contiguous rows of up to SHORT_ROW elements share tiles of SHORT_ROW_TILE elements, one warp a
# tile: on an H200 a std over rows of 97 (65536 rows) took 15.3 us with 4 rows and 1 warp a
# program, 18.3 with 8 rows and 2 warps, 24.1 with 8 rows and 4 warps (torch.compile: 18.0).
SHORT_ROW, SHORT_ROW_TILE = 128, 512
# Longest chunk of a contiguous row a row kernel loads at once.
ROW_CHUNK_MAX = 4096
# Row reductions that fold a sum (sum, mean, norm) split a long reduced axis over this many programs
# at most when there are few row tiles, each program folding at least ROW_SPLIT_CHUNKS chunks.
ROW_SPLIT_PROGRAMS = 1024
ROW_SPLIT_CHUNKS = 4
SPLIT_FOLDS = frozenset({"sum", "mean", "norm", *GLOBAL_POOLS})
# Programs a one-row product (GEMV) aims for. On an H200 the bench GEMV (1 x 3253 @ 3253 x 8192,
# fp32) took 98.6 / 56.6 / 34.0 us with 256 / 512 / 1024 programs of 4 warps (cuBLAS: 32.5 us):
# streaming at full bandwidth needs about 32 warps' loads in flight on every SM.
GEMV_PROGRAMS = 1024
# fp32 tl.dot products. Measured on an H200 (benchmarks/NOTES.md): 3xTF32 was judged correct on
# every bench task tried and ran 1.02-2.9x faster than IEEE products on the four matmul /
# convolution tasks of a bench run (plain TF32, tl.dot's own default, missed fp32 tolerance).
DEFAULT_DOT_PRECISION = "tf32x3"


@dataclass
class Kernel:
    """A generated kernel and how forward launches it."""

    name: str
    kind: str                         # pointwise | row | matmul | conv
    nodes: list[int]
    params: list[tuple[str, str]]     # (pointer parameter, forward expression)
    blocks: dict[str, int]            # constexpr block sizes (launch keywords)
    options: dict[str, int]           # num_warps, num_stages
    grid: str                         # grid callable text (of meta)
    body: list[str]
    stored: list[int]
    helpers: set[str] = field(default_factory=set)
    comment: str = ""
    zero_init: bool = False           # outputs must be zeroed first (split-K adds partial sums)
    scratch: dict[str, str] = field(default_factory=dict)  # forward variable -> its allocation (zeroed)

    def source(self) -> str:
        sig = ", ".join([p for p, _ in self.params] + [f"{b}: tl.constexpr" for b in self.blocks])
        lines = ["@triton.jit", f"def {self.name}({sig}):"]
        if self.comment:
            lines.append(f'    """{self.comment}"""')
        return "\n".join(lines + self.body) + "\n"

    def launch(self) -> list[str]:
        args = [e for _, e in self.params] + [f"{b}={v}" for b, v in self.blocks.items()]
        args += [f"{k}={v}" for k, v in self.options.items()]
        return [f"grid = {self.grid}  # noqa: E731", f"{self.name}[grid]({', '.join(args)})"]


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def clamp_pow2(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, next_pow2(n)))


def dot_block_k(k: int) -> int:
    """BLOCK_K of a tl.dot loop over a k-long reduction: 32, or 16 where 32 would pad k by over an
    eighth more. A convolution's k (channels x window) is often just over a power of two: k = 39
    runs 48 products a row with 16, 64 with 32; a long k hardly pads and gains from fewer steps."""
    return 16 if -(-k // 32) * 32 * 8 > -(-k // 16) * 16 * 9 else 32


def split_k(tiles: int, k: int, programs: int = PROGRAMS_MIN) -> int:
    """How many programs share each output tile's k-long reduction (a power of two; 1: no split),
    for a product launching `tiles` output tiles. With fewer tiles than an H100/H200 has SMs and a
    long reduction (a GEMV: m = 1, n = 8192, k = 3253) most SMs would idle while a few programs
    stream k; the tiles split k until the launch reaches `programs` programs, keeping at least
    `SPLIT_K_MIN` of k each."""
    if tiles * 4 > programs:  # about a wave of tiles or more: every SM already has one
        return 1
    split = 1
    while tiles * split * 2 <= programs and k // (split * 2) >= SPLIT_K_MIN:
        split *= 2
    return split


def fill_block(block: int, size: int, copies: int = 1) -> int:
    """`block` halved (not below 16, a 64-byte fp32 piece) until ``cdiv(size, block) * copies``
    programs reach `PROGRAMS_MIN`: memory-bound kernels need programs on every SM."""
    while block > 16 and -(-size // block) * copies < PROGRAMS_MIN:
        block //= 2
    return block


def _view(e: Expr, suffix: str) -> Expr:
    """`e` indexed into a larger tile (``[:, None]``, ``[None, :]``)."""
    if e.is_zero:
        return ZERO
    return Expr(None, e.axes, lambda: f"{paren(e)}{suffix}")


def _reserve(w: KernelWriter, *names: str) -> None:
    w.names.update(names)


# ---- pointwise -------------------------------------------------------------------------------------


def pointwise_kernel(prog: Program, nodes: Sequence[int], stored: Sequence[int], name: str) -> Kernel:
    """One program per BLOCK elements of the stored values' common shape."""
    shape = tuple(prog.graph.nodes[stored[0]].shape)
    n = numel(shape)
    w = KernelWriter(prog, set(nodes))
    _reserve(w, "pid", "offs", "mask")
    w.emit("pid = tl.program_id(0)")
    w.emit("offs = pid * BLOCK + tl.arange(0, BLOCK)")
    w.emit(f"mask = offs < {n}")
    axes = frozenset({"i"})
    with w.tile(["i"], "mask", ["BLOCK"]):
        c = Coords(shape, w.decompose("offs", shape, axes, "i"), w.new_key(), "offs", axes)
        for j in stored:
            w.store(j, c)
    return Kernel(name, "pointwise", list(nodes), w.params, {"BLOCK": clamp_pow2(n, 16, 1024)},
                  {"num_warps": 4}, f'lambda meta: (triton.cdiv({n}, meta["BLOCK"]),)', w.body_lines(),
                  w.stored, w.helpers)


# ---- rows: reductions, softmax, norms, scans -------------------------------------------------------


@dataclass
class RowPlan:
    """How a row op views its input: M rows of R elements (kept and reduced dims)."""

    kept: tuple[int, ...]
    red: tuple[int, ...]
    # input coordinates from (kept coords, reduced coords), both already shaped for the 2-D tile
    coords: Callable[[list[Expr], list[Expr]], list[Expr]]
    contiguous_rows: bool  # a row is R consecutive elements (flat index = row * R + r)
    kept_axes: tuple[int, ...] = ()  # input axes that survive a reduction (keepdim keeps the rest as 1)
    weight_coords: Callable[[list[Expr], list[Expr]], list[Expr]] | None = None
    inner: int = 1  # elements after the last reduced axis: consecutive rows are this contiguous


def row_plan(prog: Program, a: int) -> RowPlan:
    node = prog.graph.nodes[a]
    op, p = node.op, node.params
    x = prog.shape(node.args[0])
    rank = len(x)
    if op == "group_norm":
        g = int(p["groups"])
        n, ch, sp = x[0], x[1], tuple(x[2:])
        cg = ch // g

        def gn_coords(k: list[Expr], r: list[Expr]) -> list[Expr]:
            chan = Expr(None, k[1].axes | r[0].axes, lambda: _chan(k[1], r[0], cg))
            return [k[0], chan, *r[1:]]

        return RowPlan((n, g), (cg, *sp), gn_coords, True,
                       weight_coords=lambda k, r: [Expr(None, k[1].axes | r[0].axes, lambda: _chan(k[1], r[0], cg))])
    if op in ("layer_norm", "rms_norm"):
        nd = int(p.get("ndims", 1))
        red_axes = list(range(rank - nd, rank))
    elif op == "instance_norm":
        red_axes = list(range(2, rank))
    elif op in GLOBAL_POOLS:
        red_axes = list(range(rank - GLOBAL_POOLS[op], rank))
    else:
        try:
            red_axes = reduce_axes(p, rank)
        except CompileError as exc:
            raise CompileError(f"node {a}: {exc}") from None
    kept_axes = [i for i in range(rank) if i not in red_axes]

    def coords(k: list[Expr], r: list[Expr]) -> list[Expr]:
        out: list[Expr] = [ZERO] * rank
        for i, e in zip(kept_axes, k):
            out[i] = e
        for i, e in zip(red_axes, r):
            out[i] = e
        return out

    contiguous = red_axes == list(range(rank - len(red_axes), rank))
    # an affine's weight is indexed by the reduced axes (layer_norm) or, for instance_norm, by the
    # channel (kept axis 1 of (N, C))
    wcoords = (lambda k, r: [k[1]]) if op == "instance_norm" else (lambda k, r: list(r))
    return RowPlan(tuple(x[i] for i in kept_axes), tuple(x[i] for i in red_axes), coords, contiguous,
                   tuple(kept_axes), weight_coords=wcoords, inner=numel(x[max(red_axes) + 1:]))


def _chan(g: Expr, cg_coord: Expr, cg: int) -> str:
    if g.is_zero:
        return str(cg_coord)
    if cg_coord.is_zero:
        return f"{paren(g)} * {cg}"
    return f"{paren(g)} * {cg} + {paren(cg_coord)}"


def row_kernel(prog: Program, nodes: Sequence[int], stored: Sequence[int], anchor: int, name: str) -> Kernel:
    node = prog.graph.nodes[anchor]
    op, p = node.op, node.params
    x_ref = node.args[0]
    x_shape = prog.shape(x_ref)
    plan = row_plan(prog, anchor)
    m, r = numel(plan.kept), numel(plan.red)
    w = KernelWriter(prog, set(nodes), anchor)
    # A normalising row's tail reduction over the same rows (`ir.TAIL_REDUCE`), if the group has one.
    tail = next((j for j in nodes if j != anchor and kind(prog.graph.nodes[j].op) != "pointwise"), None)
    tail_op = prog.graph.nodes[tail].op if tail is not None else ""
    block_m, block_r, split = _row_blocks(plan, m, r, op in SPLIT_FOLDS)
    _reserve(w, "pid", "rm", "row_mask", "r0", "rr", "mask", "acc", "run_max", "run_sum", "lse", "xm", "new_max",
             "safe_max", "cnt", "mean", "m2", "n_c", "mean_c", "dev", "n_new", "delta", "frac", "rstd", "carry",
             "xz", "chunk_max", "tail", "pid_r", "r_lo", "done", "total", "ws_ptr", "cnt_ptr", "r_out", "r_in",
             "mask_in", "best", "best_i", "chunk_best", "chunk_i", "take")
    w.emit("pid = tl.program_id(0)")
    if split > 1:
        w.emit("pid_r = tl.program_id(1)")
    w.emit("rm = pid * BLOCK_M + tl.arange(0, BLOCK_M)")
    w.emit(f"row_mask = rm < {m}")
    am, ar = frozenset({"m"}), frozenset({"r"})
    kept1 = w.decompose("rm", plan.kept, am, "k")
    kept2 = [_view(e, "[:, None]") for e in kept1]

    def chunk_lanes() -> None:
        """The current chunk's reduced positions `rr` and lane mask (call inside a chunk loop)."""
        w.emit("rr = r0 + tl.arange(0, BLOCK_R)")
        w.emit(f"mask = row_mask[:, None] & (rr[None, :] < {r})")

    def coords_at(pos: str) -> Coords:
        """Input coordinates at reduced positions `pos` (a [BLOCK_R] variable: rr, or a scan's
        reversed or shifted positions)."""
        red1 = w.decompose(pos, plan.red, ar, "q")
        red2 = [_view(e, "[None, :]") for e in red1]
        flat = f"rm[:, None] * {r} + {pos}[None, :]" if plan.contiguous_rows else None
        dims = plan.coords(kept2, red2)
        c = Coords(x_shape, dims, w.new_key(), flat, am | ar if flat else frozenset())
        c.red2 = red2  # type: ignore[attr-defined]
        return c

    def x_coords() -> Coords:
        """Input coordinates for the current chunk (call inside a chunk loop)."""
        chunk_lanes()
        return coords_at("rr")

    loop = f"for r0 in range(0, {r}, BLOCK_R):"
    if split > 1:
        # this program's span of whole chunks (masks cut the tail)
        span = f"(({r} + SPLIT_R * BLOCK_R - 1) // (SPLIT_R * BLOCK_R)) * BLOCK_R"
        w.emit(f"r_lo = pid_r * {span}")
        loop = f"for r0 in range(r_lo, r_lo + {span}, BLOCK_R):"
    f32 = "dtype=tl.float32"
    with w.tile(["m", "r"], "mask", ["BLOCK_M", "BLOCK_R"]):
        if op in REDUCE or op in NORMALIZE:
            stats = _row_stats(w, op, p, loop, x_coords, x_ref, r, f32)
        if op in NORMALIZE:
            _norm_prelude(w, op, p, r)
        if op in REDUCE and split == 1:
            res = _reduce_result(w, op, p, stats, r)
        elif op in NORMALIZE:
            if tail is not None:
                w.emit(_fold_init(tail_op, "tail", f32))
            with w.block(loop):
                c = x_coords()
                xv = w.value(x_ref, c, "mask")
                # a variable, not an expression: epilogue formulas substitute it unparenthesised
                y = w.assign("y", _normalize(w, op, p, anchor, stats, xv, plan, kept2, c))
                w.provided[(anchor, c.key)] = y
                for j in stored:
                    if j != tail:
                        w.store(j, c)
                if tail is not None:
                    w.emit(_fold_step(tail_op, "tail", w.value(prog.graph.nodes[tail].args[0], c, "mask")))
        elif op not in REDUCE:
            _scan(w, op, p, loop, chunk_lanes, coords_at, x_ref, anchor, stored, f32, r)
    if op in REDUCE or tail is not None:
        j = anchor if op in REDUCE else tail
        out_shape = tuple(prog.graph.nodes[j].shape)
        if len(out_shape) == len(x_shape):  # keepdim: reduced dims stay as size 1
            dims = [ZERO] * len(out_shape)
            for i, e in zip(plan.kept_axes, kept1):
                dims[i] = e
        else:
            dims = list(kept1)
        oc = Coords(out_shape, dims, w.new_key(), "rm", am)
        with w.tile(["m"], "row_mask", ["BLOCK_M"]):
            if op in REDUCE and split > 1:
                _split_finish(w, op, p, r, oc, stored, name)
            elif op in REDUCE:
                _store_result(w, oc, res, stored)
            else:
                w.provided[(tail, oc.key)] = _reduce_result(w, tail_op, {}, {"acc": "tail"}, r)
                w.store(tail, oc)
    warps = 8 if block_m * block_r >= 4096 and split == 1 else 4
    if plan.contiguous_rows and block_r <= SHORT_ROW:
        warps = 1
    blocks = {"BLOCK_M": block_m, "BLOCK_R": block_r} | ({"SPLIT_R": split} if split > 1 else {})
    axis = ', meta["SPLIT_R"]' if split > 1 else ","  # a tuple either way
    scratch = {f"{name}_ws": f"torch.zeros(({m},), device={{dev}}, dtype=torch.float32)",
               f"{name}_cnt": f"torch.zeros(({m},), device={{dev}}, dtype=torch.int32)"} if split > 1 else {}
    return Kernel(name, "row", list(nodes), w.params, blocks, {"num_warps": warps},
                  f'lambda meta: (triton.cdiv({m}, meta["BLOCK_M"]){axis})', w.body_lines(), w.stored, w.helpers,
                  scratch=scratch)


def _row_blocks(plan: RowPlan, m: int, r: int, splittable: bool) -> tuple[int, int, int]:
    """Default (BLOCK_M, BLOCK_R, SPLIT_R) of a row kernel over m rows of r elements."""
    if plan.contiguous_rows:
        # Chunks of up to 4096: in H200 search runs a layer_norm over rows of 8192 ran 1.24x /
        # 1.34x eager with 1024 / 2048 a chunk; with its amax as a tail, 2.40x with 2048 and 2.64x
        # with 4096, and a logsumexp over rows of 8192 6.46x / 7.28x (session 6, run 9).
        # Short rows: tiles of 512 elements (below, one warp each).
        block_r = clamp_pow2(r, 1, ROW_CHUNK_MAX)
        block_m = clamp_pow2(m, 1, max(1, (SHORT_ROW_TILE if block_r <= SHORT_ROW else 1024) // block_r))
        split = split_rows(-(-m // block_m), r, block_r) if splittable else 1
        return block_m, block_r, split
    if splittable and plan.inner >= 32:
        # A fold over a non-innermost axis with few wide row tiles: tiles keep 64 consecutive rows
        # (256-byte pieces of each reduced step) and the reduced axis splits over programs instead
        # of the tiles narrowing to 16 rows.
        block_m, block_r = clamp_pow2(m, 1, 64), clamp_pow2(r, 1, 64)
        split = split_rows(-(-m // block_m), r, block_r)
        if split > 1:
            return block_m, block_r, split
    # Reducing a non-innermost axis: only `inner` consecutive rows are contiguous, and Triton
    # lays threads along the rows first, so a tile of many rows reads one short piece of each
    # (an H200 ran log_softmax over a [.., 6045, 2] axis at 0.21x eager with 64 x 32 tiles).
    # Rows per tile stop at the contiguous run (at most 32) and the reduced axis takes the
    # rest, unless it is short: then more rows fill the tile (2048 elements). 128 of the
    # reduced axis a chunk: in four H200 search runs a norm over dim -2 of [2048, 8192] ran
    # 1.52x eager with 128 against 1.22x with 64.
    block_r = clamp_pow2(r, 1, 1024 if plan.inner < 32 else 128)
    block_m = clamp_pow2(m, 1, max(min(next_pow2(plan.inner), 32), 2048 // block_r))
    # Enough programs to keep every SM streaming. On an H200 a norm over [2048, 8192] dim -2
    # ran 1.02x eager with 32 rows a tile (256 programs) and 1.24x with 16 (512).
    return fill_block(block_m, m), block_r, 1


def split_rows(tiles: int, r: int, block_r: int) -> int:
    """How many programs share each row tile's r-long fold (a power of two; 1: no split): with
    about a wave of row tiles or more, none; else doubling towards `ROW_SPLIT_PROGRAMS` programs
    while each keeps at least `ROW_SPLIT_CHUNKS` chunks of `block_r`."""
    if tiles * 4 > PROGRAMS_MIN:
        return 1
    split = 1
    while tiles * split * 2 <= ROW_SPLIT_PROGRAMS and r >= split * 2 * block_r * ROW_SPLIT_CHUNKS:
        split *= 2
    return split


def _split_finish(w: KernelWriter, op: str, p: dict[str, Any], r: int, oc: Coords, stored: Sequence[int],
                  name: str) -> None:
    """The end of a split fold: every program adds its partial fold into a zeroed fp32 buffer; the
    last of a row tile's SPLIT_R programs to arrive (an acq_rel counter per tile, after a barrier so
    that all of its threads' adds come first) reads the totals and finishes the rows (the result,
    epilogues, stores), so a fold with a non-linear finish (norm's sqrt) or an epilogue can split."""
    w.params += [("ws_ptr", f"{name}_ws"), ("cnt_ptr", f"{name}_cnt")]
    w.emit('tl.atomic_add(ws_ptr + rm, acc, mask=row_mask, sem="relaxed")')
    w.emit("tl.debug_barrier()")
    w.emit('done = tl.atomic_add(cnt_ptr + pid, 1, sem="acq_rel")')
    with w.block("if done == SPLIT_R - 1:"):
        w.emit("total = tl.load(ws_ptr + rm, mask=row_mask, other=0.0, volatile=True)")
        _store_result(w, oc, _reduce_result(w, op, p, {"acc": "total"}, r), stored)


def _row_stats(w: KernelWriter, op: str, p: dict[str, Any], loop: str, x_coords: Callable[[], Coords],
               x_ref: Any, r: int, f32: str) -> dict[str, str]:
    """First pass over each row: running statistics the result or the normalisation needs."""
    if op in FOLDS:
        if op == "prod":
            w.helpers.add("_mul_fn")
        w.emit(_fold_init(op, "acc", f32))
        with w.block(loop):
            w.emit(_fold_step(op, "acc", w.value(x_ref, x_coords(), "mask")))
        return {"acc": "acc"}
    if op in _ARG_EXTREMES:
        return _arg_stats(w, op, loop, x_coords, x_ref, f32)
    if op in ("logsumexp", "softmax", "log_softmax"):
        w.emit(f"run_max = tl.full([BLOCK_M], {NEG_INF}, {f32})")
        w.emit(f"run_sum = tl.zeros([BLOCK_M], {f32})")
        with w.block(loop):
            xv = w.value(x_ref, x_coords(), "mask")
            w.emit(f"xm = tl.where(mask, {xv}, {NEG_INF})")
            w.emit("new_max = tl.maximum(run_max, tl.max(xm, axis=1))")
            w.emit("# a row with no finite value yet keeps an offset of 0 (no inf - inf)")
            w.emit(f"safe_max = tl.where(new_max == {NEG_INF}, 0.0, new_max)")
            w.emit("run_sum = run_sum * tl.exp(run_max - safe_max) + tl.sum(tl.exp(xm - safe_max[:, None]), axis=1)")
            w.emit("run_max = new_max")
        w.emit("lse = run_max + tl.log(run_sum)")
        return {"lse": "lse", "max": "run_max", "sum": "run_sum"}
    if op in ("var", "std", "layer_norm", "group_norm", "instance_norm"):
        w.emit("# Welford statistics merged chunk by chunk (exact for any BLOCK_R)")
        w.emit(f"cnt = tl.zeros([BLOCK_M], {f32})")
        w.emit(f"mean = tl.zeros([BLOCK_M], {f32})")
        w.emit(f"m2 = tl.zeros([BLOCK_M], {f32})")
        with w.block(loop):
            xv = w.value(x_ref, x_coords(), "mask")
            # the chunk's element count: the same for every row (a scalar, not one more reduction)
            w.emit(f"n_c = tl.minimum({r} - r0, BLOCK_R).to(tl.float32)")
            w.emit(f"mean_c = tl.sum(tl.where(mask, {xv}, 0.0), axis=1) / tl.maximum(n_c, 1.0)")
            w.emit(f"dev = tl.where(mask, {xv} - mean_c[:, None], 0.0)")
            w.emit("n_new = cnt + n_c")
            w.emit("delta = mean_c - mean")
            w.emit("frac = n_c / tl.maximum(n_new, 1.0)")
            w.emit("mean = mean + delta * frac")
            w.emit("m2 = m2 + tl.sum(dev * dev, axis=1) + delta * delta * cnt * frac")
            w.emit("cnt = n_new")
        return {"mean": "mean", "m2": "m2"}
    raise CompileError(f"no row statistics for {op!r}")


# Row ops whose statistic is one running fold of the row's masked chunks (`_fold_init`, `_fold_step`):
# a sum, a sum of squares, a max or a min. A normalising row's tail reduction is one of them too.
FOLDS = frozenset({"sum", "mean", "norm", "rms_norm", "amax", "amin", *GLOBAL_POOLS, "prod"})


# The masked lanes' value and the combining function of a max / min fold.
_EXTREMES = {"amax": (NEG_INF, "maximum", "max"), "amin": (POS_INF, "minimum", "min")}


def _fold_init(op: str, acc: str, f32: str) -> str:
    if op in _EXTREMES:
        return f"{acc} = tl.full([BLOCK_M], {_EXTREMES[op][0]}, {f32})"
    if op == "prod":
        return f"{acc} = tl.full([BLOCK_M], 1.0, {f32})"
    return f"{acc} = tl.zeros([BLOCK_M], {f32})"


def _fold_step(op: str, acc: str, xv: str) -> str:
    """Fold the current masked chunk's values `xv` into the running `acc`."""
    if op in _EXTREMES:
        init, fn, red = _EXTREMES[op]
        return f"{acc} = tl.{fn}({acc}, tl.{red}(tl.where(mask, {xv}, {init}), axis=1))"
    if op == "prod":
        return f"{acc} = {acc} * tl.reduce(tl.where(mask, {xv}, 1.0), 1, _mul_fn)"
    term = f"{xv} * {xv}" if op in ("norm", "rms_norm") else xv
    return f"{acc} += tl.sum(tl.where(mask, {term}, 0.0), axis=1)"


# argmax / argmin: the masked lanes' value, the chunk reduction, and the strict comparison by which
# a later chunk's extreme replaces the running one (ties keep the earlier index, as torch does).
_ARG_EXTREMES = {"argmax": (NEG_INF, "max", ">"), "argmin": (POS_INF, "min", "<")}


def _arg_stats(w: KernelWriter, op: str, loop: str, x_coords: Callable[[], Coords], x_ref: Any,
               f32: str) -> dict[str, str]:
    """The running extreme of each row and the position of its first occurrence (a row of one
    reduced axis: the position is the lane's `rr`). NaN is not ranked (torch ranks it highest)."""
    init, red, cmp = _ARG_EXTREMES[op]
    w.emit(f"best = tl.full([BLOCK_M], {init}, {f32})")
    w.emit("best_i = tl.zeros([BLOCK_M], dtype=tl.int32)")
    with w.block(loop):
        xv = w.value(x_ref, x_coords(), "mask")
        w.emit(f"xm = tl.where(mask, {xv}, {init})")
        w.emit(f"chunk_best = tl.{red}(xm, axis=1)")
        w.emit("# the first lane holding the chunk's extreme (masked lanes never hold a finite one)")
        w.emit("chunk_i = tl.min(tl.where((xm == chunk_best[:, None]) & mask, rr[None, :], 2147483647), axis=1)")
        w.emit(f"take = (chunk_best {cmp} best) & (chunk_i < 2147483647)")
        w.emit("best_i = tl.where(take, chunk_i, best_i)")
        w.emit("best = tl.where(take, chunk_best, best)")
    return {"index": "best_i"}


def _reduce_result(w: KernelWriter, op: str, p: dict[str, Any], stats: dict[str, str], r: int) -> str:
    if op in ("sum", "amax", "amin", "prod"):
        return stats["acc"]
    if op in _ARG_EXTREMES:
        return stats["index"]
    if op == "mean" or op in GLOBAL_POOLS:
        return w.assign("res", f"{stats['acc']} / {r}")
    if op == "norm":
        return w.assign("res", f"tl.sqrt({stats['acc']})")
    if op == "logsumexp":
        return stats["lse"]
    if op in ("var", "std"):
        corr = int(p.get("correction", 1))
        var = w.assign("var", f"m2 / {max(r - corr, 0)}" if r - corr > 0 else 'm2 * float("nan")')
        return var if op == "var" else w.assign("res", f"tl.sqrt({var})")
    raise CompileError(f"no reduction result for {op!r}")


def _normalize(w: KernelWriter, op: str, p: dict[str, Any], anchor: int, stats: dict[str, str], xv: str,
               plan: RowPlan, kept2: list[Expr], c: Coords) -> str:
    if op == "softmax":
        return f"tl.exp({xv} - run_max[:, None]) / run_sum[:, None]"
    if op == "log_softmax":
        return f"{xv} - lse[:, None]"
    red2 = c.red2  # type: ignore[attr-defined]
    if op == "rms_norm":
        if "rstd" not in w.names:
            raise AssertionError("rms_norm statistics missing")
        y = f"{xv} * rstd[:, None]"
    else:
        y = f"({xv} - mean[:, None]) * rstd[:, None]"
    wc = plan.weight_coords(kept2, red2) if plan.weight_coords else red2
    for role, fmt in (("weight", "{y} * {v}"), ("bias", "{y} + {v}")):
        ref = w.weight_ref(anchor, role)
        if ref is None:
            continue
        wshape = w.prog.state_by_key[ref[1]].shape
        v = w.load(ref, Coords(tuple(wshape), wc, ("wc", c.key, role)), "mask", name=f"n{anchor}_{role[0]}")
        y = fmt.format(y=paren(y) if role == "weight" else y, v=v)
    return y


# Scans: the combining of a chunk with the carry of the previous ones, and the value masked lanes hold.
_SCAN_IDENTITY = {"cumsum": "0.0", "cumprod": "1.0", "cummax": NEG_INF, "logcumsumexp": NEG_INF}


def _scan(w: KernelWriter, op: str, p: dict[str, Any], loop: str, chunk_lanes: Callable[[], None],
          coords_at: Callable[[str], Coords], x_ref: Any, anchor: int, stored: Sequence[int], f32: str,
          r: int) -> None:
    """A scan along each row, chunk by chunk with a carry. ``reverse`` (a suffix scan) walks the
    row from its end: lane rr holds position r-1-rr, read and written there. ``exclusive`` reads
    each lane's predecessor in walking order (the identity at the first position), so output
    position i combines the elements before it."""
    if op not in _SCAN_IDENTITY:
        raise CompileError(f"no scan for {op!r}")
    ident = _SCAN_IDENTITY[op]
    reverse, exclusive = bool(p.get("reverse")), bool(p.get("exclusive"))
    if exclusive and op not in ("cumsum", "cumprod"):
        raise CompileError(f"no exclusive {op}")
    w.emit(f"carry = tl.full([BLOCK_M], {ident}, {f32})  # the scan of the previous chunks")
    with w.block(loop):
        chunk_lanes()
        pos = "rr"
        if reverse:
            w.emit(f"r_out = {r - 1} - rr")
            pos = "r_out"
        c_out = coords_at(pos)
        c_in, m_in = c_out, "mask"
        if exclusive:
            w.emit("mask_in = mask & (rr[None, :] >= 1)")
            w.emit(f"r_in = {pos} + 1" if reverse else f"r_in = {pos} - 1")
            c_in, m_in = coords_at("r_in"), "mask_in"
        xv = w.value(x_ref, c_in, m_in)
        w.emit(f"xz = tl.where({m_in}, {xv}, {ident})")
        if op == "cumsum":
            y = w.assign("scan", "tl.cumsum(xz, axis=1) + carry[:, None]")
            w.emit("carry = carry + tl.sum(xz, axis=1)")
        elif op == "cumprod":
            w.helpers.add("_mul_fn")
            y = w.assign("scan", "tl.cumprod(xz, axis=1) * carry[:, None]")
            w.emit("carry = carry * tl.reduce(xz, 1, _mul_fn)")
        elif op == "cummax":
            w.helpers.add("_max_fn")
            y = w.assign("scan", "tl.maximum(tl.associative_scan(xz, 1, _max_fn), carry[:, None])")
            w.emit("carry = tl.maximum(carry, tl.max(xz, axis=1))")
        else:  # logcumsumexp
            w.helpers.add("_lse_fn")
            y = w.assign("scan", "_lse_fn(tl.associative_scan(xz, 1, _lse_fn), carry[:, None])")
            w.emit("chunk_max = tl.max(xz, axis=1)")
            w.emit(f"safe_max = tl.where(chunk_max == {NEG_INF}, 0.0, chunk_max)")
            w.emit("carry = _lse_fn(carry, safe_max + tl.log(tl.sum(tl.exp(xz - safe_max[:, None]), axis=1)))")
        w.provided[(anchor, c_out.key)] = y
        for j in stored:
            w.store(j, c_out)


def _norm_prelude(w: KernelWriter, op: str, p: dict[str, Any], r: int) -> None:
    eps = lit(p.get("eps", 1e-6 if op == "rms_norm" else 1e-5))
    if op == "rms_norm":
        w.emit(f"rstd = 1.0 / tl.sqrt(acc / {r} + {eps})")
        w.names.add("rstd")
    elif op in ("layer_norm", "group_norm", "instance_norm"):
        w.emit(f"rstd = 1.0 / tl.sqrt(m2 / {r} + {eps})")
        w.names.add("rstd")


# ---- matmul ----------------------------------------------------------------------------------------


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


def matmul_kernel(prog: Program, nodes: Sequence[int], stored: Sequence[int], anchor: int, name: str) -> Kernel:
    node = prog.graph.nodes[anchor]
    op = node.op
    if op == "einsum":
        return einsum_kernel(prog, nodes, stored, anchor, name)
    if op == "sdpa":
        return attention_kernel(prog, nodes, stored, anchor, name)
    out_shape = tuple(node.shape)
    w = KernelWriter(prog, set(nodes), anchor)
    _reserve(w, "pid_m", "pid_n", "pid_b", "rm", "rn", "rk", "k0", "acc", "a_mask", "b_mask", "out_mask")
    a_ref, a_shape, b_ref, b_shape, m, n, k, batch = _product(prog, w, anchor)
    if m == 1:
        return _gemv_kernel(prog, w, nodes, stored, anchor, name)
    am, an_, ak = frozenset({"m"}), frozenset({"n"}), frozenset({"k"})
    batched = op == "bmm"
    blocks = _dot_blocks(m, n, k)
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
    lead2 = [_view(e, "[:, None]") for e in lead1]
    pb = Expr("pid_b") if batched and batch > 1 else ZERO
    rm2, rn2 = Expr("rm[:, None]", am), Expr("rn[None, :]", an_)
    w.emit("acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)")
    with w.block(_k_loop(w, k, split)):
        w.emit("rk = k0 + tl.arange(0, BLOCK_K)")
        w.emit(f"a_mask = (rm[:, None] < {m}) & (rk[None, :] < {k})")
        w.emit(f"b_mask = (rk[:, None] < {k}) & (rn[None, :] < {n})")
        rk_row, rk_col = Expr("rk[None, :]", ak), Expr("rk[:, None]", ak)
        with w.tile(["m", "k"], "a_mask", ["BLOCK_M", "BLOCK_K"]):
            if rows:
                dims = lead2 + [rk_row]
                flat = f"rm[:, None] * {k} + rk[None, :]"
            elif batched:
                dims = [pb, rm2, rk_row]
                flat = f"{_bofs(batched and batch > 1, m * k)}rm[:, None] * {k} + rk[None, :]"
            else:
                dims = [rm2, rk_row]
                flat = f"rm[:, None] * {k} + rk[None, :]"
            a = _operand(w, a_ref, Coords(tuple(a_shape), dims, w.new_key(), flat, am | ak), "a_mask", "a")
        with w.tile(["k", "n"], "b_mask", ["BLOCK_K", "BLOCK_N"]):
            if op == "linear":
                bc = Coords(b_shape, [rn2, rk_col], w.new_key())
            elif batched:
                bc = Coords(tuple(b_shape), [pb, rk_col, rn2], w.new_key(),
                            f"{_bofs(batch > 1, k * n)}rk[:, None] * {n} + rn[None, :]", ak | an_)
            else:
                bc = Coords(tuple(b_shape), [rk_col, rn2], w.new_key(), f"rk[:, None] * {n} + rn[None, :]", ak | an_)
            b = _operand(w, b_ref, bc, "b_mask", "b")
        w.emit(f"acc += {_dot(w, a, b)}")
    w.emit(f"out_mask = (rm[:, None] < {m}) & (rn[None, :] < {n})")
    with w.tile(["m", "n"], "out_mask", ["BLOCK_M", "BLOCK_N"]):
        if rows:
            oc = Coords(out_shape, lead2 + [rn2], w.new_key(), f"rm[:, None] * {n} + rn[None, :]", am | an_)
        elif batched:
            oc = Coords(out_shape, [pb, rm2, rn2], w.new_key(), f"{_bofs(batch > 1, m * n)}rm[:, None] * {n} + rn[None, :]",
                        am | an_)
        else:
            oc = Coords(out_shape, [rm2, rn2], w.new_key(), f"rm[:, None] * {n} + rn[None, :]", am | an_)
        _store_result(w, oc, _with_bias(prog, w, anchor, oc, rn2, "acc", split), stored, atomic=split > 1)
    return _dot_kernel(w, name, "matmul", nodes, m, n, k, batch, split=split, blocks=blocks)


def _batch_and_split_ids(w: KernelWriter, axis: int, batched: bool, split: int) -> None:
    """The program ids of a product's grid `axis` after its tile axes: the batch (``pid_b``) when
    `batched`, the k span (``pid_k``) when split, both (batch-major) when both."""
    _reserve(w, "pid_k", "pid_z", "k_lo")
    if split > 1 and batched:
        w.emit(f"pid_z = tl.program_id({axis})")
        w.emit("pid_b = pid_z // SPLIT_K")
        w.emit("pid_k = pid_z % SPLIT_K")
    elif split > 1:
        w.emit(f"pid_k = tl.program_id({axis})")
    elif batched:
        w.emit(f"pid_b = tl.program_id({axis})")


def _k_loop(w: KernelWriter, k: int, split: int) -> str:
    """The header of a product's loop over k in BLOCK_K steps; with split-K, over this program's
    span of whole steps (masks cut the tail)."""
    if split == 1:
        return f"for k0 in range(0, {k}, BLOCK_K):"
    span = f"(({k} + SPLIT_K * BLOCK_K - 1) // (SPLIT_K * BLOCK_K)) * BLOCK_K"
    w.emit(f"k_lo = pid_k * {span}")
    return f"for k0 in range(k_lo, k_lo + {span}, BLOCK_K):"


def _grid_axis(extent: int | None, split: int) -> str:
    """The grid text after a product's tile axes: `extent` programs (a batch; None: no such
    axis), times ``SPLIT_K`` when split."""
    if split > 1:
        return f', {extent} * meta["SPLIT_K"]' if extent not in (None, 1) else ', meta["SPLIT_K"]'
    return f", {extent}" if extent is not None else ""


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
            ac = Coords(a_shape, lead + [rk], w.new_key(), f"{_bofs(batched and batch > 1, k)}rk", ak)
            a = _operand(w, a_ref, ac, "a_mask", "a")
        with w.tile(["k", "n"], "b_mask", ["BLOCK_K", "BLOCK_N"]):
            if k_major:
                bc = Coords(b_shape, [rn2, rk_col], w.new_key())
            else:
                bc = Coords(b_shape, ([pb] if batched else []) + [rk_col, rn2], w.new_key(),
                            f"{_bofs(batched and batch > 1, k * n)}rk[:, None] * {n} + rn[None, :]", ak | an_)
            b = _operand(w, b_ref, bc, "b_mask", "b")
        w.emit(f"acc += {_subscriptable(a)}[:, None].to(tl.float32) * {_subscriptable(b)}.to(tl.float32)")
    w.emit(f"out_mask = rn < {n}")
    with w.tile(["n"], "out_mask", ["BLOCK_N"]):
        rn = Expr("rn", an_)
        dims = [ZERO] * (len(out_shape) - 1) + [rn]
        if batched:
            dims = [pb, ZERO, rn]
        oc = Coords(out_shape, dims, w.new_key(), f"{_bofs(batched and batch > 1, n)}rn", an_)
        total = w.assign("dot", "tl.sum(acc, axis=0)")
        _store_result(w, oc, _with_bias(prog, w, anchor, oc, rn, total, split), stored, atomic=split > 1)
    if split > 1:
        blocks["SPLIT_K"] = split
    axis = _grid_axis(batch if batched and batch > 1 else None, split)
    grid = f'lambda meta: (triton.cdiv({n}, meta["BLOCK_N"]){axis or ","})'
    return Kernel(name, "matmul", list(nodes), w.params, blocks, {"num_warps": 4}, grid, w.body_lines(),
                  w.stored, w.helpers, zero_init=split > 1)


def _subscriptable(v: str) -> str:
    """`v` ready to be subscripted: a name as is, anything else in parentheses."""
    return v if v.isidentifier() else f"({v})"


def _store_result(w: KernelWriter, oc: Coords, res: str, stored: Sequence[int], atomic: bool = False) -> None:
    """The output tile's value is `res` (epilogues read it); store every node the group keeps."""
    w.provided[(w.anchor, oc.key)] = res
    for j in stored:
        w.store(j, oc, atomic=atomic)


def _dot_blocks(m: int, n: int, k: int) -> dict[str, int]:
    """Default tiles of a tl.dot kernel over an m x n output with a k-long reduction.

    Column blocks stay 64 wide for skinny products too: on an H200 a GEMV (m = 1, n = 8192,
    k = 3253) ran 0.59x / 0.53x / 0.36x eager with 64 / 32 / 16 columns a tile, so narrow tiles
    (short row pieces of the streamed operand) lose more than their extra programs gain; such a
    product gets its programs from split-K instead (`split_k`). Rows: up to 128 a tile; in the
    H200 search logs of session 5, BLOCK_M 128 (from 64) was the best launch move of all four
    bench tasks with a large product (a matmul, a linear, a conv1d, a conv_transpose2d)."""
    return {"BLOCK_M": clamp_pow2(m, 16, DOT_BLOCK_M), "BLOCK_N": clamp_pow2(n, 16, 64), "BLOCK_K": dot_block_k(k)}


def _dot_kernel(w: KernelWriter, name: str, kind: str, nodes: Sequence[int], m: int, n: int, k: int,
                grid_z: int | None = None, groups: int = 1, split: int = 1,
                blocks: dict[str, int] | None = None, col_groups: int = 1) -> Kernel:
    """A tiled tl.dot kernel (matmul, or a convolution as implicit GEMM) over an m x n output with
    a k-long reduction; `grid_z`: the size of a third grid axis (a matmul's batch); `groups`: that
    many m-long row ranges share the first grid axis (a convolution's images), `col_groups`: that
    many n-wide column ranges share the second (a grouped convolution's groups); `split` > 1: the
    kernel splits k over ``SPLIT_K`` programs on the third axis, adding into a zeroed output;
    `blocks`: its default tiles when already chosen (`_dot_blocks`)."""
    blocks = dict(blocks or _dot_blocks(m, n, k))
    rows = f'triton.cdiv({m}, meta["BLOCK_M"])' + (f" * {groups}" if groups > 1 else "")
    if split > 1:
        blocks["SPLIT_K"] = split
    cols = f'triton.cdiv({n}, meta["BLOCK_N"])' + (f" * {col_groups}" if col_groups > 1 else "")
    grid = f'lambda meta: ({rows}, {cols}{_grid_axis(grid_z, split)})'
    return Kernel(name, kind, list(nodes), w.params, blocks, {"num_warps": 4, "num_stages": 3}, grid,
                  w.body_lines(), w.stored, w.helpers, zero_init=split > 1)


def _bofs(on: bool, size: int) -> str:
    return f"pid_b * {size} + " if on else ""


def _operand(w: KernelWriter, ref: Any, c: Coords, mask: str, name: str) -> str:
    """A tl.dot operand tile: zero outside the mask even when a fused prologue computed it."""
    v = w.value(ref, c, mask)
    if ref[0] == "node" and ref[1] in w.group:
        v = w.assign(name, f"tl.where({mask}, {v}, 0.0)")
    return v


def _dot(w: KernelWriter, a: str, b: str) -> str:
    """``tl.dot`` of two operand tiles. fp16/bf16 tasks feed tensor cores in their own dtype; fp32
    asks for 3xTF32 products (`DEFAULT_DOT_PRECISION`), because tl.dot's TF32 default (10-bit
    mantissa) misses the fp32 tolerance on long reductions, and IEEE products run on CUDA cores."""
    if w.float_dtype:
        return f"tl.dot({a}.to({w.float_dtype}), {b}.to({w.float_dtype}))"
    return f'tl.dot({a}, {b}, input_precision="{DEFAULT_DOT_PRECISION}")'


# ---- convolution -----------------------------------------------------------------------------------


def conv_kernel(prog: Program, nodes: Sequence[int], stored: Sequence[int], anchor: int, name: str) -> Kernel:
    """A convolution (1-, 2- or 3-D, transposed or not, grouped, dilated) over a tile of output
    positions (batch x spatial) by output channels; padding, stride and dilation become load masks.

    Each output channel reads the input channels of its group. With several input channels a
    group (``C_in / groups > 1``) the tile is an implicit GEMM (`tl.dot`) over that group's input
    channels x the kernel window, the group indexed by the grid (its columns are the group's output
    channels), so a grouped convolution does a group's work only. With one input channel a group
    (depthwise) there is nothing for a `tl.dot` to share: each program sums the window's taps
    over a [positions, channels] tile on CUDA cores (`_conv_taps`)."""
    node = prog.graph.nodes[anchor]
    op, p = node.op, node.params
    transposed = op.startswith("conv_transpose")
    x_ref = node.args[0]
    x_shape = prog.shape(x_ref)
    out_shape = tuple(node.shape)
    spatial = len(x_shape) - 2
    if spatial < 1 or len(out_shape) != spatial + 2:
        raise CompileError(f"node {anchor}: {op} of a rank-{len(x_shape)} input")
    nb, ci = x_shape[0], x_shape[1]
    co = out_shape[1]
    g = conv_groups(p, ci)
    if g < 1 or ci % g or co % g:
        raise CompileError(f"node {anchor}: {op} with groups={g} for {ci} input and {co} output channels")
    cig, cog = ci // g, co // g
    outs = out_shape[2:]
    win = ConvWindow(_per_dim(p["kernel"], spatial), _per_dim(p.get("stride", 1), spatial),
                     _per_dim(p.get("padding", 0), spatial), _per_dim(p.get("dilation", 1), spatial),
                     tuple(x_shape[2:]), transposed)
    w = KernelWriter(prog, set(nodes), anchor)
    wref = w.weight_ref(anchor, "weight")
    if wref is None:
        raise CompileError(f"node {anchor}: {op} without a weight")
    _reserve(w, "pid_p", "pid_c", "pid_b", "pid_g", "rp", "rc", "rj", "rk", "k0", "r0", "acc", "a_mask", "w_mask",
             "out_mask")
    ap, ac = frozenset({"p"}), frozenset({"c"})
    direct = cig == 1 and g > 1
    w.emit("pid_p = tl.program_id(0)")
    w.emit("pid_c = tl.program_id(1)")
    # A tile of positions inside one image: its output rows are then provably contiguous, so
    # Triton coalesces the stores (positions across images cannot be: an image boundary breaks the
    # run, and the output stride between channels is the image's size). Small images share tiles.
    # `span`: the positions rp runs over (one image's, or all images' when they share tiles).
    if numel(outs) >= CONV_TILE_MIN:
        span, images = numel(outs), nb
        if nb > 1:
            w.emit(f"pid_b = pid_p // (({span} + BLOCK_M - 1) // BLOCK_M)  # image")
            w.emit(f"rp = pid_p % (({span} + BLOCK_M - 1) // BLOCK_M) * BLOCK_M + tl.arange(0, BLOCK_M)"
                   "  # output positions in the image")
        else:
            w.emit("rp = pid_p * BLOCK_M + tl.arange(0, BLOCK_M)  # output positions")
        image = Expr("pid_b") if nb > 1 else ZERO
        pos2 = [image, *(_view(e, "[:, None]") for e in w.decompose("rp", outs, ap, "o"))]
        out_flat = f"{_bofs(nb > 1, co * span)}rc[None, :] * {span} + rp[:, None]"
    else:
        w.emit("rp = pid_p * BLOCK_M + tl.arange(0, BLOCK_M)  # output positions (batch, spatial...)")
        pos2 = [_view(e, "[:, None]") for e in w.decompose("rp", (nb, *outs), ap, "o")]
        span, images, out_flat = nb * numel(outs), 1, None
    if direct or g == 1:
        w.emit("rc = pid_c * BLOCK_N + tl.arange(0, BLOCK_N)  # output channels")
        cols, c_mask = co, f"(rc[None, :] < {co})"
    else:  # the grid's second axis runs over groups x tiles of a group's output channels
        w.emit(f"pid_g = pid_c // (({cog} + BLOCK_N - 1) // BLOCK_N)  # group")
        w.emit(f"rj = pid_c % (({cog} + BLOCK_N - 1) // BLOCK_N) * BLOCK_N + tl.arange(0, BLOCK_N)"
               "  # output channels in the group")
        w.emit(f"rc = pid_g * {cog} + rj  # output channels")
        cols, c_mask = cog, f"(rj[None, :] < {cog})"
    w.emit("acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)")
    if direct:
        _conv_taps(w, x_ref, x_shape, wref, pos2, win, span, c_mask, cog)
    else:
        _conv_gemm(w, x_ref, x_shape, wref, pos2, win, span, c_mask, cig, cog, g)
    w.emit(f"out_mask = (rp[:, None] < {span}) & {c_mask}")
    with w.tile(["p", "c"], "out_mask", ["BLOCK_M", "BLOCK_N"]):
        oc = Coords(out_shape, [pos2[0], Expr("rc[None, :]", ac), *pos2[1:]], w.new_key(), out_flat, ap | ac)
        res = "acc"
        bias = w.weight_ref(anchor, "bias")
        if bias is not None:
            bv = w.load(bias, Coords((co,), [Expr("rc[None, :]", ac)], ("bias", oc.key)), name=f"n{anchor}_b")
            res = w.assign("res", f"acc + {bv}")
        _store_result(w, oc, res, stored)
    if direct:
        blocks = {"BLOCK_M": clamp_pow2(span, 16, DOT_BLOCK_M), "BLOCK_N": 16}
        return _dot_kernel(w, name, "conv", nodes, span, co, 1, groups=images, blocks=blocks)
    return _dot_kernel(w, name, "conv", nodes, span, cols, cig * win.size, groups=images,
                       col_groups=1 if g == 1 else g)


@dataclass(frozen=True)
class ConvWindow:
    """A convolution's per-dim kernel, stride, padding and dilation, and its input's spatial dims."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    ins: tuple[int, ...]
    transposed: bool

    @property
    def size(self) -> int:
        return numel(self.kernel)

    def input_dims(self, w: KernelWriter, outs: Sequence[Expr], taps: Sequence[Expr], axes: frozenset[str],
                   conds: list[str]) -> list[Expr]:
        """Input coordinates read by output positions `outs` at kernel offsets `taps` (per spatial
        dim); appends the masks of reads outside the input (padding) or between its strided
        positions (a transposed convolution's)."""
        dims: list[Expr] = []
        for d, (o, kd) in enumerate(zip(outs, taps)):
            s, pad, dil, size = self.stride[d], self.padding[d], self.dilation[d], self.ins[d]
            if self.transposed:  # output o gathers input i where i * s + kd * dil - pad == o
                t = w.assign(f"t{d}", _lin(o, 1, kd, -dil, pad))
                if s > 1:
                    conds += [f"({t} >= 0)", f"({t} % {s} == 0)", f"({t} < {size * s})"]
                    idx = w.assign(f"i{d}", f"{t} // {s}")
                else:
                    conds += [f"({t} >= 0)", f"({t} < {size})"]
                    idx = t
            else:  # inside the input unless padded: (out - 1) * s + (k - 1) * dil < size
                idx = w.assign(f"i{d}", _lin(o, s, kd, dil, -pad))
                if pad:
                    conds += [f"({idx} >= 0)", f"({idx} < {size})"]
            dims.append(Expr(idx, axes))
        return dims


def _conv_gemm(w: KernelWriter, x_ref: Any, x_shape: tuple[int, ...], wref: Any, pos2: list[Expr],
               win: ConvWindow, span: int, c_mask: str, cig: int, cog: int, g: int) -> None:
    """acc += the implicit GEMM of a group: [positions, (input channel of the group, taps)] x
    [(input channel, taps), the group's output channels], in BLOCK_K steps."""
    ap, ac, ak = frozenset({"p"}), frozenset({"c"}), frozenset({"k"})
    kk = win.size
    kr = cig * kk
    cols = "rj" if g > 1 else "rc"
    with w.block(f"for k0 in range(0, {kr}, BLOCK_K):"):
        w.emit("rk = k0 + tl.arange(0, BLOCK_K)  # (input channel of the group, kernel offsets...)")
        red1 = w.decompose("rk", (cig, *win.kernel), ak, "r")
        red2 = [_view(e, "[None, :]") for e in red1]
        conds = [f"(rp[:, None] < {span})", f"(rk[None, :] < {kr})"]
        in_dims = win.input_dims(w, pos2[1:], red2[1:], ap | ak, conds)
        w.emit(f"a_mask = {' & '.join(conds)}")
        with w.tile(["p", "k"], "a_mask", ["BLOCK_M", "BLOCK_K"]):
            chan = red2[0] if g == 1 else Expr(None, ak, lambda: _lin(Expr("pid_g"), cig, red2[0], 1, 0))
            xc = Coords(tuple(x_shape), [pos2[0], chan, *in_dims], w.new_key())
            a = _operand(w, x_ref, xc, "a_mask", "a")
        w.emit(f"w_mask = (rk[:, None] < {kr}) & {c_mask}")
        with w.tile(["k", "c"], "w_mask", ["BLOCK_K", "BLOCK_N"]):
            wshape = w.prog.state_by_key[wref[1]].shape
            if win.transposed:  # weight (C_in, C_out / g, *k): row (group's first channel + ci), column rj
                ci_col = _view(red1[0], "[:, None]")
                first = f"pid_g * {cig * cog * kk}" if g > 1 else None
                terms = [first, f"{paren(ci_col)} * {cog * kk}" if not ci_col.is_zero else None,
                         f"{cols}[None, :] * {kk}" if kk > 1 else f"{cols}[None, :]",
                         f"rk[:, None] % {kk}" if kk > 1 else None]
                flat = " + ".join(t for t in terms if t)
            else:  # weight (C_out, C_in / g, *k): row-major over (C_in / g, *k) is exactly rk
                flat = f"rc[None, :] * {kr} + rk[:, None]"
            wc = Coords(tuple(wshape), [ZERO] * len(wshape), w.new_key(), flat, ak | ac)
            b = w.load(wref, wc, name="wt")
        w.emit(f"acc += {_dot(w, a, b)}")


def _conv_taps(w: KernelWriter, x_ref: Any, x_shape: tuple[int, ...], wref: Any, pos2: list[Expr],
               win: ConvWindow, span: int, c_mask: str, cog: int) -> None:
    """acc += the window's taps, one at a time, for a grouped convolution with one input channel a
    group: output channel c reads input channel c // (C_out / g) only, so each tap is a
    [positions, channels] FMA of the input with that tap's weight per channel."""
    ap, ac = frozenset({"p"}), frozenset({"c"})
    kk = win.size
    with w.block(f"for r0 in range(0, {kk}):"):
        taps = w.decompose("r0", win.kernel, frozenset(), "q")
        conds = [f"(rp[:, None] < {span})", c_mask]
        # the taps are scalars, so a length-1 output dim (a constant coordinate) must be a tensor:
        # else its window masks are Python bools, which the interpreter refuses in a mask
        outs = [o if not o.is_zero else Expr("rp[:, None] * 0", ap) for o in pos2[1:]]
        in_dims = win.input_dims(w, outs, taps, ap, conds)
        w.emit(f"a_mask = {' & '.join(conds)}")
        with w.tile(["p", "c"], "a_mask", ["BLOCK_M", "BLOCK_N"]):
            chan = Expr("rc[None, :]", ac) if cog == 1 else Expr(f"rc[None, :] // {cog}", ac)
            xc = Coords(tuple(x_shape), [pos2[0], chan, *in_dims], w.new_key())
            a = w.value(x_ref, xc, "a_mask")
        with w.tile(["c"], c_mask.replace("[None, :]", ""), ["BLOCK_N"]):
            # weight (C_out, 1, *k), or transposed (C_in, C_out / g, *k) = (g, C_out / g, *k): both
            # row-major over the output channels, then the taps
            wshape = w.prog.state_by_key[wref[1]].shape
            flat = f"rc * {kk} + r0" if kk > 1 else "rc"
            wc = Coords(tuple(wshape), [ZERO] * len(wshape), w.new_key(), flat, ac)
            wv = w.load(wref, wc, name="wv")
        w.emit(f"acc += {a} * {wv}[None, :]")


def _per_dim(v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)) and len(v) != n:
        raise CompileError(f"expected {n} values, got {v!r}")
    return conv_dims(v, n)


def _lin(a: Expr, sa: int, b: Expr, sb: int, c: int) -> str:
    """Text of a*sa + b*sb + c with trivial terms dropped."""
    parts = []
    for e, s in ((a, sa), (b, sb)):
        if e.is_zero:
            continue
        t = paren(e) if s != 1 else str(e)
        if s == 1:
            parts.append(f"+ {t}")
        elif s == -1:
            parts.append(f"- {paren(e)}")
        else:
            parts.append(f"+ {t} * {s}" if s > 0 else f"- {t} * {-s}")
    if c:
        parts.append(f"+ {c}" if c > 0 else f"- {-c}")
    text = " ".join(parts) or "0"
    if text.startswith("+ "):
        text = text[2:]
    elif text.startswith("- "):
        text = "-" + text[2:]
    return text




# ---- einsum and attention --------------------------------------------------------------------------


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
    _reserve(w, "pid_m", "pid_n", "pid_b", "rm", "rn", "rk", "k0", "acc", "a_mask", "b_mask", "out_mask")
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
    exprs |= {ch: _view(e, "[:, None]") for ch, e in zip(ct.rows, w.decompose("rm", [ct.sizes[c] for c in ct.rows], am, "m"))}
    exprs |= {ch: _view(e, "[None, :]") for ch, e in zip(ct.cols, w.decompose("rn", [ct.sizes[c] for c in ct.cols], an_, "n"))}
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
                e = exprs | {ch: _view(x, red_view) for ch, x in zip(ct.red, red1)}
                coords = Coords(shape, _letter_coords(subs, e), w.new_key(), flat, keys if flat else frozenset())
                return _operand(w, ref, coords, f"{side}_mask", side)

        a = operand("a", a_ref, a_shape, ct.a, ["m", "k"], "[None, :]",
                    f"{_bofs(batch > 1, m * k)}rm[:, None] * {k} + rk[None, :]"
                    if ct.a == ct.batch + ct.rows + ct.red else None, am | ak)
        b = operand("b", b_ref, b_shape, ct.b, ["k", "n"], "[:, None]",
                    f"{_bofs(batch > 1, k * n)}rk[:, None] * {n} + rn[None, :]"
                    if ct.b == ct.batch + ct.red + ct.cols else None, ak | an_)
        w.emit(f"acc += {_dot(w, a, b)}")
    w.emit(f"out_mask = (rm[:, None] < {m}) & (rn[None, :] < {n})")
    with w.tile(["m", "n"], "out_mask", ["BLOCK_M", "BLOCK_N"]):
        flat = f"{_bofs(batch > 1, m * n)}rm[:, None] * {n} + rn[None, :]" \
            if ct.out == ct.batch + ct.rows + ct.cols else None
        oc = Coords(out_shape, _letter_coords(ct.out, exprs), w.new_key(), flat, am | an_ if flat else frozenset())
        _store_result(w, oc, "acc", stored)
    return _dot_kernel(w, name, "matmul", nodes, m, n, k, batch if batch > 1 else None)


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
    _reserve(w, "pid_m", "pid_b", "pid_v", "rm", "rn", "re", "rv", "n0", "e0", "n_hi", "acc", "s", "m_i", "l_i",
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
                flat = f"{_bofs(batch > 1, seq_q * e)}rm[:, None] * {e} + re[None, :]"
                qv = _operand(w, q_ref, Coords(q_shape, [*bdims, rm2, Expr("re[None, :]", ae)], w.new_key(), flat,
                                               am | ae), "q_mask", "q")
            with w.tile(["e", "n"], "k_mask", ["BLOCK_K", "BLOCK_N"]):
                # k^T: a [BLOCK_K, BLOCK_N] tile of k (S, E)
                kv = _operand(w, k_ref, Coords(k_shape, [*bdims, Expr("rn[None, :]", an_), Expr("re[:, None]", ae)],
                                               w.new_key()), "k_mask", "kt")
            w.emit(f"s += {_dot(w, qv, kv)}")
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
            flat = f"{_bofs(batch > 1, seq_k * dv)}rn[:, None] * {dv} + rv[None, :]"
            vv = _operand(w, v_ref, Coords(v_shape, [*bdims, Expr("rn[:, None]", an_), rv2], w.new_key(), flat,
                                           an_ | av), "v_mask", "v")
        w.emit(f"acc = acc * alpha[:, None] + {_dot(w, 'p', vv)}")
        w.emit("m_i = m_new")
    w.emit(f"out_mask = (rm[:, None] < {seq_q}) & (rv[None, :] < {dv})")
    with w.tile(["m", "v"], "out_mask", ["BLOCK_M", str(dv_block)]):
        w.emit("out = acc / l_i[:, None]")
        flat = f"{_bofs(batch > 1, seq_q * dv)}rm[:, None] * {dv} + rv[None, :]"
        oc = Coords(out_shape, [*bdims, rm2, rv2], w.new_key(), flat, am | av)
        _store_result(w, oc, "out", stored)
    blocks = {"BLOCK_M": clamp_pow2(seq_q, 16, 64), "BLOCK_N": clamp_pow2(seq_k, 16, 64),
              "BLOCK_K": clamp_pow2(e, 16, 64)}
    grid = f'lambda meta: (triton.cdiv({seq_q}, meta["BLOCK_M"]), {batch}{f", {dv_tiles}" if dv_tiles > 1 else ""})'
    return Kernel(name, "matmul", list(nodes), w.params, blocks, {"num_warps": 4, "num_stages": 2}, grid,
                  w.body_lines(), w.stored, w.helpers)
