"""What one catalog entry says about a PyTorch operator.

Shapes are symbolic: a tensor is a `SymTensor` of a z3 rank and four z3 dims stored
*right-aligned* (``dims[0]`` is the last dimension), with the unused leading slots pinned to 1.
Right alignment makes broadcasting a per-slot rule and lets one shape rule serve every rank.
Each dim also has a log2 bucket ``logs[k]`` (``2**L <= dim < 2**(L+1)``) so that memory and
FLOP budgets, which are products of dims, become linear constraints for z3. The bucket is tied to
its dim by ``dim >= 2**e <=> L >= e`` for each e (`log_link`), not by a disjunction: bound atoms
only, which the arithmetic solver handles without case splits.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import z3

MAX_RANK = 5  # (N, C, D, H, W): the 3-D convolutions, pools and norms

# Value ranges, ordered by inclusion: a positive tensor is also non-negative and real.
REAL, NONNEG, POSITIVE = 0, 1, 2
RANGE_NAMES = {REAL: "real", NONNEG: "nonneg", POSITIVE: "positive"}

CATEGORIES = (
    "unary",
    "binary",
    "scalar",
    "reduction",
    "softmax",
    "norm",
    "matmul",
    "conv",
    "pool",
    "cumulative",
    "shape",
    "where",
    "gather",
    "loss",
)

DTYPES_FLOAT = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class SymTensor:
    """Symbolic tensor: z3 rank, right-aligned dims and their log2 buckets, value range."""

    rank: z3.ArithRef
    dims: tuple[z3.ArithRef, ...]
    logs: tuple[z3.ArithRef, ...]
    range: z3.ArithRef

    def dim(self, k: int) -> z3.ArithRef:
        """k-th dim from the right (0 = last)."""
        return self.dims[k]

    def left(self, i: int) -> z3.ArithRef:
        """i-th dim from the left (0 = first), valid when rank > i."""
        expr = self.dims[0]
        for r in range(1, MAX_RANK + 1):
            if r > i:
                expr = z3.If(self.rank == r, self.dims[r - 1 - i], expr)
        return expr


# ---- helpers for writing shape rules -------------------------------------------------------------


def pad_ones(t: SymTensor, rank: int) -> list[z3.BoolRef]:
    """The slots of t past `rank` (from the right) hold 1: t has at most `rank` dims."""
    return [t.dims[m] == 1 for m in range(rank, MAX_RANK)]


def same_shape(a: SymTensor, out: SymTensor) -> list[z3.BoolRef]:
    return [out.rank == a.rank, *[o == i for o, i in zip(out.dims, a.dims)]]


def broadcast(a: SymTensor, b: SymTensor, out: SymTensor) -> list[z3.BoolRef]:
    """numpy broadcasting, slot by slot (padding slots hold 1)."""
    cs = [out.rank == z3.If(a.rank >= b.rank, a.rank, b.rank)]
    for x, y, o in zip(a.dims, b.dims, out.dims):
        cs += [z3.Or(x == y, x == 1, y == 1), o == z3.If(x >= y, x, y)]
    return cs


def ranks(t: SymTensor, lo: int, hi: int = MAX_RANK) -> z3.BoolRef:
    return z3.And(t.rank >= lo, t.rank <= hi)


def drop_slot(a: SymTensor, out: SymTensor, k: int) -> list[z3.BoolRef]:
    """out is a with right-aligned slot k removed (a reduction without keepdim)."""
    cs = [out.rank == a.rank - 1]
    for m in range(MAX_RANK):
        if m < k:
            cs.append(out.dims[m] == a.dims[m])
        elif m + 1 < MAX_RANK:
            cs.append(out.dims[m] == a.dims[m + 1])
        else:
            cs.append(out.dims[m] == 1)
    return cs


def keep_except(a: SymTensor, out: SymTensor, ks: Sequence[int]) -> list[z3.BoolRef]:
    """out has a's rank and dims except at slots ks (the rule sets those)."""
    return [out.rank == a.rank, *[out.dims[m] == a.dims[m] for m in range(MAX_RANK) if m not in ks]]


