"""Handlers of products: matmul / mm / bmm (batch dims broadcast through an einsum), addmm,
einsum contractions of two operands and scaled_dot_product_attention. `FUNCTIONS` maps torch
function and tensor method names to them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from policies.compiler.trace_mapper import _Mapper, _Unsupported


def _h_matmul(m: _Mapper, n: Any) -> Any:
    a, b = n.args[0], n.args[1]
    ra, rb = m.rank(a), m.rank(b)
    shape = m.shape_of(n)
    if ra == 2 and rb == 2:
        return m.add("matmul", {}, [a, b], shape)
    if ra == 3 and rb == 3 and m.arg_shape(a)[0] == m.arg_shape(b)[0]:
        return m.add("bmm", {}, [a, b], shape)
    if ra >= 2 and rb == 2:
        return m.add("matmul", {}, [a, b], shape)
    if ra >= 2 and rb >= 2:
        return m.add("einsum", {"eq": _matmul_equation(m.arg_shape(a), m.arg_shape(b))}, [a, b], shape)
    raise _Unsupported(f"matmul of ranks {ra} and {rb} (a 1-D operand; supported: both of rank 2 or more)")


def _h_addmm(m: _Mapper, n: Any) -> Any:
    if n.kwargs.get("beta", 1) != 1 or n.kwargs.get("alpha", 1) != 1:
        raise _Unsupported("addmm with alpha or beta")
    return m.add("addmm", {}, [n.args[0], n.args[1], n.args[2]], m.shape_of(n))


def _matmul_equation(sa: tuple[int, ...], sb: tuple[int, ...]) -> str:
    """The einsum equation of torch.matmul of shapes sa (..., M, K) and sb (..., K, N), batch dims
    broadcast: a batch dim of size 1 on one side only gets a letter of its own there."""
    r = max(len(sa), len(sb))
    nb = r - 2
    ba, bb = (1,) * (r - len(sa)) + tuple(sa[:-2]), (1,) * (r - len(sb)) + tuple(sb[:-2])
    out_b, a_b, b_b = "", "", ""
    for i, (x, y) in enumerate(zip(ba, bb)):
        letter = "abcdefgh"[i]
        out_b += letter
        a_b += letter if x == max(x, y) else "pqrstuvw"[i]
        b_b += letter if y == max(x, y) else "PQRSTUVW"[i]
    a_b, b_b = a_b[nb - (len(sa) - 2):], b_b[nb - (len(sb) - 2):]
    return f"{a_b}mk,{b_b}kn->{out_b}mn"


def _h_einsum(m: _Mapper, n: Any) -> Any:
    from kernelgym.ops.catalog import einsum_operands

    eq, ops = n.args[0], list(n.args[1:])
    if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
        ops = list(ops[0])
    if not isinstance(eq, str):
        raise _Unsupported("einsum without an equation string first")
    eq = eq.replace(" ", "")
    if "->" not in eq:  # implicit output: the letters used once, in alphabetical order
        letters = eq.replace(",", "")
        eq += "->" + "".join(sorted(ch for ch in set(letters) if letters.count(ch) == 1))
    if len(ops) != 2:
        raise _Unsupported(f"einsum {eq!r} of {len(ops)} operand(s) (supported: two, a contraction that is a matmul)")
    try:
        subs, out = einsum_operands(eq)
    except ValueError as exc:
        raise _Unsupported(str(exc)) from None
    sizes: dict[str, int] = {}
    for s, t in zip(subs, ops):
        for ch, d in zip(s, m.arg_shape(t)):
            sizes.setdefault(ch, d)
    lone = [ch for ch in sizes if ch not in out and (ch in subs[0]) != (ch in subs[1]) and sizes[ch] != 1]
    if lone:
        raise _Unsupported(f"einsum {eq!r} sums letter {lone[0]!r} within one operand (a reduction, not a product)")
    return m.add("einsum", {"eq": eq}, ops, m.shape_of(n))


def _h_sdpa(m: _Mapper, n: Any) -> Any:
    q, k, v = n.args[0], m.arg(n, 1, "key"), m.arg(n, 2, "value")
    if m.arg(n, 3, "attn_mask") is not None:
        raise _Unsupported("scaled_dot_product_attention with an attn_mask")
    if m.arg(n, 4, "dropout_p", 0.0) not in (0, 0.0):
        raise _Unsupported("scaled_dot_product_attention with dropout (random)")
    if n.kwargs.get("enable_gqa", False):
        raise _Unsupported("scaled_dot_product_attention with enable_gqa")
    sq, sk, sv = m.arg_shape(q), m.arg_shape(k), m.arg_shape(v)
    if not (len(sq) == len(sk) == len(sv) >= 2 and sq[:-2] == sk[:-2] == sv[:-2]):
        raise _Unsupported(f"scaled_dot_product_attention of shapes {sq}, {sk}, {sv} (batch dims must match)")
    params: dict[str, Any] = {"causal": bool(m.arg(n, 5, "is_causal", False))}
    scale = m.arg(n, 6, "scale")
    if scale is not None:
        params["scale"] = float(scale)
    return m.add("sdpa", params, [q, k, v], m.shape_of(n))


FUNCTIONS: dict[str, Callable[[_Mapper, Any], Any]] = {
    "matmul": _h_matmul, "mm": _h_matmul, "bmm": _h_matmul, "addmm": _h_addmm,
    "einsum": _h_einsum, "scaled_dot_product_attention": _h_sdpa,
}
