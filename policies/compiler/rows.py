"""The row template: reductions, softmax, norms and scans over M rows of R elements (`RowPlan`),
chunk by chunk, with the row tiling (`_row_blocks`) and the split of a long fold over programs
(`split_rows`). What each op computes on the chunks is in `row_ops`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from policies.compiler.codegen import KernelWriter
from policies.compiler.coords import NEG_INF, ZERO, Coords, Expr, paren
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
from policies.compiler.row_ops import (
    fold_init,
    fold_step,
    norm_prelude,
    normalize,
    reduce_result,
    row_scan,
    row_stats,
)
from policies.compiler.template import (
    PROGRAMS_MIN,
    Kernel,
    clamp_pow2,
    fill_block,
    next_pow2,
    reserve,
    store_result,
    tile_view,
)

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
# A softmax or norm over contiguous rows of up to ROW_STASH_MAX elements takes a row in one chunk
# and keeps it in registers between its statistics and its output (`_stash_row`): the chunked
# form reads the row twice and recomputes what is fused before the op (a batch norm, tanh and
# max pool before KernelBench level 2's group norm 11) in both passes. Such a tile of
# STASH_WIDE elements or more gets 16 warps (16 of them a thread for 8192).
ROW_STASH_MAX = 16384
STASH_WIDE = 8192


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


# The variable names the row template writes itself (`reserve`: no generated value takes them).
_ROW_NAMES = ("pid", "rm", "row_mask", "r0", "rr", "mask", "acc", "run_max", "run_sum", "lse", "xm", "new_max",
              "safe_max", "cnt", "mean", "m2", "n_c", "mean_c", "dev", "n_new", "delta", "frac", "rstd", "carry",
              "xz", "chunk_max", "tail", "pid_r", "r_lo", "done", "total", "ws_ptr", "cnt_ptr", "r_out", "r_in",
              "mask_in", "best", "best_i", "chunk_best", "chunk_i", "take", "ex", "sp", "part", "p_cnt", "p_mean",
              "p_m2", "p_max", "p_sum")
# What a split norm's first kernel stores per (row, span) for the second to merge (`_merge_partials`):
# the variables `row_ops.row_stats` folds for the op.
_PARTIALS = {"layer_norm": ("cnt", "mean", "m2"), "group_norm": ("cnt", "mean", "m2"),
             "instance_norm": ("cnt", "mean", "m2"), "rms_norm": ("acc",), "softmax": ("run_max", "run_sum"),
             "log_softmax": ("run_max", "run_sum")}


@dataclass
class _RowHead:
    """A row kernel's program header (written by `_row_head`) and its coordinate helpers."""

    kept1: list[Expr]                     # the rows' kept coordinates over [BLOCK_M]
    kept2: list[Expr]                     # the same in the [BLOCK_M, BLOCK_R] tile
    chunk_lanes: Callable[[], None]       # rr and mask of the current chunk (inside a chunk loop)
    coords_at: Callable[[str], Coords]    # input coordinates at reduced positions (a [BLOCK_R] variable)
    x_coords: Callable[[], Coords]        # chunk_lanes, then the input coordinates at rr
    loop: str                             # the chunk loop's header: the row, or with SPLIT_R this program's span


def _row_head(w: KernelWriter, plan: RowPlan, m: int, r: int, x_shape: Sequence[int], split: int) -> _RowHead:
    """Write the program ids, rows and row mask of a row kernel over m rows of r elements (with
    SPLIT_R programs a row tile when `split` > 1, each over its span of whole chunks)."""
    w.emit("pid = tl.program_id(0)")
    if split > 1:
        w.emit("pid_r = tl.program_id(1)")
    w.emit("rm = pid * BLOCK_M + tl.arange(0, BLOCK_M)")
    w.emit(f"row_mask = rm < {m}")
    am, ar = frozenset({"m"}), frozenset({"r"})
    kept1 = w.decompose("rm", plan.kept, am, "k")
    kept2 = [tile_view(e, "[:, None]") for e in kept1]

    def chunk_lanes() -> None:
        w.emit("rr = r0 + tl.arange(0, BLOCK_R)")
        w.emit(f"mask = row_mask[:, None] & (rr[None, :] < {r})")

    def coords_at(pos: str) -> Coords:
        red1 = w.decompose(pos, plan.red, ar, "q")
        red2 = [tile_view(e, "[None, :]") for e in red1]
        flat = f"rm[:, None] * {r} + {pos}[None, :]" if plan.contiguous_rows else None
        dims = plan.coords(kept2, red2)
        c = Coords(tuple(x_shape), dims, w.new_key(), flat, am | ar if flat else frozenset())
        c.red2 = red2  # type: ignore[attr-defined]
        return c

    def x_coords() -> Coords:
        chunk_lanes()
        return coords_at("rr")

    loop = f"for r0 in range(0, {r}, BLOCK_R):"
    if split > 1:
        # this program's span of whole chunks (masks cut the tail)
        span = f"(({r} + SPLIT_R * BLOCK_R - 1) // (SPLIT_R * BLOCK_R)) * BLOCK_R"
        w.emit(f"r_lo = pid_r * {span}")
        loop = f"for r0 in range(r_lo, r_lo + {span}, BLOCK_R):"
    return _RowHead(kept1, kept2, chunk_lanes, coords_at, x_coords, loop)


