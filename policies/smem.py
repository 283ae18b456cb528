"""Shared memory of ``tl.dot`` kernels, estimated from their source: no GPU, no Triton compile.

A GPU refuses a launch whose kernel needs more shared memory than a block may have (H100/H200:
232448 bytes; A100: 166912). Kernels calling ``tl.dot`` are the ones near that limit: Triton's
software pipeliner keeps ``num_stages - 1`` copies in flight of every tile loaded in the
innermost loop around a product, and tensor-core operands that do not come straight from a load
are staged through shared memory. A fused prologue multiplies the first term: KernelBench level 2
problem 38 (an average pool fused into a transposed convolution) loads 8 pool-window tiles per
step and asked for 327680 bytes at 128 x 64 x 32 tiles and 3 stages.

`estimate_function` walks one ``@triton.jit`` function's AST with the launch's constexpr values,
inferring tile shapes (``tl.arange``, broadcasting, ``[:, None]``, ``tl.zeros``, reductions...),
and sums, per phase of the kernel (an innermost loop with its products; a product outside such a
loop; the final stores), what those phases keep in shared memory:

- an innermost dynamic loop (``range``/``tl.range``/``while``, no loop nested in it: Triton
  pipelines only those) holding a ``tl.dot``: ``(num_stages - 1)`` x the bytes of every tile
  loaded in it (``tl.static_range`` bodies counted once per trip: they are unrolled, but a load
  reading nothing that changes between trips is one load after Triton's CSE, e.g. a batch norm's
  parameters in a fused pool window; a ``tl.range(..., num_stages=N)`` loop at its own N; a loop
  of one trip, by its constant bounds, pipelines nothing);
- per product, its operand staging: 3xTF32 (``input_precision="tf32x3"``) splits each operand in
  two (big + small parts): 2 x (A + B) bytes, or A + 2 x B when both come straight from loads
  (A's parts then live in registers; A passes through shared memory on its way there); any other
  precision: A + B;
- the largest stored tile (the accumulator's layout change before the store).

The kernel's estimate is the largest phase (Triton reuses shared memory whose lifetimes do not
overlap). Checked against ``triton.compile(..., target=GPUTarget("cuda", 90, 32))
.metadata.shared`` for every tl.dot kernel the compiler writes for KernelBench levels 1-3
(``benchmarks/dot_smem.py``, figures in benchmarks/NOTES.md). `fit_launch` lowers num_stages,
then BLOCK_K, then BLOCK_N / BLOCK_M until an estimate fits `SMEM_BUDGET`.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from kernelgym.pyast import decorator_names, dotted, parse

# Shared memory a generated launch may ask for (bytes): 224 KiB, 3 KiB under the 227 KiB (232448
# bytes) an H100 / H200 block may use. On every tl.dot launch the compiler writes for KernelBench
# levels 1-3 (1448 launches; benchmarks/NOTES.md) the estimate was Triton's sm_90 figure or more,
# equal to it for the fused-prologue products that approach the limit, and Triton 3.6 on an H100
# reported the same 327680 bytes for level 2 problem 38 as Triton 3.9 here. The largest launches
# that fit today (a batch norm + ReLU fused into a convolution's operand: 229376 bytes at 3
# stages, ResNet / MobileNet / RegNet) keep their config at this budget; a budget under it would
# take a stage from each. The 3 KiB margin covers small scratch the estimate does not model.
# A100s (163 KiB a block) need a lower budget: pass `budget` where one targets them.
SMEM_BUDGET = 224 * 1024
# Triton's num_stages when a launch does not pass it (CUDA backend).
DEFAULT_STAGES = 3
# Smallest tl.dot tile side (`fit_launch` never goes below it).
DOT_BLOCK_MIN = 16

_DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "int8": 1, "uint8": 1, "int16": 2,
                "int32": 4, "int64": 8, "float8e4nv": 1, "float8e5": 1, "float8e4b15": 1, "int1": 1}
_DYNAMIC_LOOPS = ("range", "tl.range", "triton.language.range")
_REDUCTIONS = {"sum", "max", "min", "argmax", "argmin", "reduce", "xor_sum", "prod"}
_SAME_SHAPE = {"cumsum", "cumprod", "sort", "flip", "abs", "multiple_of", "max_contiguous", "max_constancy",
               "associative_scan", "softmax", "sigmoid", "exp", "exp2", "log", "log2", "sqrt", "rsqrt", "sin",
               "cos", "erf", "floor", "ceil", "fma", "maximum", "minimum", "where", "clamp", "fdiv", "div_rn",
               "umulhi", "tanh", "cast"}
_SCALAR_CALLS = {"program_id", "num_programs", "cdiv", "debug_barrier", "static_assert", "device_print",
                 "static_print", "device_assert", "assume"}


@dataclass(frozen=True)
class _Val:
    """What the walk knows of a value: its shape (None: unknown; (): a scalar), its int value
    when a known constant, its element bytes, and whether it is a load's result untouched."""

    shape: tuple[int, ...] | None
    const: int | None = None
    nbytes: int = 4
    loaded: bool = False


