"""Pooling: max and average pools 1-D to 3-D (torch's window arithmetic, ceil_mode), global and
sized adaptive average pools."""

from __future__ import annotations

from typing import Any

import z3

from kernelgym.ops.registry import register
from kernelgym.ops.spec import OpSpec, Param, keep_except, numel

# ---- pooling -------------------------------------------------------------------------------------
# Window parameters may be one int or a tuple (one value per spatial dim, from the left), as in
# torch; the sampler draws ints, the tracer records what the reference passed.
_MAX_POOL_PARAMS = (Param("kernel", (2, 3)), Param("stride", (1, 2)), Param("padding", (0, 1)),
                    Param("dilation", (1, 2)), Param("ceil_mode", (False, True)))
_AVG_POOL_PARAMS = (Param("kernel", (2, 3)), Param("stride", (1, 2)), Param("padding", (0, 1)),
                    Param("ceil_mode", (False, True)), Param("count_include_pad", (True, False)))


def per_dim(v: Any, spatial: int, name: str = "value") -> tuple[int, ...]:
    """A pool / window parameter as one int per spatial dim (from the left)."""
    if isinstance(v, (tuple, list)):
        if len(v) == 1:
            return (int(v[0]),) * spatial
        if len(v) != spatial:
            raise ValueError(f"{name} {tuple(v)} has {len(v)} values for {spatial} spatial dims")
        return tuple(int(x) for x in v)
    return (int(v),) * spatial


def pool_window(p: dict[str, Any], spatial: int) -> dict[str, tuple[int, ...]]:
    """Per-dim kernel, stride (default: the kernel), padding and dilation of a pool's params."""
    k = per_dim(p["kernel"], spatial, "kernel")
    s = p.get("stride")
    return {"kernel": k, "stride": k if s in (None, (), []) else per_dim(s, spatial, "stride"),
            "padding": per_dim(p.get("padding", 0), spatial, "padding"),
            "dilation": per_dim(p.get("dilation", 1), spatial, "dilation")}


def pool_out_size(size: int, k: int, s: int, pad: int, dil: int, ceil: bool) -> int:
    """torch's pooled length of a `size`-long dim (ceil_mode: a last window must start inside the
    input or its left padding)."""
    span = size + 2 * pad - dil * (k - 1) - 1
    out = (span + (s - 1 if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= size + pad:
        out -= 1
    return out


def _pool_shape(spatial: int, whole_kernel: bool = False):
    """whole_kernel: every input dim holds a whole kernel, padding aside (torch's avg_pool3d)."""
    def rule(a, o, p, c):
        x = a[0]
        win = pool_window(p, spatial)
        ceil = bool(p.get("ceil_mode", False))
        cs = [x.rank == spatial + 2, *keep_except(x, o, list(range(spatial)))]
        for m in range(spatial):
            d = spatial - 1 - m  # slot m from the right is spatial dim d from the left
            k, s, pad, dil = (win[key][d] for key in ("kernel", "stride", "padding", "dilation"))
            span = x.dims[m] + 2 * pad - dil * (k - 1) - 1  # may be negative under ceil_mode
            cs.append(o.dims[m] >= 1)
            if whole_kernel:
                cs.append(x.dims[m] >= k)
            if ceil:
                up = (span + s - 1) / s + 1
                cs.append(o.dims[m] == z3.If((up - 1) * s >= x.dims[m] + pad, up - 1, up))
            else:
                cs.append(o.dims[m] == span / s + 1)
        return cs

    return rule


def _pool_call(fn: str, spatial: int, is_max: bool):
    def call(a: list[str], p: dict[str, Any]) -> str:
        args = [f"kernel_size={p['kernel']!r}", f"stride={p.get('stride') or p['kernel']!r}",
                f"padding={p.get('padding', 0)!r}"]
        if is_max and p.get("dilation", 1) != 1:
            args.append(f"dilation={p['dilation']!r}")
        if p.get("ceil_mode"):
            args.append("ceil_mode=True")
        if not is_max and not p.get("count_include_pad", True):
            args.append("count_include_pad=False")
        if not is_max and p.get("divisor_override") is not None:
            args.append(f"divisor_override={p['divisor_override']!r}")
        return f"{fn}({a[0]}, {', '.join(args)})"

    return call


def _window_volume(p: dict[str, Any], spatial: int) -> int:
    return numel(per_dim(p["kernel"], spatial, "kernel"))


def _pool(name: str, fn: str, spatial: int) -> None:
    is_max = name.startswith("max")
    register(OpSpec(
        name=name, category="pool", arity=1, call=_pool_call(fn, spatial, is_max),
        shape=_pool_shape(spatial, whole_kernel=spatial == 3 and not is_max),
        flops=lambda ins, o, p: numel(o) * _window_volume(p, spatial),
        params=_MAX_POOL_PARAMS if is_max else _AVG_POOL_PARAMS, min_rank=spatial + 2, out_range="first",
        doc=(f"{fn}(x, kernel_size, stride, padding, " + ("dilation, ceil_mode)" if is_max else
             "ceil_mode, count_include_pad)") + (": padding is -inf" if is_max else "")),
        log_flops=lambda a, o, p, c: sum(o.logs) + _window_volume(p, spatial).bit_length(),
    ))


for _sp in (1, 2, 3):
    _pool(f"max_pool{_sp}d", f"F.max_pool{_sp}d", _sp)
    _pool(f"avg_pool{_sp}d", f"F.avg_pool{_sp}d", _sp)


def _adaptive_global(spatial: int) -> None:
    name = f"adaptive_avg_pool{spatial}d"

    def rule(a, o, p, c):
        x = a[0]
        return [x.rank == spatial + 2, *keep_except(x, o, list(range(spatial))),
                *[o.dims[m] == 1 for m in range(spatial)], z3.Or(*[x.dims[m] >= 2 for m in range(spatial)])]

    register(OpSpec(
        name=name, category="pool", arity=1, call=lambda a, p: f"F.{name}({a[0]}, 1)",
        shape=rule, flops=lambda ins, o, p: numel(ins[0]), min_rank=spatial + 2, out_range="first",
        doc=f"F.{name}(x, 1): global average pool",
    ))


def adaptive_windows(size: int, out: int) -> list[tuple[int, int]]:
    """[start, end) of each of the `out` windows torch's adaptive pools average over a `size`-long
    dim: floor(i * size / out) to ceil((i + 1) * size / out)."""
    return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


def _adaptive_sized(spatial: int) -> None:
    name = f"adaptive_avg_pool{spatial}d_windows"
    fn = f"F.adaptive_avg_pool{spatial}d"

    def rule(a, o, p, c):
        x = a[0]
        size = per_dim(p["size"], spatial, "size")
        return [x.rank == spatial + 2, *keep_except(x, o, list(range(spatial))),
                *[o.dims[m] == size[spatial - 1 - m] for m in range(spatial)],
                *[x.dims[m] >= 2 for m in range(spatial)]]

    def flops(ins, o, p):
        vol = 1
        for d in range(spatial):
            vol *= max(e - s for s, e in adaptive_windows(ins[0][2 + d], o[2 + d]))
        return numel(o) * vol

    register(OpSpec(
        name=name, category="pool", arity=1, call=lambda a, p: f"{fn}({a[0]}, {p['size']!r})",
        shape=rule, flops=flops, params=(Param("size", (2, 3)),), min_rank=spatial + 2, out_range="first",
        doc=f"{fn}(x, size) to an output size other than 1: each output averages its own window",
    ))


for _sp in (1, 2, 3):
    _adaptive_global(_sp)
    _adaptive_sized(_sp)
