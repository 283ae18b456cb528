"""Tracer handlers of the reduction family, registered into `trace`'s tables when it is imported:

- ``torch.argmax`` / ``argmin`` (functions and methods), and the indices of ``torch.max(x, dim)``
  / ``torch.min(x, dim)`` (``[1]`` or ``.indices``) as argmax / argmin; ``torch.max(x)`` /
  ``torch.min(x)`` of a whole tensor as amax / amin over every dim; ``torch.prod``;
  ``torch.cumprod``;
- reversed and exclusive scans written as KernelBench writes them, rewritten before mapping
  (`fuse_scan_idioms`) into one scan node with ``reverse`` / ``exclusive`` parameters:
  ``x.flip(d).cumsum(d).flip(d)`` (any of cumsum, cumprod, cummax's values, logcumsumexp) and
  ``torch.cat([zeros, x.narrow(d, 0, n - 1).cumsum(d)], d)`` (``ones`` for cumprod; the slice
  ``x[..., :-1]`` as well as narrow; reversed: the suffix scan of ``x.narrow(d, 1, n - 1)``
  followed by the zeros);
- losses: ``F.mse_loss``, ``F.l1_loss``, ``F.smooth_l1_loss``, ``F.huber_loss``, ``F.kl_div``,
  ``F.cross_entropy`` (int64 targets), ``F.triplet_margin_loss`` and their ``nn`` modules, as the
  catalog's loss ops (what PyTorch computes; the compiler expands them, `composite`), and
  ``F.cosine_similarity`` / ``nn.CosineSimilarity`` of same-shape tensors (cosine losses).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from policies.compiler.trace import _FUNCTIONS, _METHODS, _MODULES, GRAPH_PASSES
from policies.compiler.trace_mapper import _Mapper, _Multi, _Unsupported
from policies.compiler.trace_math import _h_minmax, _h_scan

# The call_method target of a fused scan node made by `fuse_scan_idioms` (never executed: the
# graph's values are already propagated when it runs).
FUSED_SCAN = "_kernelgym_scan"
_SCANS = ("cumsum", "cumprod", "logcumsumexp")
# Calls that make the identity-filled slot of an exclusive scan.
_FILLS = {"cumsum": ("zeros_like", "zeros", "new_zeros"), "cumprod": ("ones_like", "ones", "new_ones")}


# ---- argmax / argmin / prod / max with indices ---------------------------------------------------


def _h_arg(op: str) -> Callable[[_Mapper, Any], Any]:
    def handler(m: _Mapper, n: Any) -> Any:
        x = n.args[0]
        dim = m.arg(n, 1, "dim")
        keepdim = bool(m.arg(n, 2, "keepdim", False))
        if dim is None:
            if m.rank(x) != 1:
                raise _Unsupported(f"{op} without dim (an index into the flattened tensor)")
            dim = 0
        return m.add(op, {"dim": m.dim_from_right(x, dim), "keepdim": keepdim}, [x], m.shape_of(n))

    return handler


class _ValuesIndices(_Multi):
    """torch.max / min over a dim: the values (amax / amin) and the indices (argmax / argmin),
    each mapped to its node only when used."""

    def __init__(self, make: Callable[[str], Any]):
        self._make = make
        self._made: dict[str, Any] = {}

    def _get(self, which: str) -> Any:
        if which not in self._made:
            self._made[which] = self._make(which)
        return self._made[which]

    @property
    def values(self) -> Any:  # type: ignore[override]
        return self._get("values")

    @property
    def indices(self) -> Any:  # type: ignore[override]
        return self._get("indices")


def _h_max(kind: str) -> Callable[[_Mapper, Any], Any]:
    """torch.max / min: over a dim, values and indices; of a whole tensor, amax / amin over every
    dim; of two tensors, maximum / minimum (`trace_math._h_minmax`)."""
    pairwise = _h_minmax(kind)
    red, arg = ("amax", "argmax") if kind == "maximum" else ("amin", "argmin")

    def handler(m: _Mapper, n: Any) -> Any:
        a = n.args[0]
        b = n.args[1] if len(n.args) > 1 else n.kwargs.get("other", n.kwargs.get("dim"))
        if m.is_tensor(a) and isinstance(b, int) and not isinstance(b, bool):
            keepdim = bool(m.arg(n, 2, "keepdim", False))
            shape = tuple(int(x) for x in n.meta["tensor_meta"][0].shape)
            p = {"dim": m.dim_from_right(a, b), "keepdim": keepdim}
            return _ValuesIndices(lambda which: m.add(red if which == "values" else arg, dict(p), [a], shape))
        if m.is_tensor(a) and b is None and len(n.args) == 1 and not n.kwargs:
            return m.add(red, {"axes": list(range(m.rank(a))), "keepdim": False}, [a], m.shape_of(n))
        return pairwise(m, n)

    return handler


def _h_prod(m: _Mapper, n: Any) -> Any:
    x = n.args[0]
    dim = m.arg(n, 1, "dim")
    if n.kwargs.get("dtype") is not None:
        raise _Unsupported("prod with a dtype")
    keepdim = bool(m.arg(n, 2, "keepdim", False))
    if dim is None:
        return m.add("prod", {"axes": list(range(m.rank(x))), "keepdim": False}, [x], m.shape_of(n))
    return m.add("prod", {"dim": m.dim_from_right(x, dim), "keepdim": keepdim}, [x], m.shape_of(n))


# ---- scan idioms -------------------------------------------------------------------------------------


def _name(n: Any) -> str | None:
    if n.op == "call_method":
        return n.target
    if n.op == "call_function":
        return getattr(n.target, "__name__", None)
    return None


def _arg(n: Any, pos: int, name: str, default: Any = None) -> Any:
    return n.args[pos] if len(n.args) > pos else n.kwargs.get(name, default)


def _shape(n: Any) -> tuple[int, ...] | None:
    meta = n.meta.get("tensor_meta") if hasattr(n, "meta") else None
    return tuple(int(s) for s in meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _flip(n: Any) -> tuple[Any, int] | None:
    """(x, axis) when `n` is x.flip(axis) of one axis."""
    if _name(n) != "flip" or not n.args:
        return None
    x = n.args[0]
    dims = n.args[1:] if len(n.args) > 1 else (n.kwargs.get("dims"),)
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = tuple(dims[0])
    shape = _shape(x)
    if shape is None or len(dims) != 1 or not isinstance(dims[0], int):
        return None
    return x, dims[0] % len(shape)


def _scan(n: Any) -> tuple[str, Any, int, bool, bool] | None:
    """(op, x, axis, reverse, exclusive) when `n` is a scan's values (a fused one included)."""
    name = _name(n)
    if name == FUSED_SCAN:
        k = n.kwargs
        return k["op"], n.args[0], k["dim"], k["reverse"], k["exclusive"]
    if name in _SCANS and n.kwargs.get("dtype") is None:
        op, x, d = name, n.args[0], _arg(n, 1, "dim")
    elif name in ("getitem", "getattr") and n.args[1] in (0, "values") and _name(n.args[0]) == "cummax":
        op, x, d = "cummax", n.args[0].args[0], _arg(n.args[0], 1, "dim")
    else:
        return None
    shape = _shape(x)
    if shape is None or not isinstance(d, int):
        return None
    return op, x, d % len(shape), False, False


