"""Handlers of shape and layout: views and copies (transpose, permute, reshape / view, flatten,
squeeze / unsqueeze, expand, repeat, flip, clone), concatenation and split / chunk, indexing and
slicing (select, narrow, strided slices), gather, and the calls that only read shapes or change
nothing (x.size(), x.to(x.dtype), dropout in eval). `FUNCTIONS` maps torch function and tensor
method names to them; `METHODS` holds those that are only tensor methods."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from policies.compiler.trace_mapper import _Mapper, _Multi, _Unsupported


def _h_getitem(m: _Mapper, n: Any) -> Any:
    src = m.env.get(n.args[0])
    if isinstance(src, _Multi) and n.args[1] == 1 and src.indices is not None:
        return src.indices
    if isinstance(src, _Multi) and (n.args[1] == 0 or n.args[1] == "values"):
        return src.values
    if isinstance(src, _Parts):
        return src.part(m, n.args[1])
    if m.is_tensor(n.args[0]):
        return _h_index(m, n)
    raise _Unsupported("indexing or slicing has no catalog op (only the values of cummax / max / min: [0] or "
                       ".values)")


def _h_transpose(m: _Mapper, n: Any) -> Any:
    x = n.args[0]
    r = m.rank(x)
    if n.target == "t" or getattr(n.target, "__name__", "") == "t":
        d0, d1 = 0, 1
    else:
        d0, d1 = int(m.arg(n, 1, "dim0")) % r, int(m.arg(n, 2, "dim1")) % r
    if d0 == d1:
        return m.ref(x)
    return m.add("transpose", {"dims": (min(d0, d1), max(d0, d1))}, [x], m.shape_of(n))


def _h_permute(m: _Mapper, n: Any) -> Any:
    x = n.args[0]
    r = m.rank(x)
    perm = n.args[1:] if len(n.args) > 2 else m.arg(n, 1, "dims")
    if len(n.args) == 2 and isinstance(n.args[1], (tuple, list)):
        perm = n.args[1]
    perm = tuple(int(p) % r for p in perm)
    if sorted(perm) != list(range(r)):
        raise _Unsupported(f"permute {perm} is not a permutation")
    if perm == tuple(range(r)):
        return m.ref(x)
    return m.add("permute", {"perm": perm}, [x], m.shape_of(n))


def _merge_range(src: tuple[int, ...], dst: tuple[int, ...]) -> tuple[int, int] | None:
    """(start, end) when dst is src with dims start..end merged into one."""
    if len(dst) >= len(src):
        return None
    k = len(src) - len(dst) + 1
    for start in range(len(dst)):
        end = start + k - 1
        if src[:start] == dst[:start] and src[end + 1:] == dst[start + 1:] and math.prod(src[start:end + 1]) == dst[start]:
            return start, end
    return None


def _h_reshape(m: _Mapper, n: Any) -> Any:
    x = n.args[0]
    src, dst = m.arg_shape(x), m.shape_of(n)
    if src == dst:
        return m.ref(x)
    rng = _merge_range(src, dst)
    if rng is None:  # a split, unit dims, or any regrouping: the general row-major reshape
        if math.prod(src) != math.prod(dst):
            raise _Unsupported(f"reshape {src} -> {dst} changes the number of elements")
        return m.add("reshape", {"shape": tuple(dst)}, [x], dst)
    return m.add("flatten", {"start": rng[0], "end": rng[1]}, [x], dst)


def _h_identity(m: _Mapper, n: Any) -> Any:
    return m.ref(n.args[0])


def _h_cat(m: _Mapper, n: Any) -> Any:
    parts = list(n.args[0])
    dim = m.arg(n, 1, "dim", 0)
    if len(parts) < 2:
        raise _Unsupported("cat of fewer than two tensors")
    out = parts[0]
    for i, p in enumerate(parts[1:], 1):
        shapes = [m.arg_shape(q) for q in parts[: i + 1]]
        r = len(shapes[0])
        ax = int(dim) % r
        shape = list(shapes[0])
        shape[ax] = sum(s[ax] for s in shapes)
        out = m.add("concat", {"dim": r - ax}, [out, p], tuple(shape))
    return out


def _h_gather(m: _Mapper, n: Any) -> Any:
    x, dim, idx = n.args[0], m.arg(n, 1, "dim"), m.arg(n, 2, "index")
    if int(dim) % m.rank(x) != m.rank(x) - 1:
        raise _Unsupported("gather over a dim other than the last")
    return m.add("gather", {}, [x, idx], m.shape_of(n))


def _h_getattr(m: _Mapper, n: Any) -> Any:
    src = m.env.get(n.args[0])
    if isinstance(src, _Multi) and n.args[1] == "values":
        return src.values
    if isinstance(src, _Multi) and n.args[1] == "indices" and src.indices is not None:
        return src.indices
    if n.args[1] in ("T", "mT") and m.is_tensor(n.args[0]):  # x.T (2-D), x.mT: swap the last two dims
        r = m.rank(n.args[0])
        if r < 2 or (n.args[1] == "T" and r != 2):
            raise _Unsupported(f".{n.args[1]} of a rank-{r} tensor")
        return m.add("transpose", {"dims": (r - 2, r - 1)}, [n.args[0]], m.shape_of(n))
    raise _Unsupported(f"attribute .{n.args[1]} of a tensor")


def _h_meta(m: _Mapper, n: Any) -> Any:
    return ("meta", 0)  # x.size(), x.shape, x.dim(): shape logic, no tensor


def _h_flatten(m: _Mapper, n: Any) -> Any:
    x = n.args[0]
    r = m.rank(x)
    start = int(m.arg(n, 1, "start_dim", 0)) % r
    end = int(m.arg(n, 2, "end_dim", -1)) % r
    if start == end:
        return m.ref(x)
    return m.add("flatten", {"start": start, "end": end}, [x], m.shape_of(n))


class _Parts:
    """The pieces of ``split`` / ``chunk`` along one axis: each becomes a narrow node when used."""

    def __init__(self, x: Any, axis: int, bounds: list[tuple[int, int]]):
        self.x, self.axis, self.bounds = x, axis, bounds
        self.made: dict[int, Any] = {}

    def part(self, m: _Mapper, i: Any) -> Any:
        if not isinstance(i, int) or not -len(self.bounds) <= i < len(self.bounds):
            raise _Unsupported(f"piece {i!r} of a split of {len(self.bounds)}")
        i %= len(self.bounds)
        if i not in self.made:
            start, stop = self.bounds[i]
            self.made[i] = _narrow(m, self.x, self.axis, start, stop - start)
        return self.made[i]


def _axis(m: _Mapper, x: Any, dim: Any, extra: int = 0) -> int:
    """`dim` of a tensor of `x`'s rank (+ `extra`) as an axis from the left."""
    r = m.rank(x) + extra
    if not isinstance(dim, int) or isinstance(dim, bool) or not -r <= dim < r:
        raise _Unsupported(f"dim {dim!r} for rank {r}")
    return dim % r


