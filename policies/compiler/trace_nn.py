"""Tracer handlers for the constructs of KernelBench's level-3 models, registered into `trace`'s
tables when it is imported:

- comparisons ``==``, ``!=``, ``<=``, ``>=`` (operators, functions, methods) feeding
  ``masked_fill``: ``x.masked_fill(mask <cmp> c, value)`` of any comparison of a tensor with a
  number and any fill (``float("-inf")`` included) is the catalog's ``masked_fill_cmp``; the mask
  is typically a registered buffer (a causal ``tril(ones)``), read from the reference's state as
  the weights are;
- ``F.normalize(x, p=2, dim, eps)``: ``x / clamp(norm(x, dim, keepdim), eps)``;
- ``x.unfold(dim, size, size)`` (non-overlapping windows, ViT's patch extraction): a reshape
  splitting the dim and a permute moving the window to the end;
- ``F.pad`` in constant mode: the catalog's ``pad`` (negative pads, which crop, are narrows);
- ``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer`` and ``nn.TransformerEncoder`` in
  eval mode, decomposed into catalog ops: the input projection (one linear producing q, k and v for
  self-attention), the head split (reshape / permute), ``sdpa``, the head merge, the output
  projection; layer norms, the feed-forward linears with their activation, residual adds, dropout
  as the identity; honouring ``batch_first``, ``norm_first``, the activation and ``kdim`` /
  ``vdim`` (a projection weight each). Masks, extra key/value biases and the attention weights
  output have no mapping (a precise error). Cross-attention with one in-projection weight projects
  q and k / v each to all three parts and keeps its own (3x the projection FLOPs of the part used;
  correct, not tuned).
"""

from __future__ import annotations

import operator
from typing import Any

from kernelgym.ops.catalog import MASK_CMPS
from policies.compiler.trace import _FUNCTIONS, _METHODS, _MODULES, GRAPH_PASSES, OPERATOR_HANDLERS
from policies.compiler.trace_mapper import _Cmp, _Mapper, _Multi, _scalar, _Unsupported
from policies.compiler.trace_math import _h_cmp, _h_masked_fill
from policies.compiler.trace_views import _axis, _narrow

Ref = tuple[str, int]
# the comparison with its operands swapped: 0 == m is m == 0, 0 < m is m > 0
_SWAPPED = {"eq": "eq", "ne": "ne", "lt": "gt", "gt": "lt", "le": "ge", "ge": "le"}


# ---- comparisons and masked_fill -------------------------------------------------------------------


def _h_masked_fill_any(m: _Mapper, n: Any) -> Any:
    """``x.masked_fill(a <cmp> c, v)`` (or ``c <cmp> a``) with numbers c and v: masked_fill_cmp;
    ``x.masked_fill(y < 0, 0.0)`` keeps the catalog's older ``masked_fill``."""
    x, cond, value = n.args[0], m.arg(n, 1, "mask"), m.arg(n, 2, "value")
    c = m.env.get(cond)
    if not isinstance(c, _Cmp):
        raise _Unsupported("masked_fill with a mask that is not a comparison of a tensor with a number")
    if c.op == "lt" and c.rhs == 0 and value == 0 and m.is_tensor(c.lhs):
        return _h_masked_fill(m, n)
    op, lhs, rhs = c.op, c.lhs, c.rhs
    if _scalar(lhs) and m.is_tensor(rhs):
        op, lhs, rhs = _SWAPPED[op], rhs, lhs
    if not (m.is_tensor(x) and m.is_tensor(lhs) and _scalar(rhs) and _scalar(value)):
        raise _Unsupported("masked_fill is supported as x.masked_fill(mask <cmp> number, number)")
    if op not in MASK_CMPS:
        raise _Unsupported(f"masked_fill with a comparison {op!r}")
    params = {"cmp": op, "c": float(rhs), "value": float(value)}
    return m.add("masked_fill_cmp", params, [x, lhs], m.shape_of(n))


# ---- F.normalize, unfold, F.pad ------------------------------------------------------------------