def row_kernel(prog: Program, nodes: Sequence[int], stored: Sequence[int], anchor: int, name: str,
               block_r: int | None = None) -> Kernel:
    """The row kernel of `anchor` (a reduction, softmax, norm or scan) with the pointwise `nodes`
    around it. `block_r`: the chunk a launch config asks for (None: `_row_blocks`'); a softmax or
    norm whose row fits one chunk keeps the row in registers (`_stash_row`) and has no BLOCK_R;
    one over few long rows splits them over programs in two kernels (`_partials_kernel`)."""
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
    splittable = op in SPLIT_FOLDS or (op in NORMALIZE and tail is None)
    block_m, default_r, split = _row_blocks(plan, m, r, splittable, op in NORMALIZE)
    block_r = block_r or default_r
    stash = op in NORMALIZE and split == 1 and block_r >= r
    reserve(w, *_ROW_NAMES)
    head = _row_head(w, plan, m, r, x_shape, split)
    kept1, kept2, loop, x_coords = head.kept1, head.kept2, head.loop, head.x_coords
    am = frozenset({"m"})
    f32 = "dtype=tl.float32"
    with w.tile(["m", "r"], "mask", ["BLOCK_M", str(block_r) if stash else "BLOCK_R"]):
        if stash:
            _stash_row(w, op, p, anchor, block_r, r, head.coords_at, x_ref, plan, kept2, stored, tail, f32)
        elif op in REDUCE:
            stats = row_stats(w, op, p, loop, x_coords, x_ref, r, f32)
            if split == 1:
                res = reduce_result(w, op, p, stats, r)
        elif op in NORMALIZE:
            if split > 1:
                stats = _merge_partials(w, op, name)
            else:
                stats = row_stats(w, op, p, loop, x_coords, x_ref, r, f32)
            norm_prelude(w, op, p, r)
            if tail is not None:
                w.emit(fold_init(tail_op, "tail", f32))
            with w.block(loop):
                c = x_coords()
                xv = w.value(x_ref, c, "mask")
                # a variable, not an expression: epilogue formulas substitute it unparenthesised
                y = w.assign("y", normalize(w, op, p, anchor, stats, xv, plan.weight_coords, kept2, c))
                w.provided[(anchor, c.key)] = y
                for j in stored:
                    if j != tail:
                        w.store(j, c)
                if tail is not None:
                    w.emit(fold_step(tail_op, "tail", w.value(prog.graph.nodes[tail].args[0], c, "mask")))
        else:
            row_scan(w, op, p, loop, head.chunk_lanes, head.coords_at, x_ref, anchor, stored, f32, r)
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
                store_result(w, oc, res, stored)
            else:
                w.provided[(tail, oc.key)] = reduce_result(w, tail_op, {}, {"acc": "tail"}, r)
                w.store(tail, oc)
    warps = 8 if block_m * block_r >= 4096 and split == 1 else 4
    if stash and block_m * block_r >= STASH_WIDE:
        warps = 16
    if plan.contiguous_rows and block_r <= SHORT_ROW:
        warps = 1
    # the two kernels of a split norm share these dicts: a config's SPLIT_R or block sizes set both
    blocks = ({"BLOCK_M": block_m} | ({} if stash else {"BLOCK_R": block_r})
              | ({"SPLIT_R": split} if split > 1 else {}))
    options = {"num_warps": warps}
    axis = ', meta["SPLIT_R"]' if split > 1 else ","  # a tuple either way
    grid = f'lambda meta: (triton.cdiv({m}, meta["BLOCK_M"]){axis})'
    scratch: dict[str, str] = {}
    pre = None
    if op in NORMALIZE and split > 1:
        width = len(_PARTIALS[op])
        scratch = {f"{name}_ws": f"torch.empty(({m * width} * {{SPLIT_R}},), device={{dev}}, dtype=torch.float32)"}
        pre = _partials_kernel(prog, nodes, anchor, name, plan, m, r, blocks, options, grid)
    elif split > 1:
        scratch = {f"{name}_ws": f"torch.zeros(({m},), device={{dev}}, dtype=torch.float32)",
                   f"{name}_cnt": f"torch.zeros(({m},), device={{dev}}, dtype=torch.int32)"}
    helpers = set(w.helpers) | (pre.helpers if pre else set())
    return Kernel(name, "row", list(nodes), w.params, blocks, options, grid, w.body_lines(), w.stored, helpers,
                  scratch=scratch, pre=pre)


