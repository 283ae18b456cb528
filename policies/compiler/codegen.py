"""Kernel text generation: code blocks, tile coordinates and the pointwise value generator.

Every value a kernel computes is asked for *at coordinates*: a list of index expressions, one per
dim of the value's shape, each a tensor over the kernel's tile (or a constant). The generator
inlines the pointwise members of a group by recursing into their arguments at derived coordinates
(broadcasting drops or zeroes dims, a transpose swaps two, a pool visits a window...), loads
everything else from global memory, and caches each (value, coordinates, mask) once per code
block, so a chain of elementwise ops becomes one expression per op over registers.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from kernelgym.ops.catalog import MASK_CMPS, adaptive_windows, pool_window
from policies.compiler.ir import POOLS, CompileError, Program, Ref, numel

INDENT = "    "
NEG_INF = '-float("inf")'


class Block:
    """Lines of code at one indentation; may hold nested blocks (loop bodies, reserved slots)."""

    def __init__(self, indent: int):
        self.indent = indent
        self.items: list[str | Block] = []

    def add(self, line: str) -> None:
        self.items.append(line)

    def slot(self) -> Block:
        """A nested block at the same indent, kept at the current position (filled later)."""
        b = Block(self.indent)
        self.items.append(b)
        return b

    def child(self) -> Block:
        b = Block(self.indent + 1)
        self.items.append(b)
        return b

    def render(self, out: list[str]) -> None:
        for it in self.items:
            if isinstance(it, Block):
                it.render(out)
            else:
                out.append(INDENT * self.indent + it if it else "")


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

    `flat` is the row-major flat index when known (then a load from a contiguous tensor of this
    shape needs no index arithmetic); `key` identifies the coordinates for caching.
    """

    shape: tuple[int, ...]
    dims: list[Expr]
    key: Hashable
    flat: str | None = None
    flat_axes: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if len(self.dims) != len(self.shape):
            raise AssertionError(f"coords rank {len(self.dims)} != shape rank {len(self.shape)}")

    @property
    def axes(self) -> frozenset[str]:
        out: frozenset[str] = frozenset()
        for d in self.dims:
            out |= d.axes
        return out


def strides(shape: Sequence[int]) -> list[int]:
    out = [1] * len(shape)
    for k in range(len(shape) - 2, -1, -1):
        out[k] = out[k + 1] * shape[k + 1]
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
    return Coords(shape, dims, ("bc", c.key, shape), c.flat if same else None, c.flat_axes if same else frozenset())


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


# Elementwise formulas over fp32 registers; {x} / {a}, {b} are variable names, the rest parameters.
UNARY = {
    "relu": "tl.maximum({x}, 0.0)",
    "relu6": "tl.minimum(tl.maximum({x}, 0.0), 6.0)",
    "leaky_relu": "tl.where({x} > 0, {x}, {x} * {slope})",
    "elu": "tl.where({x} > 0, {x}, {alpha} * (tl.exp({x}) - 1.0))",
    "selu": "1.0507009873554805 * tl.where({x} > 0, {x}, 1.6732632423543772 * (tl.exp({x}) - 1.0))",
    "gelu": "0.5 * {x} * (1.0 + tl.erf({x} * 0.7071067811865476))",
    "gelu_tanh": "0.5 * {x} * (1.0 + _tanh(0.7978845608028654 * ({x} + 0.044715 * {x} * {x} * {x})))",
    "silu": "{x} * tl.sigmoid({x})",
    "mish": "{x} * _tanh(_softplus({x}))",
    "sigmoid": "tl.sigmoid({x})",
    "logsigmoid": "tl.minimum({x}, 0.0) - tl.log(1.0 + tl.exp(-tl.abs({x})))",
    "hardsigmoid": "tl.minimum(tl.maximum({x} / 6.0 + 0.5, 0.0), 1.0)",
    "hardswish": "{x} * tl.minimum(tl.maximum({x} + 3.0, 0.0), 6.0) / 6.0",
    "hardtanh": "tl.minimum(tl.maximum({x}, {lo}), {hi})",
    "softplus": "_softplus({x})",
    "softsign": "{x} / (1.0 + tl.abs({x}))",
    "tanh": "_tanh({x})",
    "exp": "tl.exp({x})",
    "expm1": "tl.exp({x}) - 1.0",
    "log": "tl.log({x})",
    "log1p": "tl.log(1.0 + {x})",
    "sqrt": "tl.sqrt({x})",
    "rsqrt": "1.0 / tl.sqrt({x})",
    "reciprocal": "1.0 / {x}",
    "abs": "tl.abs({x})",
    "neg": "-{x}",
    "square": "{x} * {x}",
    "sin": "tl.sin({x})",
    "cos": "tl.cos({x})",
    "erf": "tl.erf({x})",
    "add_scalar": "{x} + {c}",
    "mul_scalar": "{x} * {c}",
    "div_scalar": "{x} / {c}",
}
BINARY = {
    "add": "{a} + {b}",
    "sub": "{a} - {b}",
    "mul": "{a} * {b}",
    "div": "{a} / {b}",
    "maximum": "tl.maximum({a}, {b})",
    "minimum": "tl.minimum({a}, {b})",
    "where_gt": "tl.where({a} > 0, {a}, {b})",
    "masked_fill": "tl.where({b} < 0, 0.0, {a})",
}
DEFAULT_PARAMS = {"elu": {"alpha": 1.0}}
# Views and copies lowered as a coordinate map into their argument (`KernelWriter._view_copy_coords`).
VIEW_COPY_OPS = frozenset({"unsqueeze", "squeeze", "flip", "narrow", "select", "expand", "repeat", "reshape"})

