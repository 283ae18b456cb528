"""Index expressions and tile coordinates: an `Expr` is the text of an index or value over tile
axes (defined lazily, so unused coordinates cost no code), `Coords` one `Expr` per dim of a
tensor, read at each lane of a tile; `broadcast` maps coordinates into a broadcast argument,
`paren` and `lit` write Python/Triton text."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from policies.compiler.ir import CHANNELS_LAST, CompileError

NEG_INF = '-float("inf")'
POS_INF = 'float("inf")'


class Expr:
    """An index or value expression over tile axes; `define` (optional) emits its definition the
    first time the text is needed, so unused coordinates cost no code."""

    def __init__(self, text: str | None = None, axes: frozenset[str] = frozenset(),
                 define: Callable[[], str] | None = None):
        self._text = text
        self.axes = axes
        self._define = define

    def __str__(self) -> str:
        if self._text is None:
            assert self._define is not None
            self._text = self._define()
        return self._text

    @property
    def is_zero(self) -> bool:
        return self._text == "0"


ZERO = Expr("0")


def paren(e: Any) -> str:
    s = str(e)
    if s.isidentifier() or s.replace(".", "", 1).isdigit() or (s.startswith("(") and s.endswith(")")
                                                              and _balanced(s[1:-1])):
        return s
    return f"({s})"


def _balanced(s: str) -> bool:
    depth = 0
    for ch in s:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth < 0:
            return False
    return depth == 0


@dataclass
class Coords:
    """Coordinates of one element per tile lane in a tensor of `shape` (one Expr per dim).

    `flat` is the flat index when known (then a load from a tensor of this shape in layout
    `flat_layout` needs no index arithmetic: "" row-major, "channels_last" the channels-last one);
    `key` identifies the coordinates for caching.
    """

    shape: tuple[int, ...]
    dims: list[Expr]
    key: Hashable
    flat: str | None = None
    flat_axes: frozenset[str] = frozenset()
    flat_layout: str = ""

    def carried_flat(self) -> tuple[str | None, frozenset[str]]:
        """The flat index for coordinates derived from these with the same elements in the same
        row-major order (a view): only a row-major flat index carries over."""
        return (self.flat, self.flat_axes) if self.flat is not None and not self.flat_layout else (None, frozenset())

    def __post_init__(self) -> None:
        if len(self.dims) != len(self.shape):
            raise AssertionError(f"coords rank {len(self.dims)} != shape rank {len(self.shape)}")

    @property
    def axes(self) -> frozenset[str]:
        out: frozenset[str] = frozenset()
        for d in self.dims:
            out |= d.axes
        return out


def layout_order(rank: int, layout: str = "") -> list[int]:
    """The dims of a dense tensor of `layout` from outermost to innermost: row-major, or
    `CHANNELS_LAST` dim 1 innermost (torch.channels_last / channels_last_3d)."""
    return [0, *range(2, rank), 1] if layout == CHANNELS_LAST else list(range(rank))


def strides(shape: Sequence[int], layout: str = "") -> list[int]:
    """Element strides of a dense tensor of `shape` in `layout` (`layout_order`)."""
    out = [1] * len(shape)
    step = 1
    for d in reversed(layout_order(len(shape), layout)):
        out[d] = step
        step *= shape[d]
    return out


def _strip(shape: Sequence[int]) -> tuple[int, ...]:
    s = list(shape)
    while s and s[0] == 1:
        s.pop(0)
    return tuple(s)


def broadcast(c: Coords, shape: Sequence[int]) -> Coords:
    """Coordinates in an argument of `shape` that broadcasts to `c.shape` (right-aligned)."""
    shape = tuple(shape)
    if shape == c.shape:
        return c
    r, rc = len(shape), len(c.shape)
    if r > rc:
        if any(s != 1 for s in shape[: r - rc]):
            raise CompileError(f"shape {shape} does not broadcast to {c.shape}")
        dims = [ZERO] * (r - rc) + list(c.dims)
    else:
        dims = []
        for j in range(r):
            oj = rc - r + j
            if shape[j] == 1:
                dims.append(ZERO)
            elif shape[j] == c.shape[oj]:
                dims.append(c.dims[oj])
            else:
                raise CompileError(f"shape {shape} does not broadcast to {c.shape}")
    same = _strip(shape) == _strip(c.shape)
    return Coords(shape, dims, ("bc", c.key, shape), *(c.carried_flat() if same else (None, frozenset())))


def lit(v: Any) -> str:
    """A Python/Triton literal for a parameter value."""
    if isinstance(v, bool):
        return repr(v)
    if isinstance(v, int):
        return repr(v)
    f = float(v)
    if math.isnan(f):
        return 'float("nan")'
    if f in (float("inf"), float("-inf")):
        return 'float("inf")' if f > 0 else '-float("inf")'
    return repr(f)
