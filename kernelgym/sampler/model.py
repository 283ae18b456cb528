"""The CSP-DAG: one z3 constraint problem over a program's structure and every tensor dim.

Variables, for nodes i < d and argument slots j < 3:
- ``op[i]`` (index into the catalog) and ``variant[i]`` (index into that op's parameter combos);
- ``src[i][j]``: -2 unused slot, -1 a fresh input tensor, k >= 0 the output of node k < i
  (node order is a topological order, so the graph is a DAG by construction);
- a symbolic tensor (rank, right-aligned dims, log2 buckets, value range) per argument slot and
  per node output.
Constraints: each op's shape rule and input domain under ``op[i] == o and variant[i] == v``;
argument == source tensor when ``src`` points at a node; dims within the size profile; per-tensor
memory and per-op FLOP budgets (linear in the log2 buckets); fan-in / fan-out / output / input /
reduction / matmul caps of the difficulty profile; every node either consumed or returned (no
dead nodes) and every node fed by an input (every op has an argument, so by construction).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import z3

from kernelgym.ops import CATALOG, OpSpec
from kernelgym.ops.spec import MAX_RANK, RuleCtx, SymTensor, log_bucket
from kernelgym.sampler.profiles import DifficultyProfile, SizeProfile

MAX_ARITY = max(op.arity for op in CATALOG.values())
VIEW_OPS = frozenset({"flatten", "merge_last"})  # may return a view of their argument
REDUCTION_CATEGORIES = frozenset({"reduction", "softmax", "norm", "cumulative"})
MATMUL_CATEGORIES = frozenset({"matmul", "conv"})
UNUSED, FRESH = -2, -1


@dataclass
class DagModel:
    """The z3 model for one (difficulty profile, size profile, op list); build once, solve often."""

    profile: DifficultyProfile
    sizes: SizeProfile
    ops: list[OpSpec]
    op_var: list[z3.ArithRef] = field(default_factory=list)
    variant_var: list[z3.ArithRef] = field(default_factory=list)
    src: list[list[z3.ArithRef]] = field(default_factory=list)
    args: list[list[SymTensor]] = field(default_factory=list)
    outs: list[SymTensor] = field(default_factory=list)
    fresh: dict[tuple[int, str], dict[str, z3.ArithRef]] = field(default_factory=dict)
    constraints: list[z3.BoolRef] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.op_index = {op.name: k for k, op in enumerate(self.ops)}
        self._build()
        self.base = z3.And(*self.constraints)

    @property
    def d(self) -> int:
        return self.profile.difficulty

    # -- construction -----------------------------------------------------------------------------

    def _tensor(self, name: str) -> SymTensor:
        s = self.sizes
        t = SymTensor(
            rank=z3.Int(f"{name}_r"),
            dims=tuple(z3.Int(f"{name}_d{k}") for k in range(MAX_RANK)),
            logs=tuple(z3.Int(f"{name}_l{k}") for k in range(MAX_RANK)),
            range=z3.Int(f"{name}_v"),
        )
        c = self.constraints
        c += [t.rank >= 1, t.rank <= MAX_RANK, t.range >= 0, t.range <= 2, z3.Sum(*t.logs) <= s.max_log]
        for k in range(MAX_RANK):
            c += [z3.If(t.rank > k, z3.And(t.dims[k] >= s.lo, t.dims[k] <= s.hi), t.dims[k] == 1),
                  log_bucket(t.dims[k], t.logs[k], s.hi)]
        return t

    def is_op(self, i: int, names: frozenset[str] | set[str]) -> z3.BoolRef:
        return z3.Or(*[self.op_var[i] == self.op_index[n] for n in names if n in self.op_index], False)

    def _build(self) -> None:
        d, prof, c = self.d, self.profile, self.constraints
        for i in range(d):
            self.op_var.append(z3.Int(f"op{i}"))
            self.variant_var.append(z3.Int(f"var{i}"))
            self.src.append([z3.Int(f"src{i}_{j}") for j in range(MAX_ARITY)])
            self.args.append([self._tensor(f"a{i}_{j}") for j in range(MAX_ARITY)])
            self.outs.append(self._tensor(f"o{i}"))
        for i in range(d):
            c += [self.op_var[i] >= 0, self.op_var[i] < len(self.ops)]
            for j in range(MAX_ARITY):
                used = self.is_op(i, {op.name for op in self.ops if op.arity > j})
                c += [z3.If(used, z3.And(self.src[i][j] >= FRESH, self.src[i][j] < i), self.src[i][j] == UNUSED)]
                for v in range(i):
                    c.append(z3.Implies(self.src[i][j] == v, _equal(self.args[i][j], self.outs[v])))
            for k, op in enumerate(self.ops):
                c.append(z3.Implies(self.op_var[i] == k, self._op_constraints(i, op)))
            c.append(z3.Sum(*[z3.If(self.src[i][j] >= 0, 1, 0) for j in range(MAX_ARITY)]) <= prof.max_fan_in)
            # A view op must read a node that is not itself a view, so no output aliases an input.
            views_of_node = z3.And(self.src[i][0] >= 0, *[
                z3.Implies(self.src[i][0] == v, z3.Not(self.is_op(v, VIEW_OPS))) for v in range(i)])
            c.append(z3.Implies(self.is_op(i, VIEW_OPS), views_of_node))
        consumers = [self.consumers(v) for v in range(d)]
        c += [n <= prof.max_fan_out for n in consumers]
        c.append(z3.Sum(*[z3.If(n == 0, 1, 0) for n in consumers]) <= prof.max_outputs)
        c.append(z3.Sum(*[z3.If(s == FRESH, 1, 0) for row in self.src for s in row]) <= prof.max_inputs)
        red = {op.name for op in self.ops if op.category in REDUCTION_CATEGORIES}
        mm = {op.name for op in self.ops if op.category in MATMUL_CATEGORIES}
        c.append(z3.Sum(*[z3.If(self.is_op(i, red), 1, 0) for i in range(d)]) <= prof.max_reductions)
        c.append(z3.Sum(*[z3.If(self.is_op(i, mm), 1, 0) for i in range(d)]) <= prof.max_matmuls)
        if self.sizes.min_log > 0:
            tensors = [t for i in range(d) for t in (self.outs[i], *self.args[i])]
            c.append(z3.Or(*[z3.Sum(*t.logs) >= self.sizes.min_log for t in tensors]))

    def _op_constraints(self, i: int, op: OpSpec) -> z3.BoolRef:
        s = self.sizes
        ctx = RuleCtx(prefix=f"n{i}_{op.name}", lo=s.lo, hi=s.hi, max_log=s.max_log)
        args, out = self.args[i][: op.arity], self.outs[i]
        per_variant = []
        for v, p in enumerate(op.variants):
            rule = list(op.shape(args, out, p, ctx))
            flops = op.log_flops(args, out, p, ctx) if op.log_flops else z3.Sum(*out.logs) + 3
            rule.append(flops <= s.max_log_flops)
            per_variant.append(z3.Implies(self.variant_var[i] == v, z3.And(*rule)))
        self.fresh[(i, op.name)] = {k: var for k, var in ctx.fresh_vars.items() if not k.startswith("log_")}
        ranges_in = [a.range for j, a in enumerate(args) if j not in op.index_args]
        cs = [self.variant_var[i] >= 0, self.variant_var[i] < len(op.variants), *per_variant, *ctx.extra]
        cs += [args[j].range >= op.input_domain(j) for j in range(op.arity) if j not in op.index_args]
        cs += [self.src[i][j] == FRESH for j in op.index_args]
        cs.append(out.range == op.output_range(ranges_in or [z3.IntVal(0)]))
        return z3.And(*cs)

    def consumers(self, v: int) -> z3.ArithRef:
        return z3.Sum(*[z3.If(self.src[i][j] == v, 1, 0) for i in range(v + 1, self.d) for j in range(MAX_ARITY)],
                      z3.IntVal(0))


def _equal(a: SymTensor, b: SymTensor) -> z3.BoolRef:
    return z3.And(a.rank == b.rank, a.range == b.range, *[x == y for x, y in zip(a.dims, b.dims)],
                  *[x == y for x, y in zip(a.logs, b.logs)])