_UNKNOWN = _Val(None)
_SCALAR = _Val(())


@dataclass
class SmemEstimate:
    """A kernel's estimated shared memory (bytes) and what it is made of."""

    bytes: int
    phases: dict[str, int] = field(default_factory=dict)   # phase -> bytes (the estimate is their max)
    unknown: int = 0     # loads / products whose tile shape the walk could not tell (not counted)


@dataclass
class _Loop:
    dynamic: bool
    trips: int
    nested: bool = False                  # a dynamic loop inside: Triton does not pipeline it
    stages: int | None = None             # ``tl.range(..., num_stages=N)``: the loop's own depth
    single: bool = False                  # one trip (constant bounds): nothing to pipeline
    loads: int = 0                        # bytes loaded per iteration (unrolled static loops included)
    staging: list[int] = field(default_factory=list)


def _broadcast(*vals: _Val) -> tuple[int, ...] | None:
    shapes = [v.shape for v in vals]
    if any(s is None for s in shapes):
        return None
    rank = max((len(s) for s in shapes if s is not None), default=0)
    out = [1] * rank
    for s in shapes:
        assert s is not None
        for i, d in enumerate((1,) * (rank - len(s)) + s):
            if d != 1:
                if out[i] not in (1, d):
                    return None
                out[i] = d
    return tuple(out)


def _numel(shape: tuple[int, ...] | None) -> int | None:
    return None if shape is None else math.prod(shape)


