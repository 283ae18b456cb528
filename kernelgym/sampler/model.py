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
dead nodes) and every node fed by an input (every op has an argument, so by construction); the
largest tensor (a node output or a fresh input) at least ``2**min_log`` elements.

How the problem is handed to z3 (speed; the problem itself is the one above):
- The per-(node, op) constraints ``op[i] == o -> rule`` are built once per model, lazily, and
  reused as z3 ASTs; `problem(counts)` assembles the problem *restricted to a drawn op multiset*
  (``op[i]`` ranges over the drawn ops and each op occurs as often as drawn) from them, with
  argument tensors only for slots some drawn op can use. Restricting to the multiset is exactly
  what the sampler asks anyway (it pins the multiset first), so sat/unsat answers are unchanged.
- `pinned(order, variants, srcs)` is the same problem with the structure pinned: structure
  variables replaced by their values and argument tensors fed by a node replaced by that node's
  output (`z3.substitute`, in C). Structure-only constraints are then ground and true (the pins
  were checked sat), so what is left is a small conjunction over dims for the dims phase.
- log2 buckets are tied to their dims by bound-atom equivalences (`spec.log_link`), rank padding
  is an implication, not an If over the bounds: fewer case splits for the solver, same constraints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import z3

from kernelgym.ops import CATALOG, OpSpec
from kernelgym.ops.spec import MAX_RANK, RuleCtx, SymTensor, log_link
from kernelgym.sampler.profiles import DifficultyProfile, SizeProfile

MAX_ARITY = max(op.arity for op in CATALOG.values())
# Ops that may return a view of their argument (a view of an input would be an aliased output).
VIEW_OPS = frozenset({"flatten", "merge_last", "unsqueeze", "squeeze", "narrow", "select", "expand", "reshape"})
REDUCTION_CATEGORIES = frozenset({"reduction", "softmax", "norm", "cumulative", "loss"})
MATMUL_CATEGORIES = frozenset({"matmul", "conv"})
UNUSED, FRESH = -2, -1
_RANK_TABLES: dict[tuple[str, int, SizeProfile], dict[tuple[int, ...], tuple[int, ...]]] = {}