def _narrow(n: Any) -> tuple[Any, int, int, int] | None:
    """(x, axis, start, length) when `n` is x.narrow(axis, start, length) or a slice of one axis."""
    name = _name(n)
    if name == "narrow":
        x, d, start, length = n.args[0], _arg(n, 1, "dim"), _arg(n, 2, "start"), _arg(n, 3, "length")
        shape = _shape(x)
        if shape is None or not all(isinstance(v, int) for v in (d, start, length)):
            return None
        return x, d % len(shape), start % shape[d % len(shape)], length
    if name == "getitem":
        x, idx = n.args
        shape = _shape(x)
        idx = idx if isinstance(idx, tuple) else (idx,)
        if shape is None or len(idx) > len(shape) or not all(isinstance(s, slice) for s in idx):
            return None
        cut = [(a, s) for a, s in enumerate(idx) if s != slice(None)]
        if len(cut) != 1 or cut[0][1].step not in (None, 1):
            return None
        a, s = cut[0]
        if not all(v is None or isinstance(v, int) for v in (s.start, s.stop)):
            return None
        start, stop, _ = s.indices(shape[a])
        return x, a, start, max(0, stop - start)
    return None


def _replace(gm: Any, old: Any, x: Any, op: str, axis: int, reverse: bool, exclusive: bool) -> None:
    with gm.graph.inserting_before(old):
        new = gm.graph.call_method(FUSED_SCAN, (x,), {"op": op, "dim": axis, "reverse": reverse,
                                                     "exclusive": exclusive})
    new.meta = dict(old.meta)
    old.replace_all_uses_with(new)


