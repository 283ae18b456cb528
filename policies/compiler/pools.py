"""Max and average pools (windowed and adaptive) inside a pointwise expression: a loop over each
output position's window. `PoolValues` is mixed into `codegen.KernelWriter`, whose `value` it calls."""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

from kernelgym.ops.catalog import adaptive_windows, pool_window
from policies.compiler.coords import NEG_INF, Coords, Expr, lit, paren

# A window (with the windows around it) of at most this many taps is unrolled (tl.static_range)
# in a 1-D tile (1024 lanes, 8 a thread), an eighth of it in a 2-D one (up to 4096 lanes).
UNROLL_TAPS = 32


class PoolValues:
    """`KernelWriter`'s values of pooling ops (`_node_expr` dispatches here)."""

    _unrolled = 1   # taps of the unrolled windows the code being written sits in

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
        # Unrolled taps of this window and of the windows it sits in: Triton issues an unrolled
        # window's loads together, a register each per lane a thread holds, so a pool of a pool
        # (8 x 8 taps, 8 lanes a thread) spilled on sm_90, and so did 8 or 16 taps in a 2-D tile
        # (a convolution's operand, a row chunk: 4096 lanes, 16-32 a thread)
        outer = self._unrolled
        unroll = outer * volume <= (UNROLL_TAPS if len(t.axes) <= 1 else UNROLL_TAPS // 8)
        loop = "tl.static_range" if unroll else "range"
        key = self.new_key()
        idx: list[Expr] = []
        conds: list[str] = []
        with ExitStack() as stack:
            self._unrolled = outer * volume if unroll else outer
            stack.callback(setattr, self, "_unrolled", outer)
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