def _narrow(m: _Mapper, x: Any, axis: int, start: int, length: int) -> Any:
    shape = list(m.arg_shape(x))
    if length < 1 or start < 0 or start + length > shape[axis]:
        raise _Unsupported(f"an empty or out-of-range slice [{start}:{start + length}] of a dim of {shape[axis]}")
    if (start, length) == (0, shape[axis]):
        return m.ref(x)
    r = len(shape)
    drop = shape[axis] - length
    shape[axis] = length
    return m.add("narrow", {"dim": r - axis, "start": start, "drop": drop}, [x], tuple(shape))


def _select(m: _Mapper, x: Any, axis: int, index: int) -> Any:
    shape = list(m.arg_shape(x))
    size, r = shape[axis], len(shape)
    if not -size <= index < size or r < 2:
        raise _Unsupported(f"index {index} of a dim of {size} (rank {r})")
    del shape[axis]
    return m.add("select", {"dim": r - axis, "index": index % size}, [x], tuple(shape))


def _strided(m: _Mapper, x: Any, axis: int, start: int, stop: int, step: int) -> Any:
    """``x[..., start:stop:step]`` (step > 1, Swin's ``x[:, 0::2, 1::2]``): the slice from `start`,
    padded to a whole number of steps (pad), split into (count, step) (reshape), index 0 of each
    step (select)."""
    if step < 1:
        raise _Unsupported(f"a slice with step {step}")
    count = len(range(start, stop, step))
    if count < 1:
        raise _Unsupported(f"an empty slice [{start}:{stop}:{step}]")
    cur = _narrow(m, x, axis, start, min(count * step, m.arg_shape(x)[axis] - start))
    shape = list(m.arg_shape(cur))
    r = len(shape)
    if shape[axis] < count * step:   # the last step is short: pad it (the padding is never read)
        extra = count * step - shape[axis]
        shape[axis] = count * step
        cur = m.add("pad", {"pads": (0, 0) * (r - 1 - axis) + (0, extra), "value": 0.0}, [cur], tuple(shape))
    split = (*shape[:axis], count, step, *shape[axis + 1:])
    cur = m.add("reshape", {"shape": split}, [cur], split)
    return _select(m, cur, axis + 1, 0)