def _h_normalize(m: _Mapper, n: Any) -> Any:
    """F.normalize(x, p=2, dim=1, eps=1e-12) = x / max(||x||_2 over dim, eps)."""
    x = n.args[0]
    p, dim, eps = m.arg(n, 1, "p", 2.0), m.arg(n, 2, "dim", 1), m.arg(n, 3, "eps", 1e-12)
    if p not in (2, 2.0):
        raise _Unsupported(f"F.normalize with p={p!r} (supported: 2)")
    if n.kwargs.get("out") is not None:
        raise _Unsupported("F.normalize with out=")
    shape = m.arg_shape(x)
    axis = _axis(m, x, dim)
    kept = tuple(1 if k == axis else s for k, s in enumerate(shape))
    norm = m.add("norm", {"dim": len(shape) - axis, "keepdim": True}, [x], kept)
    den = m.add("clamp", {"lo": float(eps), "hi": None}, [norm], kept)
    return m.add("div", {}, [x, den], m.shape_of(n))


def _h_unfold(m: _Mapper, n: Any) -> Any:
    """x.unfold(dim, size, step) with step == size (windows that tile the dim): split the dim into
    (count, size), then move the window dim last."""
    x = n.args[0]
    dim, size, step = m.arg(n, 1, "dimension"), m.arg(n, 2, "size"), m.arg(n, 3, "step")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (dim, size, step)):
        raise _Unsupported("unfold with non-int arguments")
    if step != size:
        raise _Unsupported(f"unfold with step {step} != size {size} (overlapping or gapped windows)")
    axis = _axis(m, x, dim)
    shape = list(m.arg_shape(x))
    count = shape[axis] // size
    if count < 1:
        raise _Unsupported(f"unfold of a dim of {shape[axis]} into windows of {size}")
    cur: Any = x
    if count * size != shape[axis]:  # the remainder is dropped
        cur = _narrow(m, x, axis, 0, count * size)
    split = (*shape[:axis], count, size, *shape[axis + 1:])
    cur = m.add("reshape", {"shape": split}, [cur], split)
    r = len(split)
    if axis + 1 == r - 1:
        return cur
    perm = (*range(axis + 1), *range(axis + 2, r), axis + 1)
    return m.add("permute", {"perm": perm}, [cur], tuple(split[p] for p in perm))