def _exclusive(c: Any) -> tuple[Any, str, int, bool] | None:
    """(x, op, axis, reverse) when `c` is an exclusive scan of x written as a cat."""
    if _name(c) not in ("cat", "concat", "concatenate") or len(c.args) < 1:
        return None
    parts = c.args[0]
    shape = _shape(c)
    if not isinstance(parts, (list, tuple)) or len(parts) != 2 or shape is None:
        return None
    axis = _arg(c, 1, "dim", 0)
    if not isinstance(axis, int):
        return None
    axis %= len(shape)
    for reverse, (fill, s) in ((False, parts), (True, parts[::-1])):
        sc = _scan(s) if hasattr(s, "op") else None
        if sc is None or sc[0] not in _FILLS or sc[2] != axis or sc[3] != reverse or sc[4]:
            continue
        nar = _narrow(sc[1])
        if nar is None:
            continue
        x, a, start, length = nar
        xs = _shape(x)
        if xs is None or a != axis or length != xs[a] - 1 or start != (1 if reverse else 0):
            continue
        if not hasattr(fill, "op") or _name(fill) not in _FILLS[sc[0]]:
            continue
        if _shape(fill) != tuple(1 if k == axis else d for k, d in enumerate(xs)):
            continue
        return x, sc[0], axis, reverse
    return None


def fuse_scan_idioms(gm: Any) -> None:
    """Rewrite reversed scans (flip, scan, flip) and exclusive ones (a cat of an identity slot and
    the scan of all but one element) into single scan nodes; unused calls are then dropped."""
    changed = False
    for node in list(gm.graph.nodes):
        outer = _flip(node)
        if outer is not None:
            sc = _scan(outer[0])
            if sc is not None and sc[2] == outer[1] and not sc[4]:
                inner = _flip(sc[1])
                if inner is not None and inner[1] == outer[1]:
                    _replace(gm, node, inner[0], sc[0], outer[1], not sc[3], False)
                    changed = True
                    continue
        excl = _exclusive(node)
        if excl is not None:
            x, op, axis, reverse = excl
            _replace(gm, node, x, op, axis, reverse, True)
            changed = True
    if changed:
        gm.graph.eliminate_dead_code()


def _h_fused_scan(m: _Mapper, n: Any) -> Any:
    k = n.kwargs
    return m.add(k["op"], {"dim": m.dim_from_right(n.args[0], k["dim"]), "reverse": k["reverse"],
                           "exclusive": k["exclusive"]}, [n.args[0]], m.shape_of(n))


# ---- losses ----------------------------------------------------------------------------------------


def _reduction(m: _Mapper, n: Any, pos: int, allowed: tuple[str, ...] = ("mean", "sum", "none")) -> str:
    if n.kwargs.get("size_average") is not None or n.kwargs.get("reduce") is not None:
        raise _Unsupported("a loss with the legacy size_average / reduce arguments")
    r = m.arg(n, pos, "reduction", "mean")
    if r not in allowed:
        raise _Unsupported(f"loss reduction {r!r}")
    return r