# @triton.jit helpers the formulas may call, emitted once per module when used.
HELPERS = {
    "_tanh": ("def _tanh(x):\n"
              "    # tanh through the sigmoid: tl has no tanh on every Triton version\n"
              "    return 2.0 * tl.sigmoid(2.0 * x) - 1.0\n"),
    "_softplus": ("def _softplus(x):\n"
                  "    # torch's softplus (beta 1, threshold 20)\n"
                  "    return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x))))\n"),
    "_max_fn": "def _max_fn(a, b):\n    return tl.maximum(a, b)\n",
    "_mul_fn": "def _mul_fn(a, b):\n    return a * b\n",
    "_lse_fn": ("def _lse_fn(a, b):\n"
                "    # log(exp(a) + exp(b)), exact when both are -inf (masked lanes)\n"
                "    m = tl.maximum(a, b)\n"
                "    m_safe = tl.where(m == -float(\"inf\"), 0.0, m)\n"
                "    return m_safe + tl.log(tl.exp(a - m_safe) + tl.exp(b - m_safe))\n"),
}
HELPER_ORDER = ("_tanh", "_softplus", "_max_fn", "_lse_fn", "_mul_fn")


@dataclass
class Tile:
    """The lanes code is currently written for: their mask and the axes they span."""

    axes: frozenset[str]
    mask: str
    zero: Expr  # an int32 zero tensor of the full tile shape (to give loads the tile's shape)


