"""Index ops: embedding lookups and gather along the last dim (int64 index inputs)."""

from __future__ import annotations

from kernelgym.ops.registry import register
from kernelgym.ops.spec import MAX_RANK, OpSpec, Weight, ranks, same_shape

# ---- gather / embedding --------------------------------------------------------------------------


def _embedding_shape(a, o, p, c):
    idx = a[0]
    emb = c.fresh("embedding_dim")
    vocab = c.fresh("num_embeddings")
    cs = [ranks(idx, 1, 3), o.rank == idx.rank + 1, o.dims[0] == emb, vocab >= 2,
          c.log(vocab) + c.log(emb) <= c.max_log]
    cs += [o.dims[m + 1] == idx.dims[m] for m in range(MAX_RANK - 1)]
    return cs


register(OpSpec(
    name="embedding", category="gather", arity=1,
    call=lambda a, p: f"F.embedding({a[0]}, {p['_w']['weight']})",
    shape=_embedding_shape, flops=lambda ins, o, p: 0, index_args=(0,),
    index_bound=lambda ins, o, p: p["_fresh"]["num_embeddings"],
    weights=lambda ins, o, p: [Weight("weight", (p["_fresh"]["num_embeddings"], o[-1]), "randn")],
    doc="F.embedding(indices, W)",
))


def _gather_shape(a, o, p, c):
    x, idx = a
    return [x.rank == idx.rank, x.dims[0] >= 2, idx.dims[0] <= x.dims[0],
            *[idx.dims[m] == x.dims[m] for m in range(1, MAX_RANK)], *same_shape(idx, o)]


register(OpSpec(
    name="gather", category="gather", arity=2,
    call=lambda a, p: f"torch.gather({a[0]}, -1, {a[1]})",
    shape=_gather_shape, flops=lambda ins, o, p: 0, index_args=(1,),
    index_bound=lambda ins, o, p: ins[0][-1], out_range="first",
    doc="torch.gather(x, -1, indices)",
))