def _no_weight(m: _Mapper, n: Any, pos: int) -> None:
    if m.arg(n, pos, "weight") is not None:
        raise _Unsupported("a loss with class / element weights")


def _smooth_l1(m: _Mapper, n: Any, a: Any, b: Any, reduction: str, beta: float, scale: float = 1.0) -> Any:
    out = m.add("smooth_l1_loss", {"reduction": reduction, "beta": float(beta)}, [a, b], m.shape_of(n))
    return out if scale == 1.0 else m.add("mul_scalar", {"c": float(scale)}, [out], m.shape_of(n))


def _cross_entropy(m: _Mapper, n: Any, x: Any, t: Any, reduction: str, ignore_index: Any, smoothing: Any) -> Any:
    import torch

    if smoothing not in (0, 0.0, None):
        raise _Unsupported("cross_entropy with label_smoothing")
    if not isinstance(ignore_index, int) or ignore_index >= 0:
        raise _Unsupported("cross_entropy with a class index ignored (ignore_index >= 0)")
    ref = m.ref(t)
    if ref[0] != "input" or m.inputs[ref[1]].dtype != torch.int64:
        raise _Unsupported("cross_entropy with targets other than an int64 input (class probabilities)")
    if m.rank(x) != 2:
        raise _Unsupported(f"cross_entropy of rank-{m.rank(x)} logits (supported: (N, C))")
    return m.add("cross_entropy", {"reduction": reduction}, [x, t], m.shape_of(n))


def _triplet(m: _Mapper, n: Any, args: list[Any], margin: Any, p: Any, eps: Any, swap: Any, reduction: str) -> Any:
    if p != 2 or swap:
        raise _Unsupported("triplet_margin_loss with p != 2 or swap")
    if any(m.rank(a) != 2 for a in args):
        raise _Unsupported("triplet_margin_loss of inputs other than (N, D)")
    params = {"margin": float(margin), "reduction": reduction, "eps": float(eps)}
    return m.add("triplet_margin_loss", params, list(args), m.shape_of(n))


def _f_mse(m: _Mapper, n: Any) -> Any:
    _no_weight(m, n, 5)
    return m.add("mse_loss", {"reduction": _reduction(m, n, 4)}, [n.args[0], m.arg(n, 1, "target")], m.shape_of(n))


def _f_l1(m: _Mapper, n: Any) -> Any:
    _no_weight(m, n, 5)
    return _smooth_l1(m, n, n.args[0], m.arg(n, 1, "target"), _reduction(m, n, 4), 0.0)


def _f_smooth_l1(m: _Mapper, n: Any) -> Any:
    return _smooth_l1(m, n, n.args[0], m.arg(n, 1, "target"), _reduction(m, n, 4), m.arg(n, 5, "beta", 1.0))


def _f_huber(m: _Mapper, n: Any) -> Any:
    # huber(delta) = delta * smooth_l1(beta = delta), elementwise and so after the reduction
    _no_weight(m, n, 4)
    delta = float(m.arg(n, 3, "delta", 1.0))
    return _smooth_l1(m, n, n.args[0], m.arg(n, 1, "target"), _reduction(m, n, 2), delta, delta)


def _f_kl_div(m: _Mapper, n: Any) -> Any:
    r = _reduction(m, n, 4, ("mean", "sum", "none", "batchmean"))
    params = {"reduction": r, "log_target": bool(m.arg(n, 5, "log_target", False))}
    return m.add("kl_div", params, [n.args[0], m.arg(n, 1, "target")], m.shape_of(n))


def _f_cross_entropy(m: _Mapper, n: Any) -> Any:
    _no_weight(m, n, 2)
    return _cross_entropy(m, n, n.args[0], m.arg(n, 1, "target"), _reduction(m, n, 6), m.arg(n, 4, "ignore_index", -100),
                          m.arg(n, 7, "label_smoothing", 0.0))


