"""Uniform, seeded sampling from the CSP-DAG.

How uniformity is obtained (z3's own model order is heavily biased: it returns the first model
its search finds, e.g. the smallest op index and dims at their bounds):

1. The *multiset* of ops is drawn uniformly, each op independently from the ops allowed at this
   difficulty (those for which z3 finds some valid program). z3 then only has to say whether the
   multiset fits, not which ops to use. Op positions, edges and dims are left to the next steps,
   so almost every multiset fits and op frequencies stay uniform; the few that do not are
   redrawn and counted (`rejections["infeasible_ops"]`).
2. Every other decision (op order, parameter variant, each edge, each fresh input's value
   range, rank and dims, op-owned dims such as out_features) is *proposed* from the seeded RNG
   and *pinned* only if z3 says the whole problem stays satisfiable; otherwise the next candidate
   in a seeded order is tried. So z3 is a feasibility oracle and never picks a value itself.
3. Because only sat/unsat answers steer the process, and those are facts about the constraints
   rather than about z3's search history, the same seed gives the same task byte for byte, in
   any process and after any other samples. Values are read back from z3 models only for
   expressions the pins already determine (a node's output shape), which every model agrees on.
   The same holds for what only makes it faster:
   - each draw asks a fresh solver about the problem restricted to its op multiset, and the
     dims phase one about the problem with the structure substituted (`DagModel.pinned`): the
     same problem under the pins already made, so the same answers;
   - a list of decisions is pinned *speculatively*: all first candidates in one check, and only
     if that is unsat one decision at a time (`Oracle.pin_all`). When the speculative check is
     sat, pinning one at a time would have accepted every first candidate too, so the outcome is
     the one-at-a-time outcome; candidate lists never depend on z3's models beyond determined
     values, so the answers (and the task) are a function of the seed alone;
   - `allowed` is computed from witnesses (a sat answer is a fact) with the unrestricted problem
     as the fallback, so it is the same set in every process.
   A check that times out (`CHECK_TIMEOUT_MS`, far above what any check takes) would count as
   unsat and is the one thing that could make a draw machine-dependent.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import z3

from kernelgym.ops import CATALOG, OpSpec, get_op
from kernelgym.ops.spec import MAX_RANK, RANGE_NAMES
from kernelgym.sampler.graph import Graph, InputSpec, Node
from kernelgym.sampler.model import FRESH, MAX_ARITY, UNUSED, DagModel
from kernelgym.sampler.profiles import SizeProfile, difficulty_profile, size_profile

MAX_OP_DRAWS = 200
CHECK_TIMEOUT_MS = 20000
# Partner ops tried (d-1 copies) to show that an op can appear in some program of difficulty d.
WITNESSES = ("relu", "add", "sum", "linear", "flatten", "matmul", "mul_scalar", "transpose")


class Rejected(Exception):
    """A draw that cannot be completed; the sampler redraws and counts the reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Oracle:
    """A z3 solver over one problem, with pinning by push/check/pop. Counts checks in `stats`."""

    constraints: list[z3.BoolRef]
    stats: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.solver = z3.SimpleSolver()
        self.solver.set("timeout", CHECK_TIMEOUT_MS)
        self.solver.add(*self.constraints)
        self._model: z3.ModelRef | None = None

    def _check(self, *exprs: z3.BoolRef) -> bool:
        self.stats["checks"] += 1
        ok = self.solver.check(*exprs) == z3.sat
        self._model = self.solver.model() if ok else None
        return ok

    def sat(self, *exprs: z3.BoolRef) -> bool:
        """Whether the problem plus the pins plus `exprs` is satisfiable (pins nothing)."""
        return self._check(*exprs)

    def pin(self, *exprs: z3.BoolRef) -> bool:
        """Add `exprs` for good if the problem stays satisfiable."""
        if not exprs:
            return True
        if self._check(*exprs):
            self.solver.add(*exprs)
            return True
        return False

    def pin_first(self, var: z3.ArithRef, candidates: list[int]) -> int:
        """Pin `var` to the first feasible candidate (deduplicated, order kept)."""
        for value in dict.fromkeys(candidates):
            if self.pin(var == value):
                return value
        raise Rejected(f"no feasible value for {var}")

    def pin_all(self, decisions: list[tuple[z3.ArithRef, list[int]]], known_unsat: bool = False) -> list[int]:
        """`pin_first` for each decision in turn, with the same outcome in fewer checks.

        Blocks of decisions are tried with all their first candidates at once (the whole list
        first, halving on unsat, doubling again after a success). A sat block means each of its
        decisions, pinned in turn, would have taken its first candidate; a single decision whose
        first candidate is unsat goes on to its other candidates one by one. `known_unsat` says
        the whole list's first candidates are already known not to fit.
        """
        out: list[int] = []
        n = len(decisions)
        block = n // 2 if known_unsat else n
        while len(out) < n:
            i = len(out)
            block = max(1, min(block, n - i))
            chunk = decisions[i:i + block]
            if self.pin(*[var == cands[0] for var, cands in chunk]):
                self.stats["speculation_hits"] += 1
                out += [cands[0] for _, cands in chunk]
                block *= 2
            elif block > 1:
                self.stats["speculation_misses"] += 1
                block //= 2
            else:
                self.stats["speculation_misses"] += 1
                var, cands = chunk[0]
                out.append(self.pin_first(var, [c for c in dict.fromkeys(cands) if c != cands[0]]))
                block = n - len(out)
        return out

    def value(self, expr: z3.ArithRef) -> int:
        """Value of an expression fully determined by the pins (so history-independent)."""
        if self._model is None and not self._check():
            raise Rejected("no_completion")
        return self._model.eval(expr, model_completion=True).as_long()


