"""Constants a forward builds (``torch.tensor(2.0, device=x.device)``, ``torch.ones_like(x)``):
one of a single value is folded, as a number, into the arithmetic that uses it, before the fx
graph is mapped onto catalog ops; any other use is reported."""

from __future__ import annotations

from typing import Any

# Calls whose number argument may be a constant tensor of one value instead (x * torch.tensor(2.0)).
_FOLD_INTO = frozenset({"add", "sub", "subtract", "mul", "multiply", "truediv", "div", "divide", "pow",
                        "clamp", "clip", "gt", "lt", "masked_fill"})
# Elementwise min / max of a tensor and a constant of one value: a clamp.
_MIN_MAX = frozenset({"min", "max", "minimum", "maximum"})
# Constants a forward builds from a tensor's shape: (positional index of the fill value, or the value).
_LIKE_FILL: dict[str, Any] = {"ones_like": 1, "zeros_like": 0, "full_like": 1, "new_ones": 1, "new_zeros": 0,
                              "new_full": 2}


def _fold_constants(gm: Any, state_index: dict[str, int]) -> dict[Any, str]:
    """Fold constants built in forward into the calls that use them, in place; returns every
    constant node with the reason it cannot be mapped if some use remains.

    A constant is a tensor fx kept as an attribute that is not in the state dict (what
    ``torch.tensor(2.0, device=x.device)`` or ``torch.ones(1, c, 1, 1)`` becomes; its value is
    real, see `shape_trace`) or a ``torch.ones_like(x)`` / ``full_like`` / ``x.new_full(...)``
    whose value is in its arguments. One that holds a single value is replaced by that number in
    arithmetic with a tensor that has the result's shape and dtype (so the number changes neither
    broadcasting nor type promotion); other uses keep the constant, which no catalog op takes."""
    import torch

    out: dict[Any, str] = {}
    for n in gm.graph.nodes:
        value: Any = None
        name = getattr(n.target, "__name__", n.target) if n.op in ("call_function", "call_method") else None
        if n.op == "get_attr" and n.target not in state_index:
            t = n.meta.get("_value")
            if not isinstance(t, torch.Tensor):
                continue   # left to the mapper's state-dict error
            if t.device.type == "meta":   # no value: from the model's tensors, which live on meta
                out[n] = (f"constant tensor of shape {tuple(t.shape)}: a tensor the model holds outside its state "
                          "dict, or one forward computes from a buffer without fx tracing it (e.g. "
                          "self.mask[:t, :t] == 0); no catalog op takes a constant tensor")
                continue
            what = f"constant tensor of shape {tuple(t.shape)} built in forward"
            if t.numel() > 0 and not t.dtype.is_complex and bool((t == t.reshape(-1)[0]).all()):
                value = t.reshape(-1)[0].item()
        elif name in _LIKE_FILL and n.op == ("call_method" if name.startswith("new_") else "call_function"):
            what = f"constant {name}(...) built in forward"
            fill = _LIKE_FILL[name]
            if name in ("full_like", "new_full"):
                fill = n.args[fill] if len(n.args) > fill else n.kwargs.get("fill_value")
            value = fill
        else:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            out[n] = f"{what}: no catalog op takes a constant tensor (only one of a single value, used in " \
                     "arithmetic, is folded into it)"
            continue
        for u in list(n.users):
            uname = getattr(u.target, "__name__", u.target)
            if uname in _MIN_MAX and _foldable(n, u, _MIN_MAX):
                # torch.min(x, torch.tensor(c)) is a clamp; the number is not put in min's arguments,
                # where an int would be read as a dim (torch.min(x, 1): a reduction)
                x = next(a for a in (*u.args, *u.kwargs.values()) if a is not n)
                u.op, u.target, u.args = "call_function", torch.clamp, (x,)
                u.kwargs = {"max" if uname in ("min", "minimum") else "min": float(value)}
            elif _foldable(n, u, _FOLD_INTO):
                u.args = tuple(value if a is n else a for a in u.args)
                u.kwargs = {k: value if a is n else a for k, a in u.kwargs.items()}
        out[n] = f"{what} with one value {value!r}, used where no number can stand for it (a call other " \
                 "than arithmetic, or one whose result has another shape or dtype than its tensor argument)"
    return out


def _foldable(const: Any, user: Any, names: frozenset[str]) -> bool:
    """Whether `user` may take the number of `const` instead: a call of `names` with another tensor
    whose shape and dtype are those of the result (for min / max: that tensor and `const` only)."""
    import torch

    if user.op not in ("call_function", "call_method") or getattr(user.target, "__name__", user.target) not in names:
        return False
    res = user.meta.get("tensor_meta")
    args = (*user.args, *user.kwargs.values())
    others = [a for a in args if hasattr(a, "op") and a is not const]
    if not hasattr(res, "shape") or not others or (names is _MIN_MAX and (len(args) != 2 or const not in args)):
        return False
    tm = others[0].meta.get("tensor_meta")
    if not hasattr(tm, "shape"):
        return False
    same_dtype = tm.dtype == res.dtype or res.dtype == torch.bool   # a comparison's result is bool
    return tuple(tm.shape) == tuple(res.shape) and same_dtype