def _unsqueeze(m: _Mapper, x: Any, axis: int) -> Any:
    shape = list(m.arg_shape(x))
    shape.insert(axis, 1)
    return m.add("unsqueeze", {"dim": len(shape) - axis}, [x], tuple(shape))


def _h_index(m: _Mapper, n: Any) -> Any:
    """Basic indexing ``x[i, a:b, None, ...]``: select, narrow and unsqueeze nodes (a step > 1: `_strided`)."""
    x, idx = n.args[0], n.args[1]
    items = list(idx) if isinstance(idx, tuple) else [idx]
    used = sum(1 for it in items if it is not None and it is not Ellipsis)
    if sum(1 for it in items if it is Ellipsis) > 1 or used > m.rank(x):
        raise _Unsupported(f"index {idx!r} of a rank-{m.rank(x)} tensor")
    cur, axis = x, 0
    for it in items:
        if it is None:
            cur = _unsqueeze(m, cur, axis)
            axis += 1
        elif it is Ellipsis:
            axis += m.rank(x) - used
        elif isinstance(it, int) and not isinstance(it, bool):
            cur = _select(m, cur, axis, it)
        elif isinstance(it, slice) and all(v is None or (isinstance(v, int) and not isinstance(v, bool))
                                           for v in (it.start, it.stop, it.step)):
            start, stop, step = it.indices(m.arg_shape(cur)[axis])
            cur = _narrow(m, cur, axis, start, stop - start) if step == 1 else _strided(m, cur, axis, start, stop, step)
            axis += 1
        else:
            raise _Unsupported(f"indexing with {type(it).__name__} (only ints, slices, None and ...)")
    return m.ref(cur)


def _h_unsqueeze(m: _Mapper, n: Any) -> Any:
    x = n.args[0]
    return _unsqueeze(m, x, _axis(m, x, m.arg(n, 1, "dim"), extra=1))


def _h_squeeze(m: _Mapper, n: Any) -> Any:
    x = n.args[0]
    shape = m.arg_shape(x)
    dim = n.args[1:] if len(n.args) > 2 else m.arg(n, 1, "dim")
    if dim is None:
        axes = [i for i, d in enumerate(shape) if d == 1]
    else:
        axes = [_axis(m, x, d) for d in (dim if isinstance(dim, (tuple, list)) else (dim,))]
        axes = [a for a in axes if shape[a] == 1]  # squeezing a dim that is not 1 is a no-op
    cur, cur_shape = x, list(shape)
    for a in sorted(set(axes), reverse=True):
        if len(cur_shape) < 2:
            raise _Unsupported("squeeze to a 0-d tensor")
        r = len(cur_shape)
        del cur_shape[a]
        cur = m.add("squeeze", {"dim": r - a}, [cur], tuple(cur_shape))
    return m.ref(cur)


def _h_clone(m: _Mapper, n: Any) -> Any:
    if n.kwargs.get("memory_format") not in (None,) and "contiguous" not in str(n.kwargs.get("memory_format")):
        raise _Unsupported("clone with a memory format")
    return m.unary("clone", n)


def _h_flip(m: _Mapper, n: Any) -> Any:
    x = n.args[0]
    dims = n.args[1:] if len(n.args) > 2 else m.arg(n, 1, "dims")
    dims = dims if isinstance(dims, (tuple, list)) else (dims,)
    axes = tuple(sorted({_axis(m, x, d) for d in dims if m.arg_shape(x)[_axis(m, x, d)] > 1}))
    if not axes:
        return m.unary("clone", n)
    return m.unary("flip", n, {"dims": axes})


