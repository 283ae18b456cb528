"""Kernel text generation: code blocks, tile coordinates and the pointwise value generator.

Every value a kernel computes is asked for *at coordinates*: a list of index expressions, one per
dim of the value's shape, each a tensor over the kernel's tile (or a constant). The generator
inlines the pointwise members of a group by recursing into their arguments at derived coordinates
(broadcasting drops or zeroes dims, a transpose swaps two, a pool visits a window...), loads
everything else from global memory, and caches each (value, coordinates, mask) once per code
block, so a chain of elementwise ops becomes one expression per op over registers.

The writer (`KernelWriter`: code blocks, tiles, kernel parameters, loads, stores and the
pointwise ops' values) is here; coordinates are in `coords`, the formulas in `formulas`, views and
gathers in `views`, pools in `pools`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from kernelgym.ops.catalog import MASK_CMPS
from policies.compiler.coords import ZERO, Coords, Expr, broadcast, lit, paren, strides
from policies.compiler.formulas import BINARY, DEFAULT_PARAMS, UNARY
from policies.compiler.ir import POOLS, CompileError, Program, Ref, numel
from policies.compiler.pools import PoolValues
from policies.compiler.views import VIEW_COPY_OPS, ViewValues

INDENT = "    "


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


@dataclass
class Tile:
    """The lanes code is currently written for: their mask and the axes they span."""

    axes: frozenset[str]
    mask: str
    zero: Expr  # an int32 zero tensor of the full tile shape (to give loads the tile's shape)
    # axis -> its part of `mask` (at the tile's rank), for tiles whose masked-off lanes are only
    # ever stored under `mask` (a product's or convolution's output tile): there a load over some
    # of the axes (a bias, a norm's per-channel parameters) keeps its own shape (`KernelWriter.load`)
    axis_masks: dict[str, str] = field(default_factory=dict)


@dataclass
class KernelWriter(ViewValues, PoolValues):
    """Writes one kernel's body; `value(ref, coords)` generates (and caches) any value."""

    prog: Program
    group: set[int]
    anchor: int | None = None
    params: list[tuple[str, str]] = field(default_factory=list)  # (kernel param, forward expr)
    helpers: set[str] = field(default_factory=set)
    stored: list[int] = field(default_factory=list)
    # kernel parameter -> the TMA descriptor forward passes there (`template.Descriptor`)
    descriptors: dict[str, Any] = field(default_factory=dict)

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
    def tile(self, axes: Sequence[str], mask: str, shape: Sequence[str],
             axis_masks: dict[str, str] | None = None) -> Iterator[Tile]:
        """Code for the lanes of a tile of block-size names `shape` over `axes`, masked by `mask`.

        axis_masks: each axis's part of `mask`, given only for an output tile (see `Tile`)."""
        slot = self.stack[-1].slot()
        shape_txt = ", ".join(shape)

        def define_zero() -> str:
            name = self.fresh("zero" if len(shape) == 1 else f"zero{len(shape)}")
            slot.add(f"{name} = tl.zeros([{shape_txt}], dtype=tl.int32)")
            return name

        t = Tile(frozenset(axes), mask, Expr(None, frozenset(axes), define_zero), dict(axis_masks or {}))
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

    def descriptor(self, ref: Hashable, desc: Any) -> str:
        """A new kernel parameter: TMA descriptor `desc` (`template.Descriptor`) over the tensor
        behind `ref`, built in forward."""
        base, expr = self._ptr_names(ref)
        name = self.fresh(base.removesuffix("_ptr") + "_desc")
        self.params.append((name, expr))
        self.descriptors[name] = desc
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
    def offset(self, c: Coords, layout: str = "") -> str:
        """Flat offset of coordinates `c` in a dense tensor of `layout` ("" row-major,
        "channels_last"), shaped like the current tile."""
        return self._tile_shaped(*self._flat(c, layout))

    def _tile_shaped(self, text: str, axes: frozenset[str]) -> str:
        """Offset `text` over tile `axes` given the current tile's shape (plus its zero tensor)."""
        t = self.tiles[-1]
        if not t.axes <= axes:
            text = str(t.zero) if text == "0" else f"{text} + {t.zero}"
        return text

    @staticmethod
    def _flat(c: Coords, layout: str = "") -> tuple[str, frozenset[str]]:
        """Flat offset of `c` in a dense tensor of `layout` and the tile axes it spans."""
        if c.flat is not None and c.flat_layout == layout:
            return c.flat, c.flat_axes
        terms, axes = [], frozenset()
        for d, s, size in zip(c.dims, strides(c.shape, layout), c.shape):
            if size == 1 or d.is_zero:
                continue
            terms.append(f"{paren(d)} * {s}" if s != 1 else str(d))
            axes |= d.axes
        return (" + ".join(terms) if terms else "0"), axes

    def _broadcast_mask(self, axes: frozenset[str], mask: str) -> str | None:
        """The mask of a load over tile `axes` kept at its own shape, or None to load at the tile's
        shape.

        On an output tile (`Tile.axis_masks`), an operand over some of the tile's axes (a bias,
        a norm's per-channel parameters) is read once per distinct coordinate and broadcast by
        the arithmetic: loaded at the tile's shape it holds a register per lane (a 128 x 64 fp32
        epilogue with six per-channel parameters spilled about 1 KB a thread on sm_90). The
        lanes the tile masks off then hold that parameter instead of 0, which only a store
        under the tile's mask ever reads."""
        t = self.tiles[-1]
        if mask != t.mask or not axes or not axes < t.axes or not axes <= t.axis_masks.keys():
            return None
        return " & ".join(paren(t.axis_masks[a]) for a in sorted(axes))

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
        text, axes = self._flat(c, self.prog.layout(ref))
        own = None if index else self._broadcast_mask(axes, mask)
        offset = text if own is not None else self._tile_shaped(text, axes)
        expr = f"tl.load({ptr} + {offset}, mask={own or mask}, other={other})"
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
        at = f"{ptr} + {self.offset(c, self.prog.layout(('node', node)))}"
        if atomic:
            self.emit(f'tl.atomic_add({at}, {val}, mask={mask}, sem="relaxed")')
        else:
            self.emit(f"tl.store({at}, {val}, mask={mask})")
        if node not in self.stored:
            self.stored.append(node)

    # -- values ----------------------------------------------------------------------------------
    def value(self, ref: Ref, c: Coords, mask: str | None = None) -> str:
        """The value of a graph input, node or state tensor at coordinates `c` (a variable name)."""
        mask = mask or self.tiles[-1].mask
        kind, j = ref
        if kind != "node" or j not in self.group:
            v = self.load(ref, c, mask, index=self.prog.is_index(ref))
            return self._late_bias(j, c, mask, v) if kind == "node" and j in self.prog.late_bias else v
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

    def _late_bias(self, j: int, c: Coords, mask: str, v: str) -> str:
        """Extern convolution `j`'s value `v` (loaded at `c`) plus its bias, which the vendor call
        left out (`extern.late_bias`). Loaded under the same mask, so a masked-off lane (a dot
        operand's padding) stays 0."""
        key = ("late_bias", j, c.key, mask)
        hit = self._cached(key)
        if hit:
            return hit
        ch = Coords((self.prog.shape(("node", j))[1],), [c.dims[1]], ("ch", c.key))
        b = self.load(self.weight_ref(j, "bias"), ch, mask, name=f"n{j}_b")
        var = self.assign(f"v{j}_b", f"{v} + {b}")
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
        # a product by the inverse deviation, as torch's kernels compute it: one reciprocal per
        # channel, where a division per element (a reciprocal and a product each on sm_90) in a
        # window of 64 batch-normed taps took 11664 bytes of spills a thread (with the product: 2108)
        rstd = self.assign(f"n{j}_rstd", f"1.0 / tl.sqrt({rv} + {eps})")
        out = f"({x} - {rm}) * {rstd}"
        if self.weight_ref(j, "weight"):
            w = self.load(self.weight_ref(j, "weight"), ch, mask, name=f"n{j}_w")
            out = f"{out} * {w}"
        if self.weight_ref(j, "bias"):
            b = self.load(self.weight_ref(j, "bias"), ch, mask, name=f"n{j}_b")
            out = f"{out} + {b}"
        return out

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


def ref_expr(prog: Program, ref: Ref) -> str:
    """How forward names a graph input (``x{k}``), a node's value (``v{k}``) or a state tensor."""
    kind_, k = ref
    if kind_ == "input":
        return f"x{k}"
    if kind_ == "state":
        return state_expr(prog, prog.state[k].key)
    return f"v{k}"


def numel_of(prog: Program, ref: Ref) -> int:
    return numel(prog.shape(ref))