def _partials_kernel(prog: Program, nodes: Sequence[int], anchor: int, name: str, plan: RowPlan, m: int, r: int,
                     blocks: dict[str, int], options: dict[str, int], grid: str) -> Kernel:
    """The first of a split norm's two kernels: each program folds its span of its rows into
    running statistics (computing what the group fuses before the norm) and stores them, the
    `_PARTIALS` of its op, at ``ws[(row * SPLIT_R + span) * len(partials) + i]``; the second kernel
    (`row_kernel`) merges a row's partials (`_merge_partials`) and normalises its own span. A
    LayerNorm of KernelBench level 1 (16 rows of 4M elements) ran one program a row."""
    op, p = prog.graph.nodes[anchor].op, prog.graph.nodes[anchor].params
    x_ref = prog.graph.nodes[anchor].args[0]
    w = KernelWriter(prog, set(nodes), anchor)
    reserve(w, *_ROW_NAMES)
    head = _row_head(w, plan, m, r, prog.shape(x_ref), 2)
    with w.tile(["m", "r"], "mask", ["BLOCK_M", "BLOCK_R"]):
        row_stats(w, op, p, head.loop, head.x_coords, x_ref, r, "dtype=tl.float32")
    partials = _PARTIALS[op]
    w.params.append(("ws_ptr", f"{name}_ws"))
    w.emit(f"part = ws_ptr + (rm * SPLIT_R + pid_r) * {len(partials)}")
    for i, var in enumerate(partials):
        w.emit(f"tl.store(part + {i}, {var}, mask=row_mask)")
    return Kernel(f"{name}_stats", "row", list(nodes), w.params, blocks, options, grid, w.body_lines(), [],
                  w.helpers, comment=f"statistics of {op} (node {anchor}) over each program's span of its rows")


def _merge_partials(w: KernelWriter, op: str, name: str) -> dict[str, str]:
    """A split norm's row statistics from the SPLIT_R partials `_partials_kernel` stored for each
    row (Chan's merge of counts, means and squared deviations; maxima and rescaled sums)."""
    partials = _PARTIALS[op]
    w.params.append(("ws_ptr", f"{name}_ws"))
    w.emit("sp = tl.arange(0, SPLIT_R)")
    w.emit(f"part = ws_ptr + (rm[:, None] * SPLIT_R + sp[None, :]) * {len(partials)}")
    if partials == ("cnt", "mean", "m2"):
        w.emit("p_cnt = tl.load(part, mask=row_mask[:, None], other=0.0)")
        w.emit("p_mean = tl.load(part + 1, mask=row_mask[:, None], other=0.0)")
        w.emit("p_m2 = tl.load(part + 2, mask=row_mask[:, None], other=0.0)")
        w.emit("cnt = tl.sum(p_cnt, axis=1)")
        w.emit("mean = tl.sum(p_cnt * p_mean, axis=1) / tl.maximum(cnt, 1.0)")
        w.emit("delta = p_mean - mean[:, None]")
        w.emit("m2 = tl.sum(p_m2 + p_cnt * delta * delta, axis=1)")
        return {"mean": "mean", "m2": "m2"}
    if partials == ("acc",):
        w.emit("acc = tl.sum(tl.load(part, mask=row_mask[:, None], other=0.0), axis=1)")
        return {"acc": "acc"}
    w.emit(f"p_max = tl.load(part, mask=row_mask[:, None], other={NEG_INF})")
    w.emit("p_sum = tl.load(part + 1, mask=row_mask[:, None], other=0.0)")
    w.emit("run_max = tl.max(p_max, axis=1)")
    w.emit("# a row with no finite value yet keeps an offset of 0 (no inf - inf)")
    w.emit(f"safe_max = tl.where(run_max == {NEG_INF}, 0.0, run_max)")
    w.emit("run_sum = tl.sum(p_sum * tl.exp(p_max - safe_max[:, None]), axis=1)")
    w.emit("lse = run_max + tl.log(run_sum)")
    return {"lse": "lse", "max": "run_max", "sum": "run_sum"}


