"""What a row kernel computes on each chunk of its rows, op by op: running folds (sum, max,
prod...), Welford and online-softmax statistics, arg-extremes, the reduction's result, the
normalisation of a softmax or norm, and scans with a carry between chunks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from policies.compiler.codegen import KernelWriter
from policies.compiler.coords import NEG_INF, POS_INF, Coords, Expr, lit, paren
from policies.compiler.ir import GLOBAL_POOLS, CompileError

# Row ops whose statistic is one running fold of the row's masked chunks (`fold_init`, `fold_step`):
# a sum, a sum of squares, a max or a min. A normalising row's tail reduction is one of them too.
FOLDS = frozenset({"sum", "mean", "norm", "rms_norm", "amax", "amin", *GLOBAL_POOLS, "prod"})

# The masked lanes' value and the combining function of a max / min fold.
_EXTREMES = {"amax": (NEG_INF, "maximum", "max"), "amin": (POS_INF, "minimum", "min")}


def fold_init(op: str, acc: str, f32: str) -> str:
    if op in _EXTREMES:
        return f"{acc} = tl.full([BLOCK_M], {_EXTREMES[op][0]}, {f32})"
    if op == "prod":
        return f"{acc} = tl.full([BLOCK_M], 1.0, {f32})"
    return f"{acc} = tl.zeros([BLOCK_M], {f32})"


def fold_step(op: str, acc: str, xv: str) -> str:
    """Fold the current masked chunk's values `xv` into the running `acc`."""
    if op in _EXTREMES:
        init, fn, red = _EXTREMES[op]
        return f"{acc} = tl.{fn}({acc}, tl.{red}(tl.where(mask, {xv}, {init}), axis=1))"
    if op == "prod":
        return f"{acc} = {acc} * tl.reduce(tl.where(mask, {xv}, 1.0), 1, _mul_fn)"
    term = f"{xv} * {xv}" if op in ("norm", "rms_norm") else xv
    return f"{acc} += tl.sum(tl.where(mask, {term}, 0.0), axis=1)"


def row_stats(w: KernelWriter, op: str, p: dict[str, Any], loop: str, x_coords: Callable[[], Coords],
              x_ref: Any, r: int, f32: str) -> dict[str, str]:
    """First pass over each row: running statistics the result or the normalisation needs."""
    if op in FOLDS:
        if op == "prod":
            w.helpers.add("_mul_fn")
        w.emit(fold_init(op, "acc", f32))
        with w.block(loop):
            w.emit(fold_step(op, "acc", w.value(x_ref, x_coords(), "mask")))
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
            # the chunk's element count: the same for every row (a scalar, not one more reduction);
            # none for a chunk past the row's end (a split norm's last span)
            w.emit(f"n_c = tl.maximum(tl.minimum({r} - r0, BLOCK_R), 0).to(tl.float32)")
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


def reduce_result(w: KernelWriter, op: str, p: dict[str, Any], stats: dict[str, str], r: int) -> str:
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


def norm_prelude(w: KernelWriter, op: str, p: dict[str, Any], r: int) -> None:
    eps = lit(p.get("eps", 1e-6 if op == "rms_norm" else 1e-5))
    if op == "rms_norm":
        w.emit(f"rstd = 1.0 / tl.sqrt(acc / {r} + {eps})")
        w.names.add("rstd")
    elif op in ("layer_norm", "group_norm", "instance_norm"):
        w.emit(f"rstd = 1.0 / tl.sqrt(m2 / {r} + {eps})")
        w.names.add("rstd")


def normalize(w: KernelWriter, op: str, p: dict[str, Any], anchor: int, stats: dict[str, str], xv: str,
              weight_coords: Callable[[list[Expr], list[Expr]], list[Expr]] | None, kept2: list[Expr],
              c: Coords) -> str:
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
    wc = weight_coords(kept2, red2) if weight_coords else red2
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


def row_scan(w: KernelWriter, op: str, p: dict[str, Any], loop: str, chunk_lanes: Callable[[], None],
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