class _Walker:
    """One pass over a jit function's body, recording loads, products and stores by loop."""

    def __init__(self, constexprs: Mapping[str, int], element_bytes: int):
        self.env: dict[str, _Val] = {k: _Val((), v if isinstance(v, int) else None) for k, v in constexprs.items()}
        self.element_bytes = element_bytes
        self.loops: list[_Loop] = []
        self.outer = _Loop(dynamic=False, trips=1)    # products outside any pipelined loop
        self.stores = 0
        self.unknown = 0
        self.dots = 0
        self.done: list[_Loop] = []
        # names whose value changes from one trip of an enclosing static_range to the next: a load
        # reading none of them is the same load in every unrolled trip (Triton keeps one)
        self.varying: set[str] = set()

    # -- statements -------------------------------------------------------------------------------
    def body(self, stmts: list[ast.stmt]) -> None:
        for s in stmts:
            self.stmt(s)

    def stmt(self, s: ast.stmt) -> None:
        if isinstance(s, ast.Assign):
            v = self.expr(s.value)
            for t in s.targets:
                self.bind(t, v, s.value)
                self.vary(t, s.value)
        elif isinstance(s, ast.AnnAssign) and s.value is not None:
            self.bind(s.target, self.expr(s.value), s.value)
            self.vary(s.target, s.value)
        elif isinstance(s, ast.AugAssign):
            v = self.expr(s.value)
            if isinstance(s.target, ast.Name):
                old = self.env.get(s.target.id, _UNKNOWN)
                self.env[s.target.id] = _Val(_broadcast(old, v), None, max(old.nbytes, v.nbytes))
                if _names(s.value) & self.varying:
                    self.varying.add(s.target.id)
        elif isinstance(s, (ast.Expr, ast.Return)) and s.value is not None:
            self.expr(s.value)
        elif isinstance(s, ast.If):
            test = self.expr(s.test)
            if test.const is not None:   # a constexpr branch: only one is compiled
                self.body(s.body if test.const else s.orelse)
            else:
                self.body(s.body)
                self.body(s.orelse)
        elif isinstance(s, ast.For):
            self.for_loop(s)
        elif isinstance(s, ast.While):
            self.expr(s.test)
            with self.loop(True, 1):
                self.body(s.body)
        elif isinstance(s, ast.With):
            self.body(s.body)

    def bind(self, target: ast.expr, v: _Val, value: ast.expr) -> None:
        if isinstance(target, ast.Name):
            self.env[target.id] = v
        elif isinstance(target, (ast.Tuple, ast.List)):
            parts = value.elts if isinstance(value, (ast.Tuple, ast.List)) and len(value.elts) == len(target.elts) \
                else None
            for i, t in enumerate(target.elts):
                self.bind(t, self.expr(parts[i]) if parts else _UNKNOWN, parts[i] if parts else value)

    def vary(self, target: ast.expr, value: ast.expr) -> None:
        changing = bool(_names(value) & self.varying)
        for t in ast.walk(target):
            if isinstance(t, ast.Name):
                (self.varying.add if changing else self.varying.discard)(t.id)

    def for_loop(self, s: ast.For) -> None:
        it = s.iter
        name = dotted(it.func) if isinstance(it, ast.Call) else ""
        args = [self.expr(a) for a in it.args] if isinstance(it, ast.Call) else []
        static = name.split(".")[-1] == "static_range"
        trips, single = 1, False
        if static:
            bounds = [a.const for a in args]
            if bounds and all(b is not None for b in bounds):
                trips = max(1, len(range(*bounds)))   # type: ignore[arg-type]
            else:
                self.unknown += 1
        elif args and all(a.const is not None for a in args) and name in _DYNAMIC_LOOPS:
            single = len(range(*(a.const for a in args))) <= 1   # type: ignore[misc]
        if isinstance(s.target, ast.Name):
            self.env[s.target.id] = _SCALAR
            if static:
                self.varying.add(s.target.id)
        own = next((k.value for k in it.keywords if k.arg == "num_stages"), None) if isinstance(it, ast.Call) \
            else None
        with self.loop(not static, trips):
            self.loops[-1].single = single
            if own is not None:
                self.loops[-1].stages = self.expr(own).const
            self.body(s.body)

    @contextmanager
    def loop(self, dynamic: bool, trips: int) -> Iterator[None]:
        if dynamic:
            for f in self.loops:
                f.nested = f.nested or f.dynamic
        self.loops.append(_Loop(dynamic, trips))
        try:
            yield
        finally:
            self.done.append(self.loops.pop())

    def frame(self, node: ast.AST | None = None) -> tuple[_Loop, int]:
        """The innermost dynamic loop (or the kernel's top level) and the unrolled trips inside it
        (1 for a `node` that reads nothing varying between those trips)."""
        mult = 1
        same = node is not None and not _names(node) & self.varying
        for f in reversed(self.loops):
            if f.dynamic:
                return f, 1 if same else mult
            mult *= f.trips
        return self.outer, 1 if same else mult

    # -- expressions ------------------------------------------------------------------------------
    def expr(self, e: ast.expr) -> _Val:
        if isinstance(e, ast.Constant):
            if isinstance(e.value, bool):
                return _Val((), int(e.value))
            return _Val((), e.value) if isinstance(e.value, int) else _SCALAR   # floats, strings ("inf")
        if isinstance(e, ast.Name):   # parameters (pointers, numbers), globals: scalars
            return self.env.get(e.id, _SCALAR)
        if isinstance(e, ast.BinOp):
            a, b = self.expr(e.left), self.expr(e.right)
            return _Val(_broadcast(a, b), _arith(e.op, a.const, b.const), max(a.nbytes, b.nbytes))
        if isinstance(e, ast.UnaryOp):
            a = self.expr(e.operand)
            const = -a.const if isinstance(e.op, ast.USub) and a.const is not None else \
                (int(not a.const) if isinstance(e.op, ast.Not) and a.const is not None else None)
            return _Val(a.shape, const, a.nbytes)
        if isinstance(e, ast.Compare):
            vals = [self.expr(e.left), *(self.expr(c) for c in e.comparators)]
            const = None
            if len(vals) == 2 and all(v.const is not None for v in vals):
                const = _compare(e.ops[0], vals[0].const, vals[1].const)   # type: ignore[arg-type]
            return _Val(_broadcast(*vals), const, 1)
        if isinstance(e, ast.BoolOp):
            vals = [self.expr(v) for v in e.values]
            return _Val(_broadcast(*vals), None, 1)
        if isinstance(e, ast.IfExp):
            test = self.expr(e.test)
            if test.const is not None:
                return self.expr(e.body if test.const else e.orelse)
            a, b = self.expr(e.body), self.expr(e.orelse)
            return _Val(_broadcast(a, b), None, max(a.nbytes, b.nbytes))
        if isinstance(e, ast.Subscript):
            return self.subscript(self.expr(e.value), e.slice)
        if isinstance(e, ast.Call):
            return self.call(e)
        if isinstance(e, (ast.Tuple, ast.List)):
            for x in e.elts:
                self.expr(x)
            return _UNKNOWN
        if isinstance(e, ast.Attribute):
            if e.attr == "T":
                v = self.expr(e.value)
                return _Val(tuple(reversed(v.shape)) if v.shape is not None else None, None, v.nbytes)
            return _UNKNOWN
        return _UNKNOWN

    def subscript(self, v: _Val, sl: ast.expr) -> _Val:
        if v.shape is None:
            return _UNKNOWN
        items = sl.elts if isinstance(sl, ast.Tuple) else [sl]
        out: list[int] = []
        dims = list(v.shape)
        for it in items:
            if isinstance(it, ast.Constant) and it.value is None:
                out.append(1)
            elif isinstance(it, ast.Slice):
                if not dims:
                    return _UNKNOWN
                out.append(dims.pop(0))
            elif isinstance(it, ast.Constant) and it.value is Ellipsis:
                keep = len(dims) - sum(1 for x in items if not (isinstance(x, ast.Constant) and x.value is None)) + 1
                out += dims[:keep]
                dims = dims[keep:]
            else:
                if not dims:
                    return _UNKNOWN
                dims.pop(0)
        return _Val(tuple(out + dims), None, v.nbytes)

    def shape_arg(self, node: ast.expr | None) -> tuple[int, ...] | None:
        if isinstance(node, (ast.List, ast.Tuple)):
            dims = [self.expr(x).const for x in node.elts]
            return tuple(dims) if all(d is not None for d in dims) else None   # type: ignore[arg-type]
        if node is not None:
            c = self.expr(node).const
            return (c,) if c is not None else None
        return None

    def call(self, e: ast.Call) -> _Val:
        name = dotted(e.func)
        short = name.split(".")[-1]
        kw = {k.arg: k.value for k in e.keywords if k.arg}
        if isinstance(e.func, ast.Attribute) and not name.startswith(("tl.", "triton.")) and short in (
                "to", "trans", "T", "sum", "max", "min", "reshape", "broadcast_to", "permute") \
                and not (isinstance(e.func.value, ast.Name) and e.func.value.id in ("tl", "triton")):
            return self.method(e, short, kw)   # x.to(...), x.sum(axis)...
        args = [self.expr(a) for a in e.args]
        kwvals = {k: self.expr(v) for k, v in kw.items() if k not in ("dtype", "shape")}
        if short == "arange" and len(args) == 2 and args[0].const is not None and args[1].const is not None:
            return _Val((args[1].const - args[0].const,))
        if short in ("zeros", "full", "empty"):
            return _Val(self.shape_arg(e.args[0] if e.args else kw.get("shape")), None,
                        _dtype_bytes(kw.get("dtype") or (e.args[-1] if len(e.args) > 1 else None)))
        if short == "make_block_ptr":
            return _Val(self.shape_arg(kw.get("block_shape")), None, self.element_bytes)
        if short == "advance":
            return args[0] if args else _UNKNOWN
        if short == "load":
            shape = _broadcast(*(a for a in args[:1]), *(kwvals[k] for k in ("mask",) if k in kwvals))
            v = _Val(shape, None, self.element_bytes, loaded=True)
            self.record_load(v, e)
            return v
        if short in ("store", "atomic_add", "atomic_max", "atomic_min", "atomic_xchg", "atomic_cas"):
            val = args[1] if len(args) > 1 else kwvals.get("value", _UNKNOWN)
            n = _numel(val.shape)
            self.stores = max(self.stores, (n or 0) * 4)
            return _SCALAR
        if short == "dot" and len(args) >= 2:
            return self.dot(e, args[0], args[1], kw)
        if short in _SCALAR_CALLS:
            return _Val((), _cdiv(args) if short == "cdiv" else None)
        if short in ("min", "max") and not name.startswith(("tl.", "triton.")) and args \
                and all(a.const is not None for a in args):
            return _Val((), (min if short == "min" else max)(a.const for a in args))   # type: ignore[type-var]
        if short in _REDUCTIONS and args:
            return _reduce(args[0], args[1].const if len(args) > 1 else self._axis(kw))
        if short in ("reshape", "view", "broadcast_to") and args:
            shape = self.shape_arg(e.args[1] if len(e.args) > 1 else kw.get("shape"))
            return _Val(shape, None, args[0].nbytes)
        if short in ("trans", "permute") and args:
            v = args[0]
            return _Val(tuple(reversed(v.shape)) if v.shape is not None else None, None, v.nbytes)
        if short == "expand_dims" and len(args) > 1 and args[0].shape is not None and args[1].const is not None:
            s = list(args[0].shape)
            s.insert(args[1].const if args[1].const >= 0 else len(s) + 1 + args[1].const, 1)
            return _Val(tuple(s), None, args[0].nbytes)
        tensors = [a for a in (*args, *kwvals.values())]
        return _Val(_broadcast(*tensors) if tensors else (), None, max((a.nbytes for a in tensors), default=4))

    def _axis(self, kw: Mapping[str, ast.expr]) -> int | None:
        return self.expr(kw["axis"]).const if "axis" in kw else None

    def method(self, e: ast.Call, short: str, kw: Mapping[str, ast.expr]) -> _Val:
        assert isinstance(e.func, ast.Attribute)
        v = self.expr(e.func.value)
        args = [self.expr(a) for a in e.args]
        if short == "to":
            return _Val(v.shape, v.const, _dtype_bytes(e.args[0] if e.args else kw.get("dtype")))
        if short in ("trans", "T", "permute"):
            return _Val(tuple(reversed(v.shape)) if v.shape is not None else None, None, v.nbytes)
        if short in ("sum", "max", "min"):
            return _reduce(v, args[0].const if args else self._axis(kw))
        if short in ("reshape", "broadcast_to"):
            node = e.args[0] if len(e.args) == 1 else ast.Tuple(elts=list(e.args)) if e.args else kw.get("shape")
            return _Val(self.shape_arg(node), None, v.nbytes)
        return _UNKNOWN

    def record_load(self, v: _Val, call: ast.Call) -> None:
        f, mult = self.frame(call)
        n = _numel(v.shape)
        if n is None:
            self.unknown += 1
            return
        f.loads += n * v.nbytes * mult

    def dot(self, e: ast.Call, a: _Val, b: _Val, kw: Mapping[str, ast.expr]) -> _Val:
        self.dots += 1
        precision = ""
        if "input_precision" in kw and isinstance(kw["input_precision"], ast.Constant):
            precision = str(kw["input_precision"].value)
        elif "allow_tf32" in kw and isinstance(kw["allow_tf32"], ast.Constant):
            precision = "tf32" if kw["allow_tf32"].value else "ieee"
        na, nb = _numel(a.shape), _numel(b.shape)
        f, mult = self.frame()
        if na is None or nb is None:
            self.unknown += 1
        else:
            sa, sb = na * a.nbytes, nb * b.nbytes
            if precision == "tf32x3" and max(a.nbytes, b.nbytes) >= 4:
                # both loaded: B's two parts, and A on its way to the tensor cores' registers
                staged = sa + 2 * sb if a.loaded and b.loaded else 2 * (sa + sb)
            else:
                staged = sa + sb
            f.staging.append(staged * mult)
        if a.shape is not None and b.shape is not None and len(a.shape) >= 2 and len(b.shape) >= 2:
            return _Val((*a.shape[:-1], b.shape[-1]))
        return _UNKNOWN

    def estimate(self, num_stages: int) -> SmemEstimate:
        phases: dict[str, int] = {}
        for i, f in enumerate(self.done):
            if not f.dynamic:
                continue
            if f.nested or f.single:   # not pipelined: its products' operands are staged, one at a time
                for j, s in enumerate(f.staging):
                    phases[f"loop {i} dot {j}"] = s
            elif f.staging:
                stages = f.stages if f.stages is not None else num_stages
                phases[f"loop {i}"] = max(0, stages - 1) * f.loads + sum(f.staging)
        for j, s in enumerate(self.outer.staging):
            phases[f"dot {j}"] = s
        phases["store"] = self.stores
        return SmemEstimate(max(phases.values()), phases, self.unknown)


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _arith(op: ast.operator, a: int | None, b: int | None) -> int | None:
    if a is None or b is None:
        return None
    try:
        if isinstance(op, ast.Add):
            return a + b
        if isinstance(op, ast.Sub):
            return a - b
        if isinstance(op, ast.Mult):
            return a * b
        if isinstance(op, ast.FloorDiv):
            return a // b
        if isinstance(op, ast.Mod):
            return a % b
        if isinstance(op, ast.LShift) and 0 <= b < 64:
            return a << b
        if isinstance(op, ast.RShift) and 0 <= b < 64:
            return a >> b
        if isinstance(op, ast.Pow) and 0 <= b < 64:
            return a ** b
    except ZeroDivisionError:
        return None
    return None