class GraphSampler:
    """Samples `Graph`s for one difficulty and size profile."""

    def __init__(self, difficulty: int, sizes: str | SizeProfile = "tiny", ops: list[str] | None = None):
        self.profile = difficulty_profile(difficulty)
        self.sizes = size_profile(sizes) if isinstance(sizes, str) else sizes
        specs = [get_op(n) for n in ops] if ops is not None else list(CATALOG.values())
        self.model = DagModel(self.profile, self.sizes, specs)
        self.rejections: Counter[str] = Counter()
        self.stats: Counter[str] = Counter()
        self.allowed = self._allowed_ops()

    @property
    def d(self) -> int:
        return self.profile.difficulty

    def _oracle(self, constraints: list[z3.BoolRef]) -> Oracle:
        return Oracle(constraints, self.stats)

    def _allowed_ops(self) -> list[OpSpec]:
        """Ops that appear in at least one valid program of this difficulty.

        A witness program (the op after or before d-1 copies of a common op, in a chain) that is
        sat proves an op allowed; only ops without a witness need the unrestricted problem.
        """
        m = self.model
        partners = [m.op_index[w] for w in WITNESSES if w in m.op_index]
        allowed = []
        for k, op in enumerate(m.ops):
            if self.d == 1:
                ok = self._oracle(m.problem(Counter({k: 1}))).sat()
            else:
                rest = self.d - 1
                ok = any(self._witness(o, vs) for w in partners for v in range(len(op.variants))
                         for o, vs in (([w] * rest + [k], [0] * rest + [v]), ([k] + [w] * rest, [v] + [0] * rest))
                         ) or self._oracle(m.problem(None, require=k)).sat()
            if ok:
                allowed.append(op)
        return allowed

    def _witness(self, order: list[int], variants: list[int]) -> bool:
        """Whether the chain program of `order` (fresh inputs on every other slot) is valid."""
        m = self.model
        srcs = [[i - 1 if j == 0 and i > 0 and j not in m.ops[k].index_args else FRESH
                 for j in range(m.ops[k].arity)] for i, k in enumerate(order)]
        return m.structure_ok(order, srcs) and self._oracle(m.pinned(order, variants, srcs)).sat()

    # -- one draw ---------------------------------------------------------------------------------

    def sample(self, rng: random.Random, ops: list[str] | None = None) -> Graph:
        """Draw a graph; `ops` forces the op multiset (names), else it is drawn uniformly."""
        for _ in range(MAX_OP_DRAWS):
            chosen = [get_op(n) for n in ops] if ops is not None else [rng.choice(self.allowed) for _ in range(self.d)]
            if len(chosen) != self.d:
                raise ValueError(f"difficulty {self.d} needs {self.d} ops, got {len(chosen)}")
            try:
                return self._complete(rng, chosen)
            except Rejected as exc:
                self.rejections[exc.reason if exc.reason == "infeasible_ops" else "no_completion"] += 1
                if ops is not None and exc.reason == "infeasible_ops":
                    raise ValueError(f"ops {ops} do not form a valid difficulty-{self.d} program") from None
        raise RuntimeError(f"could not sample a difficulty-{self.d} graph in {MAX_OP_DRAWS} draws")

    def _complete(self, rng: random.Random, chosen: list[OpSpec]) -> Graph:
        """Order, variants and edges, then dims (see the module docstring for the steps)."""
        m = self.model
        self.stats["draws"] += 1
        idx = [m.op_index[op.name] for op in chosen]
        perm = idx[:]
        rng.shuffle(perm)
        decisions = self._structure_decisions(rng, perm)
        # Speculation: the permutation and every first preference at once, checked on the
        # problem with the whole structure substituted (structure-only constraints in Python).
        variants, srcs = self._split(perm, [cands[0] for _, cands in decisions])
        if m.structure_ok(perm, srcs):
            dz = self._oracle(m.pinned(perm, variants, srcs))
            if dz.sat():
                self.stats["structure_hits"] += 1
                return self._finish(rng, dz, perm, variants, srcs)
        self.stats["structure_misses"] += 1
        z = self._oracle(m.ordered(perm))
        if z.sat():  # the permutation fits: pin one decision at a time (all firsts failed)
            order = perm
            values = z.pin_all(decisions, known_unsat=True)
        else:
            z = self._oracle(m.problem(Counter(idx)))
            if not z.sat():
                raise Rejected("infeasible_ops")
            order = self._place_ops(rng, z, idx)
            values = z.pin_all(self._structure_decisions(rng, order))
        variants, srcs = self._split(order, values)
        return self._finish(rng, self._oracle(m.pinned(order, variants, srcs)), order, variants, srcs)

    def _structure_decisions(self, rng: random.Random, order: list[int]) -> list[tuple[z3.ArithRef, list[int]]]:
        """(variable, candidates) for each node's variant, then each used argument slot's source."""
        m = self.model
        decisions = []
        for i, k in enumerate(order):
            prefs = list(range(len(m.ops[k].variants)))
            rng.shuffle(prefs)
            decisions.append((m.variant_var[i], prefs))
        edge_prefs = self._edge_preferences(rng, order)
        decisions += [(m.src[i][j], edge_prefs[i][j]) for i, k in enumerate(order) for j in range(m.ops[k].arity)]
        return decisions

    def _split(self, order: list[int], values: list[int]) -> tuple[list[int], list[list[int]]]:
        variants, it = values[: self.d], iter(values[self.d:])
        return variants, [[next(it) for _ in range(self.model.ops[k].arity)] for k in order]

    def _finish(self, rng: random.Random, dz: Oracle, order, variants, srcs) -> Graph:
        fresh_values, shapes = self._pin_tensors(rng, dz, order, srcs)
        return self._read_graph(dz, order, variants, srcs, fresh_values, shapes)

    def _place_ops(self, rng: random.Random, z: Oracle, idx: list[int]) -> list[int]:
        """Op order position by position (the drawn permutation did not fit)."""
        m = self.model
        remaining = Counter(idx)
        order = []
        for i in range(self.d):
            cands = sorted(remaining)
            rng.shuffle(cands)
            k = z.pin_first(m.op_var[i], cands)
            remaining[k] -= 1
            if not remaining[k]:
                del remaining[k]
            order.append(k)
        return order

    def _edge_preferences(self, rng: random.Random, order: list[int]) -> list[list[list[int]]]:
        """Candidate sources per (node, slot), most preferred first."""
        m, prof = self.model, self.profile
        prefs: list[list[list[int]]] = []
        for i, k in enumerate(order):
            op = m.ops[k]
            chain_slot = rng.randrange(op.arity)
            row = []
            for j in range(MAX_ARITY):
                if j >= op.arity:
                    row.append([UNUSED])
                    continue
                if j in op.index_args:
                    row.append([FRESH])
                    continue
                earlier = list(range(i))
                rng.shuffle(earlier)
                first: list[int] = []
                if prof.chain and i > 0 and j == chain_slot:
                    first = [i - 1]
                elif prof.branch and i > 1 and rng.random() < 0.5:
                    first = [rng.randrange(i - 1)]
                row.append([*first, FRESH, *earlier])
            prefs.append(row)
        return prefs

    def _pin_tensors(self, rng: random.Random, z: Oracle, order: list[int], srcs: list[list[int]]):
        """Pin every fresh input's range, rank and dims and every op-owned dim, node by node.

        Per node, the proposals for all its fresh inputs and op-owned dims are tried in one check;
        if that fails, per tensor (range, rank, dims at once), then one decision at a time.
        """
        m, s = self.model, self.sizes
        fresh_values: dict[int, dict[str, int]] = {}
        shapes: dict[int, tuple[int, ...]] = {}  # node -> output shape (right-aligned, padded)
        seen_dims: list[int] = []
        for i, k in enumerate(order):
            op = m.ops[k]
            # Only tensors already fully determined by the pins may seed candidates.
            determined = [shapes[src] for src in srcs[i] if src >= 0]
            plans = []
            for j, src in enumerate(srcs[i]):
                if src >= 0:
                    continue
                t = m.args[i][j]
                ranges = [] if j in op.index_args else [op.input_domain(j), 2]
                ranks = list(range(1, MAX_RANK + 1))
                rng.shuffle(ranks)
                sib = determined[rng.randrange(len(determined))] if determined and rng.random() < 0.5 else None
                if sib is not None:  # propose a copy of a sibling's shape (what broadcasting ops need)
                    ranks.remove(sib[0])
                    ranks.insert(0, sib[0])
                plans.append((t, ranges, ranks, sib, _propose_dims(rng, ranks[0], s)))
            fresh = sorted(m.fresh_vars(i, k).items())
            fresh_props = [_propose_dim(rng, s) for _ in fresh]
            first = []
            for t, ranges, ranks, sib, prop in plans:
                dims = sib[1:1 + ranks[0]] if sib is not None else prop
                first += [t.range == ranges[0]] if ranges else []
                first += [t.rank == ranks[0], *[t.dims[slot] == v for slot, v in enumerate(dims)]]
                determined.append((ranks[0], *dims, *[1] * (MAX_RANK - ranks[0])))
            first += [var == v for (_, var), v in zip(fresh, fresh_props)]
            if z.pin(*first):
                self.stats["node_hits"] += 1
                for t, ranges, ranks, sib, prop in plans:
                    seen_dims += list(sib[1:1 + ranks[0]] if sib is not None else prop)
                values = dict(zip([name for name, _ in fresh], fresh_props))
            else:
                self.stats["node_misses"] += 1
                determined = [shapes[src] for src in srcs[i] if src >= 0]
                for t, ranges, ranks, sib, prop in plans:
                    determined.append(self._pin_tensor(z, t, ranges, ranks, sib, prop, determined, seen_dims, rng))
                values = {}
                for (name, var), p in zip(fresh, fresh_props):
                    values[name] = z.pin_first(var, [p, *reversed(seen_dims), 1, 2])
                    seen_dims.append(values[name])
            fresh_values[i] = values
            out = m.outs[i]
            shapes[i] = (z.value(out.rank), *[z.value(out.dims[slot]) for slot in range(MAX_RANK)])
            seen_dims += shapes[i][1:]
        return fresh_values, shapes

    def _pin_tensor(self, z, t, ranges, ranks, sib, prop, determined, seen_dims, rng):
        s = self.sizes
        if ranges:
            z.pin_first(t.range, ranges)
        rank = z.pin_first(t.rank, ranks)
        if rank != ranks[0]:
            prop = _propose_dims(rng, rank, s)
        if sib is not None and sib[0] == rank:
            prop = list(sib[1:1 + rank])
        decisions = []
        for slot in range(rank):
            near = [x[1 + slot] for x in determined] + [x[2 + slot] for x in determined if slot + 1 < MAX_RANK]
            decisions.append((t.dims[slot], [prop[slot], *near, 1, *reversed(seen_dims),
                                             *range(s.lo, min(s.hi, 64) + 1)]))
        dims = z.pin_all(decisions)
        seen_dims += dims
        return (rank, *dims, *[1] * (MAX_RANK - rank))

    def _read_graph(self, z: Oracle, order, variants, srcs, fresh_values, shapes) -> Graph:
        m = self.model

        def shape(t) -> tuple[int, ...]:
            r = z.value(t.rank)
            return tuple(z.value(t.dims[slot]) for slot in reversed(range(r)))

        inputs: list[InputSpec] = []
        nodes: list[Node] = []
        pending_bounds: list[tuple[int, int, int]] = []  # (input index, node, slot)
        for i, k in enumerate(order):
            op = m.ops[k]
            params = op.variants[variants[i]]
            args = []
            for j in range(op.arity):
                src = srcs[i][j]
                if src >= 0:
                    args.append(("node", src))
                    continue
                t = m.args[i][j]
                if j in op.index_args:
                    inputs.append(InputSpec(shape(t), kind="index"))
                    pending_bounds.append((len(inputs) - 1, i, j))
                else:
                    inputs.append(InputSpec(shape(t), range=RANGE_NAMES[z.value(t.range)]))
                args.append(("input", len(inputs) - 1))
            r = shapes[i][0]
            out_shape = tuple(shapes[i][1 + slot] for slot in reversed(range(r)))
            nodes.append(Node(op.name, params, tuple(args), out_shape, fresh_values[i]))
        for inp, i, _ in pending_bounds:
            node = nodes[i]
            in_shapes = [inputs[kk].shape if kind == "input" else nodes[kk].shape for kind, kk in node.args]
            bound = get_op(node.op).index_bound(in_shapes, node.shape, {**node.params, "_fresh": node.fresh})
            inputs[inp] = InputSpec(inputs[inp].shape, kind="index", bound=int(bound))
        consumed = {kk for n in nodes for kind, kk in n.args if kind == "node"}
        outputs = tuple(i for i in range(len(nodes)) if i not in consumed)
        return Graph(tuple(inputs), tuple(nodes), outputs)


def _propose_dim(rng: random.Random, s: SizeProfile) -> int:
    """Log-uniform in [lo, hi]: small and large sizes equally likely per octave."""
    top = s.hi.bit_length() - 1
    e = rng.randint(0, top)
    return max(s.lo, min(s.hi, rng.randint(2**e, 2 ** (e + 1) - 1)))


def _propose_dims(rng: random.Random, rank: int, s: SizeProfile) -> list[int]:
    """Dims for one fresh tensor whose element count lands inside the profile's budget."""
    total = rng.randint(max(s.min_log - 2, s.max_log // 2), s.max_log)
    cuts = sorted(rng.randint(0, total) for _ in range(rank - 1))
    parts = [b - a for a, b in zip([0, *cuts], [*cuts, total])]
    dims = []
    for e in parts:
        e = min(e, s.hi.bit_length() - 1)
        dims.append(max(s.lo, min(s.hi, rng.randint(2**e, 2 ** (e + 1) - 1))))
    return dims