# ---- numeric shape helpers (concrete shapes, used for FLOP/byte estimates and code emission) -----


def numel(shape: Sequence[int]) -> int:
    return math.prod(shape) if shape else 1


@dataclass(frozen=True)
class Param:
    """A discrete operator parameter and the values the sampler may pick."""

    name: str
    choices: tuple[Any, ...]


@dataclass(frozen=True)
class Weight:
    """A parameter tensor an op owns (becomes an nn.Parameter / buffer of Model)."""

    name: str
    shape: tuple[int, ...]
    init: str = "randn"  # randn | ones | zeros | rand_pos (positive, e.g. running_var)
    buffer: bool = False


ShapeRule = Callable[[list[SymTensor], SymTensor, dict[str, Any], "RuleCtx"], list[z3.BoolRef]]


@dataclass
class RuleCtx:
    """What a shape rule may ask of the model: fresh z3 ints (e.g. out_features of a Linear)."""

    prefix: str
    lo: int = 1
    hi: int = 16
    max_log: int = 12  # log2 of the largest tensor (weights included) in elements
    fresh_vars: dict[str, z3.ArithRef] = field(default_factory=dict)
    extra: list[z3.BoolRef] = field(default_factory=list)

    def fresh(self, name: str) -> z3.ArithRef:
        """A new dim variable within the profile's bounds, with its log2 bucket."""
        var = z3.Int(f"{self.prefix}_{name}")
        self.fresh_vars[name] = var
        self.extra += [var >= self.lo, var <= self.hi]
        return var

    def log(self, dim: z3.ArithRef) -> z3.ArithRef:
        """log2 bucket of a dim variable (adds the linking constraint once per variable)."""
        key = f"log_{dim}"
        if key not in self.fresh_vars:
            lvar = z3.Int(f"{self.prefix}_{key}")
            self.fresh_vars[key] = lvar
            self.extra.append(log_link(dim, lvar, self.hi))
        return self.fresh_vars[key]


def log_link(dim: z3.ArithRef, lvar: z3.ArithRef, hi: int) -> z3.BoolRef:
    """lvar == floor(log2(dim)) for 1 <= dim <= hi, as ``dim >= 2**e <=> lvar >= e`` for each e:
    bound atoms only, so no case splits on disjuncts or if-then-else terms."""
    top = max(hi, 1).bit_length()
    return z3.And(lvar >= 0, lvar <= top - 1, *[(dim >= 2**e) == (lvar >= e) for e in range(1, top)])


def log_bucket(dim: z3.ArithRef, lvar: z3.ArithRef, hi: int) -> z3.BoolRef:
    """2**lvar <= dim < 2**(lvar+1) with 0 <= lvar < hi.bit_length(), without a disjunction."""
    top = max(hi, 1).bit_length()
    return z3.And(dim >= 1, dim < 2**top, log_link(dim, lvar, hi))