def _compare(op: ast.cmpop, a: int, b: int) -> int | None:
    table: dict[type, Callable[[int, int], bool]] = {
        ast.Eq: lambda x, y: x == y, ast.NotEq: lambda x, y: x != y, ast.Lt: lambda x, y: x < y,
        ast.LtE: lambda x, y: x <= y, ast.Gt: lambda x, y: x > y, ast.GtE: lambda x, y: x >= y}
    f = table.get(type(op))
    return int(f(a, b)) if f else None


def _cdiv(args: list[_Val]) -> int | None:
    if len(args) == 2 and args[0].const is not None and args[1].const:
        return -(-args[0].const // args[1].const)
    return None


def _reduce(v: _Val, axis: int | None) -> _Val:
    if v.shape is None:
        return _UNKNOWN
    if axis is None:
        return _Val((), None, v.nbytes)
    s = list(v.shape)
    if not -len(s) <= axis < len(s):
        return _UNKNOWN
    del s[axis]
    return _Val(tuple(s), None, v.nbytes)


def _dtype_bytes(node: ast.expr | None) -> int:
    if node is None:
        return 4
    return _DTYPE_BYTES.get(dotted(node).split(".")[-1], 4)


def has_dot(fn: ast.FunctionDef) -> bool:
    """Whether the function calls ``tl.dot`` (or ``dot`` of any module)."""
    return any(isinstance(n, ast.Call) and dotted(n.func).split(".")[-1] == "dot" for n in ast.walk(fn))


def estimate_function(fn: ast.FunctionDef, constexprs: Mapping[str, int], num_stages: int = DEFAULT_STAGES,
                      element_bytes: int = 4) -> SmemEstimate | None:
    """The shared memory (bytes) one launch of jit function `fn` needs, estimated from its AST
    with the launch's `constexprs` (block sizes...) and `num_stages`; `element_bytes`: the size of
    a loaded element (4: fp32 tensors, 2: fp16/bf16). None for a function without ``tl.dot``
    (Triton pipelines only loops with products; those kernels stay far below the limit)."""
    if not has_dot(fn):
        return None
    if num_stages < 1:
        raise ValueError(f"num_stages must be >= 1, got {num_stages}")
    w = _Walker(constexprs, element_bytes)
    w.body(fn.body)
    return w.estimate(num_stages)


def jit_functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    """name -> every function decorated with ``triton.jit`` / ``jit`` in the module."""
    out: dict[str, ast.FunctionDef] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and "jit" in decorator_names(node):
            out[node.name] = node
    return out


@dataclass(frozen=True)
class LaunchEstimate:
    """One ``kernel[grid](...)`` launch of a tl.dot kernel and its estimated shared memory."""

    kernel: str
    line: int
    num_stages: int
    constexprs: dict[str, int]
    estimate: SmemEstimate


def launch_estimates(source: str, element_bytes: int = 4) -> list[LaunchEstimate]:
    """Every launch of a tl.dot kernel in `source` (a module) with its estimate; constexpr values
    are the launch's int literals (by keyword or position) and the parameters' literal defaults;
    num_stages its literal (Triton's default 3 when absent). Autotuned kernels (their configs pick
    the launch values) and launches through ``*args`` / ``**kwargs`` are skipped."""
    tree = parse(source)
    fns = jit_functions(tree)
    out: list[LaunchEstimate] = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript)):
            continue
        name = dotted(node.func.value).split(".")[-1]
        fn = fns.get(name)
        if fn is None or not has_dot(fn) or "autotune" in decorator_names(fn):
            continue
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            continue
        params = [a.arg for a in (*fn.args.posonlyargs, *fn.args.args)]
        consts: dict[str, int] = {}
        positional = [*fn.args.posonlyargs, *fn.args.args]
        for p, d in zip(positional[len(positional) - len(fn.args.defaults):], fn.args.defaults):
            if isinstance(d, ast.Constant) and isinstance(d.value, int):
                consts[p.arg] = int(d.value)
        given = dict(zip(params, node.args)) | {k.arg: k.value for k in node.keywords if k.arg}
        for p, v in given.items():
            if isinstance(v, ast.Constant) and isinstance(v.value, int):   # bools too (HAS_BIAS=True)
                consts[p] = int(v.value)
        stages = consts.pop("num_stages", DEFAULT_STAGES)
        consts.pop("num_warps", None)
        est = estimate_function(fn, consts, max(1, stages), element_bytes)
        if est is not None:
            out.append(LaunchEstimate(name, node.lineno, stages, consts, est))
    return out


