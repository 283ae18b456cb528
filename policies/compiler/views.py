"""Views, copies and gathers inside a pointwise expression: each op's value at output
coordinates is its argument's value at mapped coordinates (a transpose swaps two dims, a reshape
goes through the flat index, a concat or pad picks a source by position, a gather reads the
index first). `ViewValues` is mixed into `codegen.KernelWriter`, whose `value` it calls."""

from __future__ import annotations

import math
from collections.abc import Hashable

from policies.compiler.coords import ZERO, Coords, Expr, broadcast, lit, paren, strides
from policies.compiler.ir import CompileError

# Views and copies lowered as a coordinate map into their argument (`ViewValues._view_copy_coords`).
VIEW_COPY_OPS = frozenset({"unsqueeze", "squeeze", "flip", "narrow", "select", "expand", "repeat", "reshape"})


class ViewValues:
    """`KernelWriter`'s values of data-movement ops (`_node_expr` dispatches here)."""

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
            return Coords(src, dims, ("F", c.key, start, end), *c.carried_flat())
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
            return Coords(src, c.dims[:axis] + c.dims[axis + 1:], key, *c.carried_flat())
        if op in ("squeeze", "select"):
            axis = len(src) - int(p["dim"])
            index = int(p.get("index", 0))
            dims = c.dims[:axis] + [Expr(str(index)) if index else ZERO] + c.dims[axis:]
            return Coords(src, dims, key, *(c.carried_flat() if op == "squeeze" else (None, frozenset())))
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
        return Coords(src, dims, key, *c.carried_flat())

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