def _f_triplet(m: _Mapper, n: Any) -> Any:
    args = [n.args[0], m.arg(n, 1, "positive"), m.arg(n, 2, "negative")]
    return _triplet(m, n, args, m.arg(n, 3, "margin", 1.0), m.arg(n, 4, "p", 2), m.arg(n, 5, "eps", 1e-6),
                    m.arg(n, 6, "swap", False), _reduction(m, n, 9))


def _module_reduction(sub: Any, allowed: tuple[str, ...] = ("mean", "sum", "none")) -> str:
    if sub.reduction not in allowed:
        raise _Unsupported(f"{type(sub).__name__} with reduction {sub.reduction!r}")
    return sub.reduction


def _m_cross_entropy(m: _Mapper, n: Any, sub: Any) -> Any:
    if sub.weight is not None:
        raise _Unsupported("CrossEntropyLoss with class weights")
    return _cross_entropy(m, n, n.args[0], n.args[1], _module_reduction(sub), sub.ignore_index, sub.label_smoothing)


def _m_kl_div(m: _Mapper, n: Any, sub: Any) -> Any:
    params = {"reduction": _module_reduction(sub, ("mean", "sum", "none", "batchmean")), "log_target": bool(sub.log_target)}
    return m.add("kl_div", params, [n.args[0], n.args[1]], m.shape_of(n))


def _cosine(m: _Mapper, n: Any, x: Any, y: Any, dim: Any, eps: Any) -> Any:
    if m.arg_shape(x) != m.arg_shape(y):
        raise _Unsupported("cosine_similarity of tensors of different shapes (broadcast)")
    return m.add("cosine_similarity", {"dim": m.dim_from_right(x, dim), "eps": float(eps)}, [x, y], m.shape_of(n))


def _f_cosine(m: _Mapper, n: Any) -> Any:
    return _cosine(m, n, n.args[0], m.arg(n, 1, "x2"), m.arg(n, 2, "dim", 1), m.arg(n, 3, "eps", 1e-8))


_FAMILY_FUNCTIONS: dict[str, Callable[[_Mapper, Any], Any]] = {
    "argmax": _h_arg("argmax"), "argmin": _h_arg("argmin"), "max": _h_max("maximum"), "min": _h_max("minimum"),
    "prod": _h_prod, "cumprod": _h_scan("cumprod"), FUSED_SCAN: _h_fused_scan,
    "mse_loss": _f_mse, "l1_loss": _f_l1, "smooth_l1_loss": _f_smooth_l1, "huber_loss": _f_huber,
    "kl_div": _f_kl_div, "cross_entropy": _f_cross_entropy, "triplet_margin_loss": _f_triplet,
    "cosine_similarity": _f_cosine,
}
_FUNCTIONS.update(_FAMILY_FUNCTIONS)
_METHODS.update(_FAMILY_FUNCTIONS)
_MODULES.update({
    "MSELoss": lambda m, n, sub: m.add("mse_loss", {"reduction": _module_reduction(sub)}, [n.args[0], n.args[1]],
                                       m.shape_of(n)),
    "L1Loss": lambda m, n, sub: _smooth_l1(m, n, n.args[0], n.args[1], _module_reduction(sub), 0.0),
    "SmoothL1Loss": lambda m, n, sub: _smooth_l1(m, n, n.args[0], n.args[1], _module_reduction(sub), sub.beta),
    "HuberLoss": lambda m, n, sub: _smooth_l1(m, n, n.args[0], n.args[1], _module_reduction(sub), sub.delta,
                                              sub.delta),
    "KLDivLoss": _m_kl_div, "CrossEntropyLoss": _m_cross_entropy,
    "CosineSimilarity": lambda m, n, sub: _cosine(m, n, n.args[0], n.args[1], sub.dim, sub.eps),
    "TripletMarginLoss": lambda m, n, sub: _triplet(m, n, list(n.args[:3]), sub.margin, sub.p, sub.eps, sub.swap,
                                                    _module_reduction(sub)),
})
GRAPH_PASSES.append(fuse_scan_idioms)