def over_budget(source: str, budget: int = SMEM_BUDGET, element_bytes: int = 4) -> list[LaunchEstimate]:
    """The launches of `source` whose estimate exceeds `budget` bytes ([] when all fit)."""
    return [e for e in launch_estimates(source, element_bytes) if e.estimate.bytes > budget]


def fit_launch(estimate: Callable[[dict[str, int], int], int], blocks: Mapping[str, int], num_stages: int,
               budget: int = SMEM_BUDGET, stages_fixed: bool = False) -> tuple[dict[str, int], int] | None:
    """The launch (blocks, num_stages) nearest to the given one whose ``estimate(blocks,
    num_stages)`` fits `budget`: the given one when it fits; else num_stages lowered one at a time
    (down to 1; not when `stages_fixed`), then BLOCK_K halved (down to `DOT_BLOCK_MIN`), then the
    larger of BLOCK_N / BLOCK_M (BLOCK_N on a tie). Pipelining depth goes first: each stage adds a
    copy of every tile loaded per step, while smaller tiles lose the reuse a tile is for. None
    when nothing fits."""
    cur, stages = dict(blocks), num_stages
    while estimate(cur, stages) > budget:
        if not stages_fixed and stages > 1:
            stages -= 1
            continue
        if cur.get("BLOCK_K", 0) > DOT_BLOCK_MIN:
            cur["BLOCK_K"] //= 2
            continue
        sides = [k for k in ("BLOCK_N", "BLOCK_M") if cur.get(k, 0) > DOT_BLOCK_MIN]
        if not sides:
            return None
        side = max(sides, key=lambda k: cur[k])
        cur[side] //= 2
    return cur, stages