@dataclass
class KernelWriter:
    """Writes one kernel's body; `value(ref, coords)` generates (and caches) any value."""

    prog: Program
    group: set[int]
    anchor: int | None = None
    params: list[tuple[str, str]] = field(default_factory=list)  # (kernel param, forward expr)
    helpers: set[str] = field(default_factory=set)
    stored: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Block(1)
        self.stack: list[Block] = [self.root]
        self.tiles: list[Tile] = []
        self.cache: dict[Hashable, tuple[str, Block]] = {}
        self.names: set[str] = set()
        # (node, coordinates key) -> its value there, computed by the template itself (the
        # anchor's result; a row's tail reduction), not by `_node_expr`
        self.provided: dict[tuple[int, Hashable], str] = {}
        self._ptr: dict[Hashable, str] = {}
        self._ids = itertools.count()
        self.float_dtype = {"float32": None, "float16": "tl.float16", "bfloat16": "tl.bfloat16"}[self.prog.dtype]

    # -- code emission ---------------------------------------------------------------------------
    def emit(self, line: str) -> None:
        self.stack[-1].add(line)

    def fresh(self, base: str) -> str:
        name = base
        n = 1
        while name in self.names:
            name = f"{base}_{n}"
            n += 1
        self.names.add(name)
        return name

    def assign(self, base: str, expr: str) -> str:
        name = self.fresh(base)
        self.emit(f"{name} = {expr}")
        return name

    @contextmanager
    def block(self, header: str) -> Iterator[None]:
        """A nested block (loop, if): values cached inside are not visible after it."""
        self.emit(header)
        self.stack.append(self.stack[-1].child())
        try:
            yield
        finally:
            blk = self.stack.pop()
            self.cache = {k: v for k, v in self.cache.items() if v[1] is not blk and self._visible(v[1])}

    def _visible(self, blk: Block) -> bool:
        return any(blk is b for b in self.stack)

    @contextmanager
    def tile(self, axes: Sequence[str], mask: str, shape: Sequence[str]) -> Iterator[Tile]:
        """Code for the lanes of a tile of block-size names `shape` over `axes`, masked by `mask`."""
        slot = self.stack[-1].slot()
        shape_txt = ", ".join(shape)

        def define_zero() -> str:
            name = self.fresh("zero" if len(shape) == 1 else f"zero{len(shape)}")
            slot.add(f"{name} = tl.zeros([{shape_txt}], dtype=tl.int32)")
            return name

        t = Tile(frozenset(axes), mask, Expr(None, frozenset(axes), define_zero))
        self.tiles.append(t)
        try:
            yield t
        finally:
            self.tiles.pop()

    def lazy(self, base: str, expr: Callable[[], str], axes: frozenset[str], slot: Block | None = None) -> Expr:
        """An Expr assigned to a variable in `slot` (default: here) the first time it is used."""
        slot = slot if slot is not None else self.stack[-1].slot()

        def define() -> str:
            name = self.fresh(base)
            slot.add(f"{name} = {expr()}")
            return name

        return Expr(None, axes, define)

    def decompose(self, flat: str, shape: Sequence[int], axes: frozenset[str], prefix: str,
                  view: Callable[[str], str] = lambda s: s, view_axes: frozenset[str] | None = None) -> list[Expr]:
        """Lazy coordinates of a row-major `flat` index over `shape`, defined here when first used;
        `view` wraps each (e.g. ``c[:, None]``) for use in a larger tile."""
        shape = tuple(shape)
        st = strides(shape)
        slot = self.stack[-1].slot()
        dims: list[Expr] = []
        for k, size in enumerate(shape):
            if size == 1:
                dims.append(ZERO)
                continue
            if k == 0 or all(s == 1 for s in shape[:k]):
                e = f"{flat} // {st[k]}" if st[k] > 1 else flat
            elif st[k] == 1:
                e = f"{flat} % {size}"
            else:
                e = f"{flat} // {st[k]} % {size}"
            if e == flat:
                base = Expr(flat, axes)
            else:
                base = self.lazy(f"{prefix}{k}", (lambda e=e: e), axes, slot)
            if view(flat) == flat:
                dims.append(base)
            else:
                dims.append(Expr(None, view_axes if view_axes is not None else axes,
                                 (lambda b=base: view(str(b)))))
        return dims

    def new_key(self) -> Hashable:
        return ("base", next(self._ids))

    # -- kernel parameters -----------------------------------------------------------------------
    def ptr(self, ref: Hashable) -> str:
        """Kernel parameter name of the tensor behind `ref` (registered on first use)."""
        if ref in self._ptr:
            return self._ptr[ref]
        name, expr = self._ptr_names(ref)
        name = self.fresh(name)
        self._ptr[ref] = name
        self.params.append((name, expr))
        return name

    def scalar(self, ref: Hashable) -> str:
        """Kernel parameter holding the number input behind `ref` (registered on first use)."""
        if ref not in self._ptr:
            name = self.fresh(f"x{ref[1]}")  # type: ignore[index]
            self._ptr[ref] = name
            self.params.append((name, f"x{ref[1]}"))  # type: ignore[index]
        return self._ptr[ref]

    def _ptr_names(self, ref: Hashable) -> tuple[str, str]:
        kind, k = ref  # type: ignore[misc]
        if kind == "input":
            return f"x{k}_ptr", f"x{k}"
        if kind == "node":
            return f"v{k}_ptr", f"v{k}"
        if kind == "state":
            return state_var(self.prog.state[k].key) + "_ptr", state_expr(self.prog, self.prog.state[k].key)
        if kind == "w":
            return state_var(k) + "_ptr", state_expr(self.prog, k)
        raise AssertionError(ref)

    def weight_ref(self, node: int, role: str) -> tuple[str, str] | None:
        key = self.prog.weights.get(node, {}).get(role)
        return ("w", key) if key is not None else None

    # -- offsets and loads -----------------------------------------------------------------------
    def offset(self, c: Coords) -> str:
        """Flat offset of coordinates `c` in a contiguous tensor, shaped like the current tile."""
        t = self.tiles[-1]
        if c.flat is not None:
            text, axes = c.flat, c.flat_axes
        else:
            terms, axes = [], frozenset()
            for d, s, size in zip(c.dims, strides(c.shape), c.shape):
                if size == 1 or d.is_zero:
                    continue
                terms.append(f"{paren(d)} * {s}" if s != 1 else str(d))
                axes |= d.axes
            text = " + ".join(terms) if terms else "0"
        if not t.axes <= axes:
            text = str(t.zero) if text == "0" else f"{text} + {t.zero}"
        return text

    def load(self, ref: Hashable, c: Coords, mask: str | None = None, name: str | None = None,
             index: bool = False) -> str:
        if self.prog.is_scalar(ref):   # a number argument of forward: passed to the kernel by value
            return self.scalar(ref)
        mask = mask or self.tiles[-1].mask
        key = ("load", ref, c.key, mask)
        hit = self._cached(key)
        if hit:
            return hit
        ptr = self.ptr(ref)
        other = "0" if index else "0.0"
        expr = f"tl.load({ptr} + {self.offset(c)}, mask={mask}, other={other})"
        if not index and self.float_dtype is not None:
            expr += ".to(tl.float32)"
        var = self.assign(name or ptr.removesuffix("_ptr"), expr)
        self.cache[key] = (var, self.stack[-1])
        return var

    def _cached(self, key: Hashable) -> str | None:
        hit = self.cache.get(key)
        if hit and self._visible(hit[1]):
            return hit[0]
        return None

    def store(self, node: int, c: Coords, mask: str | None = None, atomic: bool = False) -> None:
        """Store node's value at `c`; `atomic` adds it into the (zeroed) output instead: split-K
        programs each add a partial sum."""
        mask = mask or self.tiles[-1].mask
        val = self.value(("node", node), c, mask)
        ptr = self.ptr(("node", node))
        if atomic:
            self.emit(f'tl.atomic_add({ptr} + {self.offset(c)}, {val}, mask={mask}, sem="relaxed")')
        else:
            self.emit(f"tl.store({ptr} + {self.offset(c)}, {val}, mask={mask})")
        if node not in self.stored:
            self.stored.append(node)

    # -- values ----------------------------------------------------------------------------------
    def value(self, ref: Ref, c: Coords, mask: str | None = None) -> str:
        """The value of a graph input, node or state tensor at coordinates `c` (a variable name)."""
        mask = mask or self.tiles[-1].mask
        kind, j = ref
        if kind != "node" or j not in self.group:
            return self.load(ref, c, mask, index=self.prog.is_index(ref))
        hit = self.provided.get((j, c.key))
        if hit is not None:
            return hit if hit.isidentifier() else paren(hit)
        if j == self.anchor:
            raise CompileError(f"node {j} (the kernel's anchor) is read where it is not computed")
        key = ("node", j, c.key, mask)
        hit = self._cached(key)
        if hit:
            return hit
        expr = self._node_expr(j, c, mask)
        var = self.assign(f"v{j}", expr)
        self.cache[key] = (var, self.stack[-1])
        return var

    def arg(self, j: int, pos: int, c: Coords, mask: str) -> str:
        ref = self.prog.graph.nodes[j].args[pos]
        return self.value(ref, broadcast(c, self.prog.shape(ref)), mask)

    def _node_expr(self, j: int, c: Coords, mask: str) -> str:
        node = self.prog.graph.nodes[j]
        op, p = node.op, {**DEFAULT_PARAMS.get(node.op, {}), **node.params}
        if op in UNARY:
            x = self.arg(j, 0, c, mask)
            return self._formula(UNARY[op], p, x=x)
        if op in BINARY:
            a = self.arg(j, 0, c, mask)
            b = self.arg(j, 1, c, mask)
            return BINARY[op].format(a=a, b=b)
        if op == "pow_scalar":
            x = self.arg(j, 0, c, mask)
            e = p["c"]
            if float(e) == int(e) and 1 <= int(e) <= 4:
                return " * ".join([x] * int(e))
            return f"tl.exp({lit(e)} * tl.log({x}))"
        if op == "clamp":
            x = self.arg(j, 0, c, mask)
            if p.get("lo") is not None:
                x = f"tl.maximum({x}, {lit(p['lo'])})"
            if p.get("hi") is not None:
                x = f"tl.minimum({x}, {lit(p['hi'])})"
            return x
        if op == "tril":
            x = self.arg(j, 0, c, mask)
            diag = int(p.get("diagonal", 0))
            rhs = f"{c.dims[-2]}" if diag == 0 else f"{paren(c.dims[-2])} + {diag}"
            return f"tl.where({c.dims[-1]} <= {rhs}, {x}, 0.0)"
        if op == "batch_norm":
            return self._batch_norm(j, c, mask)
        if op in ("transpose", "permute", "flatten", "merge_last"):
            return self.value(node.args[0], self._view_coords(j, c), mask)
        if op == "concat":
            return self._concat(j, c, mask)
        if op == "gather":
            return self._gather(j, c, mask)
        if op == "pick_last":
            return self._pick_last(j, c, mask)
        if op == "embedding":
            return self._embedding(j, c, mask)
        if op in POOLS:
            return self._pool(j, c, mask)
        if op == "clone":
            return self.arg(j, 0, c, mask)
        if op == "triu":
            x = self.arg(j, 0, c, mask)
            diag = int(p.get("diagonal", 0))
            rhs = f"{c.dims[-2]}" if diag == 0 else f"{paren(c.dims[-2])} + {diag}"
            return f"tl.where({c.dims[-1]} >= {rhs}, {x}, 0.0)"
        if op in VIEW_COPY_OPS:
            return self.value(node.args[0], self._view_copy_coords(j, c), mask)
        if op == "masked_fill_cmp":
            x = self.arg(j, 0, c, mask)
            m = self.arg(j, 1, c, mask)
            return f"tl.where({m} {MASK_CMPS[p['cmp']]} {lit(p['c'])}, {lit(p['value'])}, {x})"
        if op == "pad":
            return self._pad(j, c, mask)
        raise CompileError(f"node {j}: op {op!r} has no pointwise lowering")

    def _formula(self, template: str, p: dict[str, Any], **vals: str) -> str:
        for h in ("_tanh", "_softplus"):
            if h in template:
                self.helpers.add(h)
        params = {k: lit(v) for k, v in p.items() if not k.startswith("_") and v is not None}
        return template.format(**vals, **params)

    def _batch_norm(self, j: int, c: Coords, mask: str) -> str:
        node = self.prog.graph.nodes[j]
        x = self.arg(j, 0, c, mask)
        ch = Coords((self.prog.shape(node.args[0])[1],), [c.dims[1]], ("ch", c.key))
        eps = lit(node.params.get("eps", 1e-5))
        rm = self.load(self.weight_ref(j, "running_mean"), ch, mask, name=f"n{j}_mean")
        rv = self.load(self.weight_ref(j, "running_var"), ch, mask, name=f"n{j}_var")
        out = f"({x} - {rm}) / tl.sqrt({rv} + {eps})"
        if self.weight_ref(j, "weight"):
            w = self.load(self.weight_ref(j, "weight"), ch, mask, name=f"n{j}_w")
            out = f"{out} * {w}"
        if self.weight_ref(j, "bias"):
            b = self.load(self.weight_ref(j, "bias"), ch, mask, name=f"n{j}_b")
            out = f"{out} + {b}"
        return out

    def _view_coords(self, j: int, c: Coords) -> Coords:
        """Coordinates in the argument of a data-movement op for output coordinates `c`."""
        node = self.prog.graph.nodes[j]
        src = self.prog.shape(node.args[0])
        if node.op == "transpose":
            d0, d1 = node.params.get("dims", (-2, -1))
            dims = list(c.dims)
            dims[d0], dims[d1] = dims[d1], dims[d0]
            return Coords(src, dims, ("T", c.key, d0, d1))
        if node.op == "permute":
            perm = node.params.get("perm") or (0, *range(2, len(src)), 1)
            dims: list[Expr] = [ZERO] * len(src)
            for out_axis, in_axis in enumerate(perm):
                dims[in_axis] = c.dims[out_axis]
            return Coords(src, dims, ("P", c.key, tuple(perm)))
        if node.op in ("flatten", "merge_last"):
            start = int(node.params.get("start", 1 if node.op == "flatten" else len(src) - 2))
            end = int(node.params.get("end", len(src) - 1))  # both catalog ops merge through the last dim
            inner = src[start:end + 1]
            f = c.dims[start]
            dims = list(c.dims[:start])
            st = strides(inner)
            for k, size in enumerate(inner):
                if size == 1:
                    dims.append(ZERO)
                elif k == 0:
                    dims.append(Expr(f"{paren(f)} // {st[k]}" if st[k] > 1 else str(f), f.axes))
                elif st[k] == 1:
                    dims.append(Expr(f"{paren(f)} % {size}", f.axes))
                else:
                    dims.append(Expr(f"{paren(f)} // {st[k]} % {size}", f.axes))
            dims += list(c.dims[start + 1:])
            return Coords(src, dims, ("F", c.key, start, end), c.flat, c.flat_axes)
        raise AssertionError(node.op)

    def _view_copy_coords(self, j: int, c: Coords) -> Coords:
        """Coordinates in the argument of a view or copy (`VIEW_COPY_OPS`) for output coordinates
        `c`. Slot parameters ``dim`` count from the right (the catalog's); the tracer may give
        ``dims`` (axes from the left) for a flip over several dims."""
        node = self.prog.graph.nodes[j]
        op, p = node.op, node.params
        src = tuple(self.prog.shape(node.args[0]))
        out = tuple(c.shape)
        key = ("VC", op, j, c.key)
        if op == "unsqueeze":  # same elements in the same order: the flat index carries over
            axis = len(out) - int(p["dim"])
            return Coords(src, c.dims[:axis] + c.dims[axis + 1:], key, c.flat, c.flat_axes)
        if op in ("squeeze", "select"):
            axis = len(src) - int(p["dim"])
            index = int(p.get("index", 0))
            dims = c.dims[:axis] + [Expr(str(index)) if index else ZERO] + c.dims[axis:]
            return Coords(src, dims, key, c.flat if op == "squeeze" else None,
                          c.flat_axes if op == "squeeze" else frozenset())
        if op == "flip":
            axes = p["dims"] if "dims" in p else (len(src) - int(p["dim"]),)
            dims = list(c.dims)
            for a in axes:
                dims[a] = ZERO if src[a] == 1 else Expr(f"{src[a] - 1} - {paren(c.dims[a])}", c.dims[a].axes)
            return Coords(src, dims, key)
        if op == "narrow":
            axis = len(src) - int(p["dim"])
            start = int(p["start"])
            dims = list(c.dims)
            if start:
                dims[axis] = Expr(f"{paren(c.dims[axis])} + {start}", c.dims[axis].axes)
            return Coords(src, dims, key)
        if op == "reshape":
            return self._reshape_coords(src, c, key)
        if op == "expand":  # broadcasting: size-1 (and new leading) dims read index 0
            return broadcast(c, src)
        if op == "repeat":  # tiles: coordinate modulo the argument's size (new leading dims dropped)
            lead = len(out) - len(src)
            dims = []
            for a, size in enumerate(src):
                d = c.dims[lead + a]
                dims.append(d if size == out[lead + a] else ZERO if size == 1 else
                            Expr(f"{paren(d)} % {size}", d.axes))
            return Coords(src, dims, key)
        raise AssertionError(op)

    @staticmethod
    def _reshape_coords(src: tuple[int, ...], c: Coords, key: Hashable) -> Coords:
        """Coordinates in `src` of the same row-major element as `c` in a reshape of it. Leading and
        trailing dims the two shapes share carry over; only the dims between them go through their
        row-major flat index (output coordinates -> flat -> input coordinates)."""
        out = tuple(c.shape)
        if math.prod(src) != math.prod(out):
            raise CompileError(f"reshape {src} -> {out} changes the number of elements")
        lead = 0
        while lead < min(len(src), len(out)) and src[lead] == out[lead]:
            lead += 1
        tail = 0
        while tail < min(len(src), len(out)) - lead and src[-1 - tail] == out[-1 - tail]:
            tail += 1
        mid_out, mid_src = out[lead:len(out) - tail], src[lead:len(src) - tail]
        terms, axes = [], frozenset()
        for d, st, size in zip(c.dims[lead:len(out) - tail], strides(mid_out), mid_out):
            if size == 1 or d.is_zero:
                continue
            terms.append(f"{paren(d)} * {st}" if st > 1 else str(d))
            axes |= d.axes
        flat = Expr(" + ".join(terms) if terms else "0", axes)
        dims = list(c.dims[:lead])
        for k, (st, size) in enumerate(zip(strides(mid_src), mid_src)):
            if size == 1 or flat.is_zero:
                dims.append(ZERO)
            elif k == 0:  # the leading dim needs no modulo (the flat index is in range)
                dims.append(Expr(f"{paren(flat)} // {st}" if st > 1 else str(flat), axes))
            elif st == 1:
                dims.append(Expr(f"{paren(flat)} % {size}", axes))
            else:
                dims.append(Expr(f"{paren(flat)} // {st} % {size}", axes))
        dims += list(c.dims[len(out) - tail:])
        return Coords(src, dims, key, c.flat, c.flat_axes)

    def _concat(self, j: int, c: Coords, mask: str) -> str:
        node = self.prog.graph.nodes[j]
        axis = len(c.shape) - int(node.params["dim"])
        a_ref, b_ref = node.args
        sa, sb = self.prog.shape(a_ref), self.prog.shape(b_ref)
        split = sa[axis]
        d = c.dims[axis]
        in_a = self.assign("in_a", f"{d} < {split}")
        ma = self.assign("mask_a", f"{mask} & {in_a}")
        mb = self.assign("mask_b", f"{mask} & ({d} >= {split})")
        dims_a = list(c.dims)
        dims_b = list(c.dims)
        dims_b[axis] = Expr(f"{paren(d)} - {split}", d.axes)
        va = self.value(a_ref, Coords(sa, dims_a, ("catA", c.key)), ma)
        vb = self.value(b_ref, Coords(sb, dims_b, ("catB", c.key)), mb)
        return f"tl.where({in_a}, {va}, {vb})"

    def _pad(self, j: int, c: Coords, mask: str) -> str:
        """F.pad (constant): the input element at the shifted coordinates inside, the fill value in
        the border (loads masked off there)."""
        node = self.prog.graph.nodes[j]
        pads, src = node.params["pads"], tuple(self.prog.shape(node.args[0]))
        dims, inside = list(c.dims), []
        for m in range(len(pads) // 2):
            axis, before = len(src) - 1 - m, int(pads[2 * m])
            d = c.dims[axis]
            if before:
                dims[axis] = Expr(f"{paren(d)} - {before}", d.axes)
            if pads[2 * m] or pads[2 * m + 1]:
                inside.append(f"({paren(d)} >= {before}) & ({paren(d)} < {before + src[axis]})")
        if not inside:
            return self.value(node.args[0], Coords(src, dims, ("pad", j, c.key)), mask)
        ins = self.assign("inside", " & ".join(inside))
        v = self.value(node.args[0], Coords(src, dims, ("pad", j, c.key)), self.assign("mask_in", f"{mask} & {ins}"))
        return f"tl.where({ins}, {v}, {lit(node.params.get('value', 0.0))})"

    def _gather(self, j: int, c: Coords, mask: str) -> str:
        node = self.prog.graph.nodes[j]
        x_ref, idx_ref = node.args
        idx = self.value(idx_ref, c, mask)
        sx = self.prog.shape(x_ref)
        dims = list(c.dims[:-1]) + [Expr(idx, c.axes)]
        return self.value(x_ref, Coords(sx, dims, ("G", c.key, idx)), mask)

    def _pick_last(self, j: int, c: Coords, mask: str) -> str:
        """x[..., idx[...]]: x (..., C) read at the int index idx (...) holds (cross-entropy's
        target logit)."""
        x_ref, idx_ref = self.prog.graph.nodes[j].args
        idx = self.value(idx_ref, c, mask)
        dims = list(c.dims) + [Expr(idx, c.axes)]
        return self.value(x_ref, Coords(self.prog.shape(x_ref), dims, ("PL", c.key, idx)), mask)

    def _embedding(self, j: int, c: Coords, mask: str) -> str:
        node = self.prog.graph.nodes[j]
        idx_ref = node.args[0]
        si = self.prog.shape(idx_ref)
        ci = Coords(si, list(c.dims[:-1]), ("E", c.key), None)
        idx = self.value(idx_ref, ci, mask)
        wref = self.weight_ref(j, "weight")
        if wref is None:
            raise CompileError(f"node {j}: embedding without a weight")
        wshape = self.prog.state_by_key[wref[1]].shape
        cw = Coords(tuple(wshape), [Expr(idx, c.axes), c.dims[-1]], ("EW", c.key, idx))
        return self.load(wref, cw, mask, name=f"n{j}_row")

    def _pool(self, j: int, c: Coords, mask: str) -> str:
        """A max / average pool at output coordinates `c`: a loop over the window (unrolled with
        tl.static_range when small), -inf / 0 where it leaves the input (padding, ceil_mode)."""
        node = self.prog.graph.nodes[j]
        x_ref = node.args[0]
        sx = self.prog.shape(x_ref)
        op, p = node.op, node.params
        spatial = int(op.split("_pool")[1][0])
        outs = c.dims[len(c.dims) - spatial:]
        sizes = sx[len(sx) - spatial:]
        is_max = op.startswith("max")
        t = self.tiles[-1]
        # a constant coordinate (a length-1 dim) becomes a tensor, so window masks are tensors too
        outs = [o if not o.is_zero else t.zero for o in outs]
        # per spatial dim: (first input index of the window, window length, step, exclusive end or None)
        dims: list[tuple[str, int, int, str | None]] = []
        guard = False  # some window may reach outside the input
        if op.startswith("adaptive"):
            out_sizes = tuple(self.prog.graph.nodes[j].shape)[len(sx) - spatial:]
            for o, size, n_out in zip(outs, sizes, out_sizes):
                longest = max(e - s for s, e in adaptive_windows(size, n_out))
                start = self.assign("win_lo", f"{paren(o)} * {size} // {n_out}")
                end = self.assign("win_hi", f"(({paren(o)} + 1) * {size} + {n_out - 1}) // {n_out}")
                ragged = any(e - s != longest for s, e in adaptive_windows(size, n_out))
                dims.append((start, longest, 1, end if ragged else None))
        else:
            win = pool_window(p, spatial)
            ceil = bool(p.get("ceil_mode", False))
            for d, (o, size) in enumerate(zip(outs, sizes)):
                k, s, pad, dil = (win[key][d] for key in ("kernel", "stride", "padding", "dilation"))
                base = f"{paren(o)} * {s}" if s != 1 else str(o)
                start = self.assign("win_lo", f"{base} - {pad}" if pad else base)
                dims.append((start, k, dil, None))
                guard = guard or pad > 0 or ceil
        acc = self.fresh("pool_acc")
        self.emit(f"{acc} = {t.zero}.to(tl.float32)" + (f" + {NEG_INF}" if is_max else ""))
        volume = math.prod(n for _, n, _, _ in dims)
        loop = "tl.static_range" if volume <= 64 else "range"
        key = self.new_key()
        idx: list[Expr] = []
        conds: list[str] = []
        with ExitStack() as stack:
            for d, ((start, n, step, end), size) in enumerate(zip(dims, sizes)):
                var = self.fresh(f"kw{d}")
                stack.enter_context(self.block(f"for {var} in {loop}({n}):"))
                at = self.assign(f"pos{d}", f"{start} + {var}" + (f" * {step}" if step != 1 else ""))
                idx.append(Expr(at, c.dims[len(c.dims) - spatial + d].axes))
                if guard:
                    conds.append(f"({at} >= 0) & ({at} < {size})")
                if end is not None:
                    conds.append(f"({at} < {end})")
            inside = self.assign("in_win", " & ".join([mask, *conds])) if conds else mask
            xc = Coords(sx, list(c.dims[: len(c.dims) - spatial]) + idx, ("W", key))
            v = self.value(x_ref, xc, inside)
            if is_max:
                v = f"tl.where({inside}, {v}, {NEG_INF})" if conds else v
                self.emit(f"{acc} = tl.maximum({acc}, {v})")
            else:
                self.emit(f"{acc} += tl.where({inside}, {v}, 0.0)" if conds else f"{acc} += {v}")
        if is_max:
            return acc
        return f"{acc} / {self._pool_divisor(node, dims, sizes)}"

    def _pool_divisor(self, node: Any, dims: list[tuple[str, int, int, str | None]], sizes: Sequence[int]) -> str:
        """torch's averaging count: the window clipped to the padded input (count_include_pad), to
        the input itself (count_include_pad=False), its length (adaptive) or divisor_override."""
        p = node.params
        if p.get("divisor_override"):
            return lit(float(p["divisor_override"]))
        spatial = len(dims)
        if node.op.startswith("adaptive"):
            terms = [f"({end} - {start})" if end is not None else str(n) for start, n, _, end in dims]
        else:
            pads = pool_window(p, spatial)["padding"]
            include = p.get("count_include_pad", True)
            ceil = bool(p.get("ceil_mode", False))
            terms = []
            for (start, k, _, _), size, pad in zip(dims, sizes, pads):
                if not ceil and (include or pad == 0):
                    terms.append(str(k))  # every window lies in the padded input
                    continue
                hi = f"tl.minimum({start} + {k}, {size + pad})"
                if include:
                    terms.append(f"({hi} - {start})")
                else:
                    terms.append(f"(tl.minimum({hi}, {size}) - tl.maximum({start}, 0))")
        if all(t.isdigit() for t in terms):
            return lit(float(math.prod(int(t) for t in terms)))
        return "(" + " * ".join(terms) + ").to(tl.float32)"

    # -- rendering -------------------------------------------------------------------------------
    def body_lines(self) -> list[str]:
        out: list[str] = []
        self.root.render(out)
        return out


def state_var(key: str) -> str:
    """A Python identifier for a state-dict key (``fc.weight`` -> ``fc_weight``)."""
    out = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in key)
    return out if out and not out[0].isdigit() else f"s_{out}"


def state_expr(prog: Program, key: str) -> str:
    """How forward refers to a state tensor: ``self.n0_weight``, ``self.fc.weight`` or
    ``self.get_parameter("layers.0.weight")``."""
    parts = key.split(".")
    if all(p.isidentifier() for p in parts):
        return "self." + key
    entry = prog.state_by_key.get(key)
    getter = "get_buffer" if entry is not None and entry.buffer else "get_parameter"
    return f'self.{getter}("{key}")'


def numel_of(prog: Program, ref: Ref) -> int:
    return numel(prog.shape(ref))