class DagModel:
    """Variables and cached constraint pieces for one (difficulty profile, size profile, op list)."""

    def __init__(self, profile: DifficultyProfile, sizes: SizeProfile, ops: Sequence[OpSpec]):
        self.profile = profile
        self.sizes = sizes
        self.ops = list(ops)
        self.op_index = {op.name: k for k, op in enumerate(self.ops)}
        d = self.d
        self.op_var = [z3.Int(f"op{i}") for i in range(d)]
        self.variant_var = [z3.Int(f"var{i}") for i in range(d)]
        self.src = [[z3.Int(f"src{i}_{j}") for j in range(MAX_ARITY)] for i in range(d)]
        self._tensor_cs: dict[int, z3.BoolRef] = {}
        self._big: dict[int, z3.BoolRef] = {}
        self.args = [[self._tensor(f"a{i}_{j}") for j in range(MAX_ARITY)] for i in range(d)]
        # Outputs may be 0-d (ops with `scalar_out`; the others pin rank >= 1); arguments may not,
        # so a 0-d output is never consumed.
        self.outs = [self._tensor(f"o{i}", min_rank=0) for i in range(d)]
        # Ops whose output (int64 indices) no op may read.
        self.index_out = frozenset(k for k, op in enumerate(self.ops) if op.index_out)
        self.fresh: dict[tuple[int, str], dict[str, z3.ArithRef]] = {}
        self._rules: dict[tuple, z3.BoolRef] = {}
        self._eqs: dict[tuple[int, int, int], z3.BoolRef] = {}
        self._pinned_rules: dict[tuple, z3.BoolRef] = {}

    @property
    def d(self) -> int:
        return self.profile.difficulty

    # -- pieces -----------------------------------------------------------------------------------

    def _tensor(self, name: str, min_rank: int = 1) -> SymTensor:
        s = self.sizes
        dims = tuple(z3.Int(f"{name}_d{k}") for k in range(MAX_RANK))
        t = SymTensor(rank=z3.Int(f"{name}_r"), dims=dims, logs=tuple(z3.Int(f"{name}_l{k}") for k in range(MAX_RANK)),
                      range=z3.Int(f"{name}_v"))
        cs = [t.rank >= min_rank, t.rank <= MAX_RANK, t.range >= 0, t.range <= 2, z3.Sum(*t.logs) <= s.max_log]
        for k in range(MAX_RANK):
            cs += [t.dims[k] >= 1, t.dims[k] <= s.hi, z3.Implies(t.rank <= k, t.dims[k] == 1),
                   log_link(t.dims[k], t.logs[k], s.hi)]
            if s.lo > 1:
                cs.append(z3.Implies(t.rank > k, t.dims[k] >= s.lo))
        self._tensor_cs[id(t)] = z3.And(*cs)
        self._big[id(t)] = z3.Sum(*t.logs) >= s.min_log
        return t

    def tensor_cs(self, t: SymTensor) -> z3.BoolRef:
        return self._tensor_cs[id(t)]

    def big(self, t: SymTensor) -> z3.BoolRef:
        """t holds at least 2**min_log elements."""
        return self._big[id(t)]

    def rule(self, i: int, k: int) -> z3.BoolRef:
        """Constraints of op k at node i (shape rule per variant, domains, budgets), cached."""
        key = (i, k)
        if key not in self._rules:
            self._rules[key] = self._op_constraints(i, self.ops[k])
        return self._rules[key]

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
        if not op.scalar_out:
            cs.append(out.rank >= 1)
        # Arguments are never 0-d. Stated here too (not only in the tensors' own constraints) so
        # that `pinned`, which substitutes a node-fed argument by the node's output, keeps it.
        cs += [a.rank >= 1 for a in args]
        return z3.And(*cs)

    def _eq(self, i: int, j: int, v: int) -> z3.BoolRef:
        key = (i, j, v)
        if key not in self._eqs:
            a, b = self.args[i][j], self.outs[v]
            self._eqs[key] = z3.Implies(self.src[i][j] == v, z3.And(
                a.rank == b.rank, a.range == b.range, *[x == y for x, y in zip(a.dims, b.dims)],
                *[x == y for x, y in zip(a.logs, b.logs)]))
        return self._eqs[key]

    def fresh_vars(self, i: int, k: int) -> dict[str, z3.ArithRef]:
        self.rule(i, k)
        return self.fresh[(i, self.ops[k].name)]

    def rank_table(self, k: int, v: int) -> dict[tuple[int, ...], tuple[int, ...]]:
        """Every (argument ranks) -> (output ranks) that op k, variant v admits on its own.

        Found with z3 (all models, blocking each rank tuple found) once per process and op; a
        complete list, so it does not depend on the order z3 finds them in. Used only to propose
        ranks that can fit: z3 still decides.
        """
        op = self.ops[k]
        key = (op.name, v, self.sizes)
        if key not in _RANK_TABLES:
            args, out = self.args[0][: op.arity], self.outs[0]
            solver = z3.SimpleSolver()
            solver.add(self.rule(0, k), self.variant_var[0] == v, self.tensor_cs(out),
                       *[self.tensor_cs(a) for a in args], *[self.src[0][j] == FRESH for j in range(op.arity)])
            ranks = [a.rank for a in args] + [out.rank]
            found: dict[tuple[int, ...], set[int]] = {}
            while solver.check() == z3.sat:
                model = solver.model()
                tup = tuple(model.eval(r).as_long() for r in ranks)
                found.setdefault(tup[:-1], set()).add(tup[-1])
                solver.add(z3.Or(*[r != x for r, x in zip(ranks, tup)]))
            _RANK_TABLES[key] = {a: tuple(sorted(o)) for a, o in sorted(found.items())}
        return _RANK_TABLES[key]

    # -- problems ---------------------------------------------------------------------------------

    def problem(self, counts: Mapping[int, int] | None = None, require: int | None = None) -> list[z3.BoolRef]:
        """The problem with ``op[i]`` restricted to the ops in `counts`, each used exactly that often.

        With `counts=None` every op of the model may be used (any number of times) and `require`
        is an op that must occur: the unrestricted problem, for deciding which ops are allowed.
        """
        d, prof = self.d, self.profile
        ks = sorted(counts) if counts is not None else list(range(len(self.ops)))
        arity = max(self.ops[k].arity for k in ks)
        c: list[z3.BoolRef] = []

        def is_op(i: int, names: frozenset[str]) -> z3.BoolRef:
            return z3.Or(False, *[self.op_var[i] == k for k in ks if self.ops[k].name in names])

        for i in range(d):
            c.append(z3.Or(*[self.op_var[i] == k for k in ks]))
            c += [z3.Implies(self.op_var[i] == k, self.rule(i, k)) for k in ks]
            c.append(self.tensor_cs(self.outs[i]))
            for j in range(arity):
                users = [k for k in ks if self.ops[k].arity > j]
                used = z3.Or(False, *[self.op_var[i] == k for k in users]) if len(users) < len(ks) else z3.BoolVal(True)
                c.append(z3.If(used, z3.And(self.src[i][j] >= FRESH, self.src[i][j] < i), self.src[i][j] == UNUSED))
                c.append(self.tensor_cs(self.args[i][j]))
                c += [self._eq(i, j, v) for v in range(i)]
            c.append(z3.Sum(*[z3.If(self.src[i][j] >= 0, 1, 0) for j in range(arity)]) <= prof.max_fan_in)
            for v in range(i):  # an op's int64 indices are no argument
                sink = z3.Or(False, *[self.op_var[v] == k for k in ks if k in self.index_out])
                if not z3.is_false(sink):
                    c += [z3.Implies(sink, self.src[i][j] != v) for j in range(arity)]
            views = is_op(i, VIEW_OPS)
            if not z3.is_false(views):
                # A view op must read a node that is not itself a view, so no output aliases an input.
                c.append(z3.Implies(views, z3.And(self.src[i][0] >= 0, *[
                    z3.Implies(self.src[i][0] == v, z3.Not(is_op(v, VIEW_OPS))) for v in range(i)])))
        consumers = [z3.Sum(z3.IntVal(0), *[z3.If(self.src[i][j] == v, 1, 0)
                                            for i in range(v + 1, d) for j in range(arity)]) for v in range(d)]
        c += [n <= prof.max_fan_out for n in consumers]
        c.append(z3.Sum(*[z3.If(n == 0, 1, 0) for n in consumers]) <= prof.max_outputs)
        c.append(z3.Sum(*[z3.If(self.src[i][j] == FRESH, 1, 0) for i in range(d) for j in range(arity)])
                 <= prof.max_inputs)
        red = frozenset(op.name for op in self.ops if op.category in REDUCTION_CATEGORIES)
        mm = frozenset(op.name for op in self.ops if op.category in MATMUL_CATEGORIES)
        c.append(z3.Sum(*[z3.If(is_op(i, red), 1, 0) for i in range(d)]) <= prof.max_reductions)
        c.append(z3.Sum(*[z3.If(is_op(i, mm), 1, 0) for i in range(d)]) <= prof.max_matmuls)
        if counts is not None:
            c += [z3.Sum(*[z3.If(v == k, 1, 0) for v in self.op_var]) == n for k, n in counts.items()]
        if require is not None:
            c.append(z3.Or(*[v == require for v in self.op_var]))
        c.append(self._min_size(arity))
        return c

    def _min_size(self, arity: int) -> z3.BoolRef:
        """Some node output or fresh input holds at least 2**min_log elements."""
        m = self.sizes.min_log
        if m <= 0:
            return z3.BoolVal(True)
        big = [self.big(o) for o in self.outs]
        big += [z3.And(self.src[i][j] == FRESH, self.big(self.args[i][j]))
                for i in range(self.d) for j in range(arity)]
        return z3.Or(*big)

    def ordered(self, order: Sequence[int]) -> list[z3.BoolRef]:
        """`problem(counts of order)` with ``op[i] == order[i]`` pinned, the op choice substituted."""
        d, prof = self.d, self.profile
        ops = [self.ops[k] for k in order]
        c: list[z3.BoolRef] = []
        for i, op in enumerate(ops):
            key = ("node", i, order[i])
            if key not in self._rules:
                cs = [self.op_var[i] == order[i], self.rule(i, order[i]), self.tensor_cs(self.outs[i])]
                for j in range(op.arity):
                    cs += [self.src[i][j] >= FRESH, self.src[i][j] < i, self.tensor_cs(self.args[i][j])]
                    cs += [self._eq(i, j, v) for v in range(i)]
                cs.append(z3.Sum(*[z3.If(self.src[i][j] >= 0, 1, 0) for j in range(op.arity)]) <= prof.max_fan_in)
                self._rules[key] = z3.And(*cs)
            c.append(self._rules[key])
            if op.name in VIEW_OPS:
                c.append(z3.And(self.src[i][0] >= 0, *[self.src[i][0] != v for v in range(i)
                                                       if ops[v].name in VIEW_OPS]))
            c += [self.src[i][j] != v for v in range(i) if ops[v].index_out for j in range(op.arity)]
        consumers = [z3.Sum(z3.IntVal(0), *[z3.If(self.src[i][j] == v, 1, 0)
                                            for i in range(v + 1, d) for j in range(ops[i].arity)]) for v in range(d)]
        c += [n <= prof.max_fan_out for n in consumers]
        c.append(z3.Sum(*[z3.If(n == 0, 1, 0) for n in consumers]) <= prof.max_outputs)
        c.append(z3.Sum(*[z3.If(self.src[i][j] == FRESH, 1, 0) for i in range(d) for j in range(ops[i].arity)])
                 <= prof.max_inputs)
        if sum(op.category in REDUCTION_CATEGORIES for op in ops) > prof.max_reductions or \
                sum(op.category in MATMUL_CATEGORIES for op in ops) > prof.max_matmuls:
            c.append(z3.BoolVal(False))
        m = self.sizes.min_log
        if m > 0:
            c.append(z3.Or(*[self.big(o) for o in self.outs],
                           *[z3.And(self.src[i][j] == FRESH, self.big(self.args[i][j]))
                             for i in range(d) for j in range(ops[i].arity)]))
        return c

    def structure_ok(self, order: Sequence[int], srcs: Sequence[Sequence[int]]) -> bool:
        """The structure-only constraints (caps, no dead nodes, edge ranges) for concrete edges."""
        d, prof = self.d, self.profile
        ops = [self.ops[k] for k in order]
        fan_out = [0] * d
        inputs = 0
        for i, op in enumerate(ops):
            row = srcs[i]
            if any(not FRESH <= s < i for s in row) or sum(s >= 0 for s in row) > prof.max_fan_in:
                return False
            if any(row[j] != FRESH for j in op.index_args):
                return False
            if op.name in VIEW_OPS and (row[0] < 0 or ops[row[0]].name in VIEW_OPS):
                return False
            if any(s >= 0 and ops[s].index_out for s in row):
                return False
            inputs += sum(s == FRESH for s in row)
            for s in row:
                if s >= 0:
                    fan_out[s] += 1
        return (max(fan_out) <= prof.max_fan_out and fan_out.count(0) <= prof.max_outputs
                and inputs <= prof.max_inputs
                and sum(op.category in REDUCTION_CATEGORIES for op in ops) <= prof.max_reductions
                and sum(op.category in MATMUL_CATEGORIES for op in ops) <= prof.max_matmuls)

    def pinned(self, order: Sequence[int], variants: Sequence[int],
               srcs: Sequence[Sequence[int]]) -> list[z3.BoolRef]:
        """The problem with op order, variants and edges pinned, as a conjunction over dims.

        Equivalent to `problem` plus the pins (given that they are satisfiable together): the
        structure variables are substituted by their values, each argument fed by a node by that
        node's output tensor, and the constraints that only mention structure (true under the
        pins) are left out.
        """
        c: list[z3.BoolRef] = []
        tensors: list[SymTensor] = list(self.outs)
        for i, k in enumerate(order):
            op = self.ops[k]
            pairs = [(self.op_var[i], z3.IntVal(k)), (self.variant_var[i], z3.IntVal(variants[i]))]
            for j in range(op.arity):
                pairs.append((self.src[i][j], z3.IntVal(srcs[i][j])))
                a = self.args[i][j]
                if srcs[i][j] >= 0:
                    b = self.outs[srcs[i][j]]
                    pairs += [(a.rank, b.rank), (a.range, b.range), *zip(a.dims, b.dims), *zip(a.logs, b.logs)]
                else:
                    c.append(self.tensor_cs(a))
                    tensors.append(a)
            key = (i, k, variants[i], tuple(srcs[i]))
            if key not in self._pinned_rules:
                self._pinned_rules[key] = z3.simplify(z3.substitute(self.rule(i, k), *pairs))
            c.append(self._pinned_rules[key])
            c.append(self.tensor_cs(self.outs[i]))
        m = self.sizes.min_log
        if m > 0:
            c.append(z3.Or(*[self.big(t) for t in tensors]))
        return c