def _h_narrow(m: _Mapper, n: Any) -> Any:
    x = n.args[0]
    start, length = m.arg(n, 2, "start"), m.arg(n, 3, "length")
    if not isinstance(start, int) or not isinstance(length, int):
        raise _Unsupported("narrow with a tensor start or length")
    axis = _axis(m, x, m.arg(n, 1, "dim"))
    return _narrow(m, x, axis, start % m.arg_shape(x)[axis] if start < 0 else start, length)


def _h_select(m: _Mapper, n: Any) -> Any:
    x = n.args[0]
    index = m.arg(n, 2, "index")
    if not isinstance(index, int):
        raise _Unsupported("select with a tensor index")
    return _select(m, x, _axis(m, x, m.arg(n, 1, "dim")), index)


def _h_expand(m: _Mapper, n: Any) -> Any:
    x = n.args[0]
    if tuple(m.shape_of(n)) == tuple(m.arg_shape(x)):
        return m.ref(x)
    return m.add("expand", {}, [x], m.shape_of(n))


def _h_repeat(m: _Mapper, n: Any) -> Any:
    x = n.args[0]
    if tuple(m.shape_of(n)) == tuple(m.arg_shape(x)):
        return m.unary("clone", n)
    return m.add("repeat", {}, [x], m.shape_of(n))


def _h_split(kind: str) -> Callable[[_Mapper, Any], Any]:
    def handler(m: _Mapper, n: Any) -> Any:
        x = n.args[0]
        arg = m.arg(n, 1, "split_size_or_sections" if kind == "split" else "chunks")
        axis = _axis(m, x, m.arg(n, 2, "dim", 0))
        size = m.arg_shape(x)[axis]
        if kind == "chunk":
            if not isinstance(arg, int) or arg < 1:
                raise _Unsupported(f"chunk into {arg!r}")
            arg = -(-size // arg)
        if isinstance(arg, int):
            lengths = [min(arg, size - s) for s in range(0, size, arg)]
        elif isinstance(arg, (tuple, list)) and all(isinstance(v, int) for v in arg) and sum(arg) == size:
            lengths = list(arg)
        else:
            raise _Unsupported(f"{kind} by {arg!r}")
        starts = [sum(lengths[:i]) for i in range(len(lengths))]
        return _Parts(x, axis, [(s, s + length) for s, length in zip(starts, lengths)])

    return handler


def _h_to(m: _Mapper, n: Any) -> Any:
    """x.to(x.device), x.to(x.dtype), x.type_as(y) of the same dtype: x itself (tracing sees one
    device); a dtype conversion has no catalog op."""
    x = n.args[0]
    src, res = x.meta.get("tensor_meta") if hasattr(x, "meta") else None, n.meta.get("tensor_meta")
    if hasattr(src, "dtype") and hasattr(res, "dtype") and src.dtype == res.dtype and src.shape == res.shape:
        return m.ref(x)
    raise _Unsupported("a dtype conversion (.to / .type_as to another dtype) has no catalog op")


FUNCTIONS: dict[str, Callable[[_Mapper, Any], Any]] = {
    "getitem": _h_getitem, "getattr": _h_getattr,
    "transpose": _h_transpose, "t": _h_transpose, "permute": _h_permute,
    "reshape": _h_reshape, "view": _h_reshape, "flatten": _h_flatten,
    "cat": _h_cat, "concat": _h_cat, "concatenate": _h_cat, "gather": _h_gather,
    "contiguous": _h_identity, "dropout": _h_identity, "detach": _h_identity, "size": _h_meta, "dim": _h_meta,
    "unsqueeze": _h_unsqueeze, "squeeze": _h_squeeze, "clone": _h_clone, "flip": _h_flip, "narrow": _h_narrow,
    "select": _h_select, "expand": _h_expand, "expand_as": _h_expand, "repeat": _h_repeat,
    "split": _h_split("split"), "chunk": _h_split("chunk"),
}
METHODS: dict[str, Callable[[_Mapper, Any], Any]] = {"to": _h_to, "type_as": _h_to}