def _stash_row(w: KernelWriter, op: str, p: dict[str, Any], anchor: int, width: int, r: int,
               coords_at: Callable[[str], Coords], x_ref: Any, plan: RowPlan, kept2: list[Expr],
               stored: Sequence[int], tail: int | None, f32: str) -> None:
    """A softmax or norm over rows that fit one tile of `width` lanes: each row is read (and what
    is fused before the op computed) once, its statistics are reductions of those registers and
    its output is computed from them, where the chunked form reads and recomputes it twice."""
    w.emit(f"rr = tl.arange(0, {width})")
    w.emit(f"mask = row_mask[:, None] & (rr[None, :] < {r})")
    c = coords_at("rr")
    xv = w.value(x_ref, c, "mask")
    if op in ("softmax", "log_softmax"):
        w.emit(f"xm = tl.where(mask, {xv}, {NEG_INF})")
        w.emit("run_max = tl.max(xm, axis=1)")
        w.emit("# a row with no finite value keeps an offset of 0 (no inf - inf)")
        w.emit(f"safe_max = tl.where(run_max == {NEG_INF}, 0.0, run_max)")
        w.emit("ex = tl.exp(xm - safe_max[:, None])")
        w.emit("run_sum = tl.sum(ex, axis=1)")
        y = "ex / run_sum[:, None]" if op == "softmax" else f"{xv} - (safe_max + tl.log(run_sum))[:, None]"
    else:
        if op == "rms_norm":
            w.emit(f"acc = tl.sum(tl.where(mask, {xv} * {xv}, 0.0), axis=1)")
        else:   # mean, then the squared deviations from it: exact, and the row is at hand
            w.emit(f"mean = tl.sum(tl.where(mask, {xv}, 0.0), axis=1) / {r}")
            w.emit(f"dev = tl.where(mask, {xv} - mean[:, None], 0.0)")
            w.emit("m2 = tl.sum(dev * dev, axis=1)")
        norm_prelude(w, op, p, r)
        y = normalize(w, op, p, anchor, {}, xv, plan.weight_coords, kept2, c)
    y = w.assign("y", y)
    w.provided[(anchor, c.key)] = y
    for j in stored:
        if j != tail:
            w.store(j, c)
    if tail is not None:
        tail_op = w.prog.graph.nodes[tail].op
        w.emit(fold_init(tail_op, "tail", f32))
        w.emit(fold_step(tail_op, "tail", w.value(w.prog.graph.nodes[tail].args[0], c, "mask")))


def _row_blocks(plan: RowPlan, m: int, r: int, splittable: bool, stashable: bool = False) -> tuple[int, int, int]:
    """Default (BLOCK_M, BLOCK_R, SPLIT_R) of a row kernel over m rows of r elements; `stashable`
    (a softmax or norm): a contiguous row of up to `ROW_STASH_MAX` is one chunk."""
    if plan.contiguous_rows:
        # Chunks of up to 4096: in H200 search runs a layer_norm over rows of 8192 ran 1.24x /
        # 1.34x eager with 1024 / 2048 a chunk; with its amax as a tail, 2.40x with 2048 and 2.64x
        # with 4096, and a logsumexp over rows of 8192 6.46x / 7.28x (session 6, run 9).
        # Short rows: tiles of 512 elements (below, one warp each). A softmax or norm takes a row
        # of up to ROW_STASH_MAX whole (`_stash_row`).
        block_r = clamp_pow2(r, 1, ROW_CHUNK_MAX)
        if stashable and next_pow2(r) <= ROW_STASH_MAX:
            block_r = next_pow2(r)
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
        store_result(w, oc, reduce_result(w, op, p, {"acc": "total"}, r), stored)