def _h_pad(m: _Mapper, n: Any) -> Any:
    """F.pad(x, pads, mode="constant", value=0): the catalog's pad for the growing pads, narrows for
    negative ones (a crop)."""
    x, pads = n.args[0], m.arg(n, 1, "pad")
    mode, value = m.arg(n, 2, "mode", "constant"), m.arg(n, 3, "value", None)
    if mode != "constant":
        raise _Unsupported(f"F.pad with mode={mode!r} (supported: constant)")
    if not isinstance(pads, (tuple, list)) or len(pads) % 2 or not all(isinstance(v, int) for v in pads):
        raise _Unsupported(f"F.pad with pads {pads!r}")
    value = 0.0 if value is None else value
    if not _scalar(value):
        raise _Unsupported("F.pad with a non-number value")
    shape = list(m.arg_shape(x))
    if len(pads) // 2 > len(shape):
        raise _Unsupported(f"F.pad of {len(pads) // 2} dims of a rank-{len(shape)} tensor")
    cur: Any = x
    for k in range(len(pads) // 2):  # crops first
        axis = len(shape) - 1 - k
        lo, hi = min(pads[2 * k], 0), min(pads[2 * k + 1], 0)
        if lo or hi:
            cur = _narrow(m, cur, axis, -lo, m.arg_shape(cur)[axis] + lo + hi)
    grow = tuple(max(v, 0) for v in pads)
    while grow and grow[-2:] == (0, 0):
        grow = grow[:-2]
    if not grow:
        return m.ref(cur)
    return m.add("pad", {"pads": grow, "value": float(value)}, [cur], m.shape_of(n))


# ---- nn.MultiheadAttention / TransformerEncoderLayer / TransformerEncoder -----------------------


def _roles(m: _Mapper, prefix: str, **roles: str) -> dict[str, str]:
    """role -> state key for the entries ``prefix.attr`` the model has (a bias may be absent)."""
    return {role: f"{prefix}.{attr}" for role, attr in roles.items() if f"{prefix}.{attr}" in m.state_index}


def _linear(m: _Mapper, x: Any, prefix: str, out_features: int) -> Ref:
    st = _roles(m, prefix, weight="weight", bias="bias")
    if "weight" not in st:
        raise _Unsupported(f"{prefix}: a Linear without a weight in the state dict")
    return m.add("linear", {}, [x], (*m.arg_shape(x)[:-1], out_features), st)


def _layer_norm(m: _Mapper, x: Any, prefix: str, norm: Any) -> Ref:
    import torch

    if not isinstance(norm, torch.nn.LayerNorm):
        raise _Unsupported(f"{prefix}: a {type(norm).__name__} norm (supported: LayerNorm)")
    params = {"ndims": len(norm.normalized_shape), "eps": float(norm.eps)}
    return m.add("layer_norm", params, [x], m.arg_shape(x), _roles(m, prefix, weight="weight", bias="bias"))


def _attention(m: _Mapper, q: Any, k: Any, v: Any, mha: Any, prefix: str) -> Ref:
    """nn.MultiheadAttention(q, k, v) without masks, in eval mode: the attention output."""
    if mha.bias_k is not None or mha.add_zero_attn:
        raise _Unsupported(f"{prefix}: MultiheadAttention with add_bias_kv or add_zero_attn")
    e, h = int(mha.embed_dim), int(mha.num_heads)
    d = e // h
    sq, sk, sv = m.arg_shape(q), m.arg_shape(k), m.arg_shape(v)
    if not (len(sq) == len(sk) == len(sv) == 3 and (sq[-1], sk[-1], sv[-1]) == (e, mha.kdim, mha.vdim)
            and sk[:2] == sv[:2]):
        raise _Unsupported(f"{prefix}: MultiheadAttention of shapes {sq}, {sk}, {sv} (batched 3-D inputs of "
                           f"embed_dim {e}, kdim {mha.kdim}, vdim {mha.vdim})")
    in_proj = _roles(m, prefix, weight="in_proj_weight", bias="in_proj_bias")
    full: dict[Any, Ref] = {}

    def project(x: Any, which: int) -> Ref:
        if not mha._qkv_same_embed_dim:   # kdim / vdim: a weight per projection, one shared bias
            out = m.add("linear", {}, [x], (*m.arg_shape(x)[:-1], e),
                        {"weight": f"{prefix}.{'qkv'[which]}_proj_weight"})
            if "bias" not in in_proj:
                return out
            bias = _narrow(m, ("state", m.state_index[in_proj["bias"]]), 0, which * e, e)
            return m.add("add", {}, [out, bias], m.arg_shape(out))
        # one linear to (..., 3E) per distinct input; self-attention projects once
        key = x if not isinstance(x, tuple) else ("ref", x)
        if key not in full:
            full[key] = m.add("linear", {}, [x], (*m.arg_shape(x)[:-1], 3 * e), in_proj)
        return _narrow(m, full[key], 2, which * e, e)

    batch_first = bool(mha.batch_first)

    def heads(x: Ref) -> Ref:  # (L, N, E) or (N, L, E) -> (N, H, L, D)
        s = m.arg_shape(x)
        split = (*s[:2], h, d)
        r = m.add("reshape", {"shape": split}, [x], split)
        perm = (0, 2, 1, 3) if batch_first else (1, 2, 0, 3)
        return m.add("permute", {"perm": perm}, [r], tuple(split[p] for p in perm))

    qh, kh, vh = heads(project(q, 0)), heads(project(k, 1)), heads(project(v, 2))
    nb, _, lq, _ = m.arg_shape(qh)
    att = m.add("sdpa", {"causal": False}, [qh, kh, vh], (nb, h, lq, d))
    perm = (0, 2, 1, 3) if batch_first else (2, 0, 1, 3)
    back = m.add("permute", {"perm": perm}, [att], tuple((nb, h, lq, d)[p] for p in perm))
    merged = m.add("reshape", {"shape": (*sq[:2], e)}, [back], (*sq[:2], e))
    return _linear(m, merged, f"{prefix}.out_proj", e)


class _AttentionResult(_Multi):
    """MultiheadAttention's (output, weights): only the output ([0]) has a mapping."""


def _m_mha(m: _Mapper, n: Any, sub: Any) -> Any:
    q, k, v = (m.arg(n, i, name) for i, name in enumerate(("query", "key", "value")))
    for pos, name in ((3, "key_padding_mask"), (5, "attn_mask")):
        if m.arg(n, pos, name) is not None:
            raise _Unsupported(f"MultiheadAttention with {name}")
    if m.arg(n, 7, "is_causal", False):
        raise _Unsupported("MultiheadAttention with is_causal (it needs attn_mask too)")
    return _AttentionResult(_attention(m, q, k, v, sub, n.target))


def _activation(m: _Mapper, x: Ref, act: Any, prefix: str) -> Ref:
    import torch
    import torch.nn.functional as F

    shape = m.arg_shape(x)
    if act is F.relu or isinstance(act, torch.nn.ReLU):
        return m.add("relu", {}, [x], shape)
    if act is F.gelu or (isinstance(act, torch.nn.GELU) and act.approximate == "none"):
        return m.add("gelu", {}, [x], shape)
    if isinstance(act, torch.nn.GELU) and act.approximate == "tanh":
        return m.add("gelu_tanh", {}, [x], shape)
    raise _Unsupported(f"{prefix}: TransformerEncoderLayer activation {act!r} (supported: relu, gelu)")


def _encoder_layer(m: _Mapper, x: Any, layer: Any, prefix: str) -> Ref:
    """One nn.TransformerEncoderLayer (post-norm, or pre-norm with norm_first) without masks."""
    shape = m.arg_shape(x)

    def sa(y: Any) -> Ref:
        return _attention(m, y, y, y, layer.self_attn, f"{prefix}.self_attn")

    def ff(y: Any) -> Ref:
        hidden = _linear(m, y, f"{prefix}.linear1", int(layer.linear1.out_features))
        act = _activation(m, hidden, layer.activation, prefix)
        return _linear(m, act, f"{prefix}.linear2", int(layer.linear2.out_features))

    def add(a: Any, b: Any) -> Ref:
        return m.add("add", {}, [a, b], shape)

    if layer.norm_first:
        y = add(x, sa(_layer_norm(m, x, f"{prefix}.norm1", layer.norm1)))
        return add(y, ff(_layer_norm(m, y, f"{prefix}.norm2", layer.norm2)))
    y = _layer_norm(m, add(x, sa(x)), f"{prefix}.norm1", layer.norm1)
    return _layer_norm(m, add(y, ff(y)), f"{prefix}.norm2", layer.norm2)


def _no_masks(m: _Mapper, n: Any, what: str) -> None:
    for pos, name in ((1, "src_mask"), (1, "mask"), (2, "src_key_padding_mask")):
        if m.arg(n, pos, name) is not None and (name != "mask" or "mask" in n.kwargs):
            raise _Unsupported(f"{what} with {name}")
    if m.arg(n, 3, "is_causal", False):
        raise _Unsupported(f"{what} with is_causal")


def _m_encoder_layer(m: _Mapper, n: Any, sub: Any) -> Any:
    _no_masks(m, n, "TransformerEncoderLayer")
    return _encoder_layer(m, n.args[0], sub, n.target)


def _m_encoder(m: _Mapper, n: Any, sub: Any) -> Any:
    _no_masks(m, n, "TransformerEncoder")
    x: Any = n.args[0]
    for i, layer in enumerate(sub.layers):
        x = _encoder_layer(m, x, layer, f"{n.target}.layers.{i}")
    if sub.norm is not None:
        x = _layer_norm(m, x, f"{n.target}.norm", sub.norm)
    return m.ref(x)


# ---- graph passes ------------------------------------------------------------------------------


def drop_unused_items(gm: Any) -> None:
    """Erase ``getitem`` nodes nothing uses (``out, _ = attn(x, x, x)`` unpacks the attention
    weights too): pure, and the mapper would otherwise map them."""
    for node in reversed(list(gm.graph.nodes)):
        if node.op == "call_function" and node.target is operator.getitem and not node.users:
            gm.graph.erase_node(node)


GRAPH_PASSES.append(drop_unused_items)

for _name in ("eq", "ne", "le", "ge"):
    _FUNCTIONS[_name] = _METHODS[_name] = _h_cmp(_name)
for _name in ("eq", "ne", "le", "ge", "lt", "gt"):
    OPERATOR_HANDLERS[getattr(operator, _name)] = _h_cmp(_name)
for _table in (_FUNCTIONS, _METHODS):
    _table["masked_fill"] = _h_masked_fill_any
_FUNCTIONS["normalize"] = _METHODS["normalize"] = _h_normalize
_METHODS["unfold"] = _h_unfold
_FUNCTIONS["pad"] = _h_pad
_MODULES.update({"MultiheadAttention": _m_mha, "TransformerEncoderLayer": _m_encoder_layer,
                 "TransformerEncoder": _m_encoder})

