"""Losses (each a 0-d result that ends a program) and cosine_similarity, what cosine losses are
made of."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import z3

from kernelgym.ops.registry import register
from kernelgym.ops.spec import MAX_RANK, NONNEG, POSITIVE, REAL, OpSpec, Param, drop_slot, numel, same_shape

if TYPE_CHECKING:
    from kernelgym.ops.spec import SymTensor


# ---- losses --------------------------------------------------------------------------------------
# Each returns a 0-d tensor (`OpSpec.scalar_out`), so it ends a program: the sampler never feeds it
# to another op. The compiler lowers a loss as the catalog ops it is made of (policies/compiler/
# composite.py), fused as usual.


def _scalar_out(o: SymTensor) -> list[z3.BoolRef]:
    return [o.rank == 0, *[o.dims[m] == 1 for m in range(MAX_RANK)]]


def _pair_loss_shape(a, o, p, c):
    x, y = a
    return same_shape(x, y) + _scalar_out(o)


def _loss(name: str, call, arity: int, shape, flops: int, params: tuple[Param, ...], doc: str,
          domain: tuple[int, ...] = (), **kw: Any) -> None:
    register(OpSpec(
        name=name, category="loss", arity=arity, call=call, shape=shape,
        flops=lambda ins, o, p: flops * numel(ins[0]), params=params, domain=domain, out_range=NONNEG,
        scalar_out=True, doc=doc, **kw,
    ))


_REDUCTIONS = Param("reduction", ("mean", "sum"))
_loss("mse_loss", lambda a, p: f"F.mse_loss({a[0]}, {a[1]}, reduction={p['reduction']!r})", 2,
      _pair_loss_shape, 3, (_REDUCTIONS,), "F.mse_loss(input, target)")
_loss("smooth_l1_loss",
      lambda a, p: f"F.smooth_l1_loss({a[0]}, {a[1]}, reduction={p['reduction']!r}, beta={p['beta']!r})", 2,
      _pair_loss_shape, 5, (_REDUCTIONS, Param("beta", (1.0, 0.5))), "F.smooth_l1_loss(input, target) (Huber)")
# KernelBench's form: F.kl_div(torch.log(p), q, reduction='batchmean'); the target must be positive
_loss("kl_div", lambda a, p: f"F.kl_div({a[0]}, {a[1]}, reduction={p['reduction']!r})", 2,
      _pair_loss_shape, 4, (Param("reduction", ("batchmean", "sum")),),
      "F.kl_div(log_input, target) (target > 0)", domain=(REAL, POSITIVE))


def _cross_entropy_shape(a, o, p, c):
    x, t = a
    return [x.rank == 2, t.rank == 1, t.dims[0] == x.dims[1], x.dims[0] >= 2, *_scalar_out(o)]


_loss("cross_entropy", lambda a, p: f"F.cross_entropy({a[0]}, {a[1]}, reduction={p['reduction']!r})", 2,
      _cross_entropy_shape, 6, (_REDUCTIONS,), "F.cross_entropy(logits (N, C), int64 targets (N,))",
      index_args=(1,), index_bound=lambda ins, o, p: ins[0][-1], min_rank=2)


def _triplet_shape(a, o, p, c):
    x, y, z = a
    return [x.rank == 2, *same_shape(x, y)[1:], *same_shape(x, z)[1:], y.rank == 2, z.rank == 2, *_scalar_out(o)]


_loss("triplet_margin_loss",
      lambda a, p: f"F.triplet_margin_loss({a[0]}, {a[1]}, {a[2]}, margin={p['margin']!r}, reduction={p['reduction']!r})",
      3, _triplet_shape, 8, (Param("margin", (1.0, 0.5)), _REDUCTIONS),
      "F.triplet_margin_loss(anchor, positive, negative) over (N, D) rows", min_rank=2)


def _cosine_shape(a, o, p, c):
    x, y = a
    return same_shape(x, y) + [x.rank >= p["dim"], *drop_slot(x, o, p["dim"] - 1)]


# Not a loss itself (one value per row, consumable), but what cosine-similarity losses are made of:
# ``torch.mean(1 - F.cosine_similarity(a, b))``.
register(OpSpec(
    name="cosine_similarity", category="reduction", arity=2,
    call=lambda a, p: f"F.cosine_similarity({a[0]}, {a[1]}, dim={-p['dim']})",
    shape=_cosine_shape, flops=lambda ins, o, p: 6 * numel(ins[0]), params=(Param("dim", (1, 2)),),
    out_range=REAL, scalar_out=True, doc="F.cosine_similarity(x1, x2, dim) of same-shape tensors",
))