@dataclass(frozen=True)
class OpSpec:
    """One catalog operator.

    - `call(args, p)` returns the Python expression for `forward` given argument expressions
      (``self.<weight>`` names are available for ops with `weights`).
    - `shape(args, out, p, ctx)` returns z3 constraints tying the output to the inputs.
    - `weights(in_shapes, out_shape, p)` lists the parameter tensors the op owns.
    - `index_args` are argument slots fed an int64 index tensor (always a fresh input), with
      `index_bound(in_shapes, out_shape, p)` giving the exclusive upper bound of its values.
    - `domain[i]` is the least value range input i needs (e.g. POSITIVE for log);
      `out_range` is the range the output is guaranteed to lie in: a constant, "min" (the
      narrowest guarantee of the inputs, e.g. add) or "first" (that of input 0, e.g. max-pool).
    """

    name: str
    category: str
    arity: int
    call: Callable[[list[str], dict[str, Any]], str]
    shape: ShapeRule
    flops: Callable[[list[tuple[int, ...]], tuple[int, ...], dict[str, Any]], int]
    params: tuple[Param, ...] = ()
    dtypes: tuple[str, ...] = DTYPES_FLOAT
    domain: tuple[int, ...] = ()
    out_range: int | str = REAL
    weights: Callable[[list[tuple[int, ...]], tuple[int, ...], dict[str, Any]], list[Weight]] | None = None
    index_args: tuple[int, ...] = ()
    index_bound: Callable[[list[tuple[int, ...]], tuple[int, ...], dict[str, Any]], int] | None = None
    min_rank: int = 1
    doc: str = ""
    # The output holds int64 indices (argmax): the sampler never feeds it to another op, so it
    # is always a program output, compared exactly by the evaluator.
    index_out: bool = False
    # The shape rule may give a 0-d output (a loss, a reduction over every dim): such an output
    # is never an argument (arguments have rank >= 1), so it too is always a program output.
    scalar_out: bool = False
    # log2 FLOPs per output element, as a linear expression of the input/output log buckets; used
    # for the z3 FLOP budget. Default: a few FLOPs per output element.
    log_flops: Callable[[list[SymTensor], SymTensor, dict[str, Any], "RuleCtx"], z3.ArithRef] | None = None
    # The parameter combinations the sampler draws from (one value per param, in `params` order),
    # when not every product of the choices is wanted: a convolution's kernel x stride x padding x
    # dilation x groups x bias would be hundreds of variants, each a case of the z3 model. Empty:
    # the full product.
    combos: tuple[tuple[Any, ...], ...] = ()

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"op {self.name}: unknown category {self.category!r}")
        if len(self.domain) not in (0, self.arity):
            raise ValueError(f"op {self.name}: domain must list one range per input")
        for combo in self.combos:
            if len(combo) != len(self.params) or any(v not in p.choices for v, p in zip(combo, self.params)):
                raise ValueError(f"op {self.name}: combo {combo!r} is not one choice of each of "
                                 f"{[p.name for p in self.params]}")
        if len(set(self.combos)) != len(self.combos):
            raise ValueError(f"op {self.name}: repeated combos")

    @property
    def variants(self) -> list[dict[str, Any]]:
        """Every parameter combination the sampler may draw (`combos`, else the full product)."""
        names = [p.name for p in self.params]
        combos = self.combos or itertools.product(*(p.choices for p in self.params))
        return [dict(zip(names, combo)) for combo in combos]

    def input_domain(self, i: int) -> int:
        return self.domain[i] if self.domain else REAL

    def output_range(self, in_ranges: list[Any]) -> Any:
        """Output range from input ranges (python ints or z3 expressions alike)."""
        if self.out_range == "first":
            return in_ranges[0]
        if self.out_range == "min":
            out = in_ranges[0]
            for r in in_ranges[1:]:
                out = z3.If(r < out, r, out) if isinstance(out, z3.ExprRef) or isinstance(r, z3.ExprRef) else min(out, r)
            return out
        return self.out_range

    def estimate(self, in_shapes: list[tuple[int, ...]], out_shape: tuple[int, ...], p: dict[str, Any],
                 itemsize: int = 4) -> dict[str, int]:
        """FLOP and byte estimate (bytes: every input, weight and the output moved once)."""
        w = self.weights(in_shapes, out_shape, p) if self.weights else []
        moved = sum(numel(s) for s in in_shapes) + numel(out_shape) + sum(numel(x.shape) for x in w)
        return {"flops": int(self.flops(in_shapes, out_shape, p)), "bytes": int(moved * itemsize)}

    def describe(self) -> dict[str, Any]:
        """JSON-able summary (for `kernelgym ops --json`)."""
        return {
            "name": self.name,
            "category": self.category,
            "arity": self.arity,
            "params": {p.name: list(p.choices) for p in self.params},
            "dtypes": list(self.dtypes),
            "domain": [RANGE_NAMES[self.input_domain(i)] for i in range(self.arity)],
            "min_rank": self.min_rank,
            "index_args": list(self.index_args),
            "index_out": self.index_out,
            "scalar_out": self.scalar_out,
            "doc": self.doc.replace("{0}", "x").replace("{1}", "y"),
        }

