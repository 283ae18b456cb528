"""Views and copies along one slot (`dim` counts from the right, 1 = the last dim): unsqueeze,
squeeze, clone, flip, narrow, select, expand, repeat, and constant padding."""

from __future__ import annotations

from typing import Any

import z3

from kernelgym.ops.families.shape import number_literal, view_op
from kernelgym.ops.registry import register
from kernelgym.ops.spec import MAX_RANK, REAL, OpSpec, Param, drop_slot, keep_except, same_shape

# ---- views and copies ----------------------------------------------------------------------------
# Slot parameters (`dim`) count from the right, 1 = the last dim, as the reductions' do.


def _unsqueeze_shape(a, o, p, c):
    x, k = a[0], p["dim"] - 1
    cs = [o.rank == x.rank + 1, x.rank + 1 >= p["dim"], x.rank <= MAX_RANK - 1, o.dims[k] == 1]
    cs += [o.dims[m] == (x.dims[m] if m < k else x.dims[m - 1]) for m in range(MAX_RANK) if m != k]
    return cs


_SLOT = Param("dim", (1, 2))
view_op("unsqueeze", lambda a, p: f"{a[0]}.unsqueeze({-p['dim']})", _unsqueeze_shape, (Param("dim", (1, 2, 3)),),
         "x.unsqueeze(-dim): a new size-1 dim")
view_op("squeeze", lambda a, p: f"{a[0]}.squeeze({-p['dim']})",
         lambda a, o, p, c: [a[0].rank >= max(p["dim"], 2), a[0].dims[p["dim"] - 1] == 1,
                             *drop_slot(a[0], o, p["dim"] - 1)],
         (Param("dim", (1, 2, 3)),), "x.squeeze(-dim): drop a size-1 dim", min_rank=2)
view_op("clone", lambda a, p: f"{a[0]}.clone()", lambda a, o, p, c: same_shape(a[0], o), (), "x.clone()")
view_op("flip", lambda a, p: f"torch.flip({a[0]}, dims=({-p['dim']},))",
         lambda a, o, p, c: same_shape(a[0], o) + [a[0].rank >= p["dim"], a[0].dims[p["dim"] - 1] >= 2],
         (_SLOT,), "torch.flip(x, dims=(-dim,))")


def _narrow_shape(a, o, p, c):
    # length = size - drop, starting at `start` (so start <= drop)
    x, k = a[0], p["dim"] - 1
    if p["start"] > p["drop"]:
        return [z3.BoolVal(False)]
    return [x.rank >= p["dim"], *keep_except(x, o, [k]), o.dims[k] == x.dims[k] - p["drop"], o.dims[k] >= 1]


view_op("narrow", lambda a, p: f"{a[0]}.narrow({-p['dim']}, {p['start']}, {p['_out'][-p['dim']]})", _narrow_shape,
         (_SLOT, Param("start", (0, 1)), Param("drop", (1, 2))),
         "x.narrow(-dim, start, size - drop): a slice of one dim")
view_op("select", lambda a, p: f"{a[0]}.select({-p['dim']}, {p['index']})",
         lambda a, o, p, c: [a[0].rank >= max(p["dim"], 2), a[0].dims[p["dim"] - 1] > p["index"],
                             *drop_slot(a[0], o, p["dim"] - 1)],
         (_SLOT, Param("index", (0, 1))), "x.select(-dim, index): one index of a dim, the dim dropped", min_rank=2)


def _expand_shape(a, o, p, c):
    x, k = a[0], p["dim"] - 1
    n = c.fresh("size")
    return [x.rank >= p["dim"], x.dims[k] == 1, *keep_except(x, o, [k]), o.dims[k] == n, n >= 2]


view_op("expand", lambda a, p: f"{a[0]}.expand({', '.join(map(str, p['_out']))})", _expand_shape, (_SLOT,),
         "x.expand(*shape): a size-1 dim broadcast to a size (a view)")


def _repeat_call(a: list[str], p: dict[str, Any]) -> str:
    rank, dim = len(p["_in"][0]), p["dim"]
    reps = [1] * rank
    reps[rank - dim] = p["times"]
    return f"{a[0]}.repeat({', '.join(map(str, reps))})"


view_op("repeat", _repeat_call,
         lambda a, o, p, c: [a[0].rank >= p["dim"], *keep_except(a[0], o, [p["dim"] - 1]),
                             o.dims[p["dim"] - 1] == a[0].dims[p["dim"] - 1] * p["times"]],
         (_SLOT, Param("times", (2, 3))), "x.repeat(...): one dim tiled `times` times")


def _pad_shape(a, o, p, c):
    # F.pad's order: (before, after) pairs from the last dim inwards, i.e. slot 0 first
    x, pads = a[0], p["pads"]
    k = len(pads) // 2
    if len(pads) % 2 or k > MAX_RANK or min(pads) < 0:
        return [z3.BoolVal(False)]
    return [x.rank >= k, *keep_except(x, o, list(range(k))),
            *[o.dims[m] == x.dims[m] + pads[2 * m] + pads[2 * m + 1] for m in range(k)]]


register(OpSpec(
    name="pad", category="shape", arity=1,
    call=lambda a, p: f"F.pad({a[0]}, {list(p['pads'])!r}, value={number_literal(p.get('value', 0.0))})",
    shape=_pad_shape, flops=lambda ins, o, p: 0, out_range=REAL,
    params=(Param("pads", ((1, 1), (0, 2), (1, 0, 0, 1), (2, 2, 1, 1))), Param("value", (0.0, 1.0))),
    doc="F.pad(x, pads, value=v): constant padding (non-negative), last dim first",
))
