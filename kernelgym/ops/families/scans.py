"""Cumulative ops (scans) along one dim: cumsum, cumprod, cummax, logcumsumexp, optionally
reversed (suffix scans) or exclusive."""

from __future__ import annotations

from typing import Any

from kernelgym.ops.registry import per_out, register
from kernelgym.ops.spec import REAL, OpSpec, Param, same_shape

# ---- cumulative ----------------------------------------------------------------------------------


def _scan_call(expr: str, identity: str | None):
    """The torch expression of a scan along ``dim`` (from the right), optionally reversed (a suffix
    scan: flip, scan, flip) and / or exclusive (each output leaves out its own element: the scan of
    all but the last element, after an `identity`-filled first slot; KernelBench's idiom)."""

    def call(a: list[str], p: dict[str, Any]) -> str:
        x, d = a[0], -p["dim"]
        scan = lambda t: expr.format(t, dim=d)  # noqa: E731
        rev, exc = bool(p.get("reverse")), bool(p.get("exclusive"))
        if not exc:
            return f"{scan(f'{x}.flip({d})')}.flip({d})" if rev else scan(x)
        n = p["_in"][0][d]
        fill = f"torch.{identity}_like({x}.narrow({d}, 0, 1))"
        if rev:
            return f"torch.cat([{scan(f'{x}.narrow({d}, 1, {n - 1}).flip({d})')}.flip({d}), {fill}], dim={d})"
        return f"torch.cat([{fill}, {scan(f'{x}.narrow({d}, 0, {n - 1})')}], dim={d})"

    return call


def _cumulative(name: str, expr: str, out: int | str = "first", flops: int = 1, identity: str | None = None) -> None:
    """A scan along one dim. `identity` ("zeros" / "ones") allows exclusive scans."""
    params = (Param("dim", (1, 2)), Param("reverse", (False, True)))
    if identity:
        params += (Param("exclusive", (False, True)),)
    register(OpSpec(
        name=name, category="cumulative", arity=1,
        call=_scan_call(expr, identity),
        shape=lambda a, o, p, c: same_shape(a[0], o) + [a[0].rank >= p["dim"], a[0].dims[p["dim"] - 1] >= 2],
        flops=per_out(flops), params=params, out_range=out,
        doc=expr + " (reverse: a suffix scan" + (", exclusive: without the element itself)" if identity else ")"),
    ))


_cumulative("cumsum", "torch.cumsum({0}, dim={dim})", identity="zeros")
_cumulative("cumprod", "torch.cumprod({0}, dim={dim})", identity="ones")
_cumulative("cummax", "torch.cummax({0}, dim={dim}).values")
_cumulative("logcumsumexp", "torch.logcumsumexp({0}, dim={dim})", out=REAL, flops=4)
