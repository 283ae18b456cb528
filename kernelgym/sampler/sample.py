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
   In order, per draw:
   a. a random permutation of the multiset and, for it, shuffled variant and edge preferences;
   b. the structures (variants and edges) in preference order that pass the structure caps
      (`DagModel.structure_ok`) and whose ranks fit the per-op rank tables
      (`DagModel.rank_table`: complete, found with z3 once per op), depth first; the first that
      z3 accepts is pinned (a few are tried; then, or if the permutation does not fit, one
      decision at a time on the problem restricted to the order or to the multiset);
   c. for the pinned structure, one unit per fresh input (value range, rank, dims) and per
      op-owned dim, node by node. A unit's first choice is a rank from a random rank plan that
      the rank tables admit and dims that copy a sibling argument's trailing dims (as an
      equation, so independent of values) or log-uniform random ones; fallbacks try the other
      candidates one decision at a time.
   The first draw of a task checks (a) + the first structure + every unit's first choice in a
   single z3 call, which succeeds for about half the tasks at difficulty 3.
3. Because only sat/unsat answers steer the process, and those are facts about the constraints
   rather than about z3's search history, the same seed gives the same task byte for byte, in
   any process and after any other samples. Values are read back from z3 models only for
   expressions the pins already determine (a node's output shape, a pinned dim), which every
   model agrees on. The same holds for what only makes it faster:
   - each draw asks solvers about the problem restricted to its op multiset, to its order
     (`DagModel.ordered`) or with the structure substituted (`DagModel.pinned`): the same
     problem under the pins already made (checked in Python for structure-only constraints),
     so the same answers. Solvers are reused between problems (each problem in its own
     push/pop scope, which is cheaper than a new solver); what a reused solver learned earlier
     can change how fast it answers, never whether the answer is sat;
   - decisions are pinned *speculatively* (`oracle.Oracle.pin_all`): blocks of first choices in one
     check, halving on unsat. A sat block means pinning one at a time would have accepted every
     first choice too, so the outcome is the one-at-a-time outcome; first choices never depend
     on z3's models, fallback candidates only on determined values, so the answers (and the
     task) are a function of the seed alone;
   - Python-side filters (structure caps, rank tables) only skip candidates that z3 would have
     rejected: the rank tables are the complete sets of rank tuples each op admits on its own;
   - `allowed` is computed from witnesses (a sat answer is a fact) with the unrestricted problem
     as the fallback, so it is the same set in every process.
   A check that times out (`oracle.CHECK_TIMEOUT_MS`, far above what any check takes) would count as
   unsat and is the one thing that could make a draw machine-dependent. A new z3 version could
   change nothing but speed; a change to the catalog, the profiles or this procedure changes
   tasks (the seed fixes the draw, not the problem).
"""

from __future__ import annotations

import itertools
import random
from collections import Counter

import z3

from kernelgym.graph import Graph, InputSpec, Node
from kernelgym.ops import CATALOG, OpSpec, get_op
from kernelgym.ops.spec import MAX_RANK, RANGE_NAMES, SymTensor
from kernelgym.sampler.model import FRESH, MAX_ARITY, UNUSED, VIEW_OPS, DagModel
from kernelgym.sampler.oracle import Decision, Oracle, Rejected, choose, eq
from kernelgym.sampler.profiles import SizeProfile, difficulty_profile, size_profile

MAX_OP_DRAWS = 200
MAX_PERMUTATIONS = 8  # further random op orders tried when the first does not fit
MAX_STRUCTURE_TRIES = 6  # structures checked by z3 before the one-decision-at-a-time search
MAX_STRUCTURE_STEPS = 20000  # Python search steps for those structures
# Partner ops tried (d-1 copies) to show that an op can appear in some program of difficulty d.
WITNESSES = ("relu", "add", "sum", "linear", "flatten", "matmul", "mul_scalar", "transpose")


class GraphSampler:
    """Samples `Graph`s for one difficulty and size profile."""

    def __init__(self, difficulty: int, sizes: str | SizeProfile = "tiny", ops: list[str] | None = None):
        self.profile = difficulty_profile(difficulty)
        self.sizes = size_profile(sizes) if isinstance(sizes, str) else sizes
        specs = [get_op(n) for n in ops] if ops is not None else list(CATALOG.values())
        self.model = DagModel(self.profile, self.sizes, specs)
        self.rejections: Counter[str] = Counter()
        self.stats: Counter[str] = Counter()
        self._full: Oracle | None = None
        self._solvers: list = []
        self._live: list[Oracle] = []
        self.allowed = self._allowed_ops()

    @property
    def d(self) -> int:
        return self.profile.difficulty

    @property
    def z(self) -> Oracle:
        """An oracle over the unrestricted problem (any op at any node), for ad-hoc questions such
        as ``gs.z.sat(gs.model.op_var[0] == k)``; built on first use, never used for sampling."""
        if self._full is None:
            self._full = Oracle(self.model.problem(None), self.stats)
        return self._full

    def _oracle(self, constraints: list[z3.BoolRef]) -> Oracle:
        o = Oracle(constraints, self.stats, self._solvers)
        self._live.append(o)
        return o

    def _release(self) -> None:
        for o in self._live:
            o.release()
        self._live.clear()

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
            self._release()
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
            finally:
                self._release()
        raise RuntimeError(f"could not sample a difficulty-{self.d} graph in {MAX_OP_DRAWS} draws")

    def _complete(self, rng: random.Random, chosen: list[OpSpec]) -> Graph:
        """Order, variants and edges, then ranges and dims (see the module docstring)."""
        m = self.model
        self.stats["draws"] += 1
        idx = [m.op_index[op.name] for op in chosen]
        perm = idx[:]
        rng.shuffle(perm)
        prefs = self._structure_prefs(rng, perm)
        # Speculation: the permutation and every first preference at once, checked on the
        # problem with the whole structure substituted (structure-only constraints in Python),
        # together with the first choice of every dims decision: one check for a whole task.
        variants, srcs = self._split(perm, [cands[0] for _, cands in prefs])
        firsts = (variants, srcs)
        # Structures in preference order (depth first: node by node, variant, then sources)
        # that the structure caps and the per-op rank tables admit (necessary conditions).
        candidates = self._candidate_structures(perm, prefs)
        head = next(candidates, None)
        if head == firsts:
            dz = self._oracle(m.pinned(perm, variants, srcs))
            units = self._tensor_decisions(rng, dz, perm, variants, srcs)
            if dz.pin(*[c for u in units for c in u.first]):
                self.stats["task_hits"] += 1
                return self._read_graph(dz, perm, variants, srcs)
            if dz.sat():
                self.stats["structure_hits"] += 1
                dz.pin_all(units, known_unsat=True)
                return self._read_graph(dz, perm, variants, srcs)
        else:
            candidates = itertools.chain([head] if head else [], candidates)
        self.stats["structure_misses"] += 1
        # Next: the following candidate structures, each checked by z3.
        tries = 0
        for variants, srcs in candidates:
            if (variants, srcs) == firsts:
                continue  # checked above
            tries += 1
            if tries > MAX_STRUCTURE_TRIES:
                break
            dz = self._oracle(m.pinned(perm, variants, srcs))
            if dz.sat():
                self.stats["structure_search_hits"] += 1
                dz.pin_all(self._tensor_decisions(rng, dz, perm, variants, srcs))
                return self._read_graph(dz, perm, variants, srcs)
        self.stats["structure_search_misses"] += 1
        z = self._oracle(m.ordered(perm))
        if z.sat():  # the permutation fits (its first preferences together do not)
            order = perm
        else:  # other random permutations, then position by position on the multiset problem
            for _ in range(MAX_PERMUTATIONS):
                order = idx[:]
                rng.shuffle(order)
                z = self._oracle(m.ordered(order))
                if z.sat():
                    break
            else:
                z = self._oracle(m.problem(Counter(idx)))
                if not z.sat():
                    raise Rejected("infeasible_ops")
                order = self._place_ops(rng, z, idx)
            prefs = self._structure_prefs(rng, order)
        z.pin_all([choose(var, cands) for var, cands in prefs], known_unsat=order is perm)
        variants, srcs = self._split(order, [z.value(var) for var, _ in prefs])
        dz = self._oracle(m.pinned(order, variants, srcs))
        dz.pin_all(self._tensor_decisions(rng, dz, order, variants, srcs))
        return self._read_graph(dz, order, variants, srcs)

    def _candidate_structures(self, order: list[int], prefs: list[tuple[z3.ArithRef, list[int]]]):
        """Yield (variants, sources) in preference order that pass `DagModel.structure_ok` and
        admit ranks from the per-op rank tables (necessary conditions only; z3 decides)."""
        m, prof, d = self.model, self.profile, self.d
        ops = [m.ops[k] for k in order]
        vcands = [cands for _, cands in prefs[:d]]
        it = iter(prefs[d:])
        ecands = [[list(dict.fromkeys(next(it)[1])) for _ in range(op.arity)] for op in ops]
        variants, srcs = [0] * d, [[] for _ in range(d)]
        fan_out = [0] * d
        budget = [MAX_STRUCTURE_STEPS]

        def ranks_after(i: int, states: set) -> set:
            table = m.rank_table(order[i], variants[i])
            out = set()
            for st in states:
                known = [st[x] if x >= 0 else 0 for x in srcs[i]]
                for a, outs in table.items():
                    if all(x == y for x, y in zip(a, known) if y):
                        out.update(st + (o,) for o in outs)
            return out

        def visit(i: int, states: set, inputs: int):
            if i == d:
                if m.structure_ok(order, srcs):
                    yield variants[:], [row[:] for row in srcs]
                return
            op = ops[i]
            for v in vcands[i]:
                variants[i] = v
                for row in itertools.product(*ecands[i]):
                    budget[0] -= 1
                    if budget[0] < 0:
                        return
                    if sum(x >= 0 for x in row) > prof.max_fan_in or inputs + row.count(FRESH) > prof.max_inputs:
                        continue
                    if op.name in VIEW_OPS and (row[0] < 0 or ops[row[0]].name in VIEW_OPS):
                        continue
                    if any(fan_out[x] + 1 > prof.max_fan_out for x in row if x >= 0):
                        continue
                    srcs[i] = list(row)
                    new = ranks_after(i, states)
                    if not new:
                        continue
                    for x in row:
                        if x >= 0:
                            fan_out[x] += 1
                    yield from visit(i + 1, new, inputs + row.count(FRESH))
                    for x in row:
                        if x >= 0:
                            fan_out[x] -= 1

        yield from visit(0, {()}, 0)

    def _structure_prefs(self, rng: random.Random, order: list[int]) -> list[tuple[z3.ArithRef, list[int]]]:
        """(variable, candidates) for each node's variant, then each used argument slot's source."""
        m = self.model
        prefs = []
        for i, k in enumerate(order):
            cands = list(range(len(m.ops[k].variants)))
            rng.shuffle(cands)
            prefs.append((m.variant_var[i], cands))
        edge_prefs = self._edge_preferences(rng, order)
        prefs += [(m.src[i][j], edge_prefs[i][j]) for i, k in enumerate(order) for j in range(m.ops[k].arity)]
        return prefs

    def _split(self, order: list[int], values: list[int]) -> tuple[list[int], list[list[int]]]:
        variants, it = values[: self.d], iter(values[self.d:])
        return variants, [[next(it) for _ in range(self.model.ops[k].arity)] for k in order]

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

    def _tensor_decisions(self, rng: random.Random, z: Oracle, order: list[int], variants: list[int],
                          srcs: list[list[int]]) -> list[Decision]:
        """Decisions for every fresh input (range, rank, dims) and op-owned dim, node by node.

        First choices: the input's least value range; its rank and dims either a copy of a
        sibling argument's (symbolically: equal to that tensor, what broadcasting ops need) or a
        random rank and log-uniform dims within the budget; op-owned dims log-uniform. Fallback
        candidates are drawn when needed and may use values the pins already determine.
        """
        m, s = self.model, self.sizes
        out: list[Decision] = []
        pinned: list = []  # tensors and dim variables decided before, in order (for fallbacks)
        plan = self._rank_plan(rng, order, variants, srcs)
        for i, k in enumerate(order):
            op = m.ops[k]
            siblings = [m.outs[src] for src in srcs[i] if src >= 0]
            sib_ranks = [plan[1][src] if plan else 0 for src in srcs[i] if src >= 0]
            for j, src in enumerate(srcs[i]):
                if src >= 0:
                    continue
                t = m.args[i][j]
                ranges = [] if j in op.index_args else [op.input_domain(j), 2]
                ranks = list(range(1, MAX_RANK + 1))
                rng.shuffle(ranks)
                if plan:
                    ranks.remove(plan[0][i, j])
                    ranks.insert(0, plan[0][i, j])
                # Copy the trailing dims of a sibling (what broadcasting ops need), else random.
                k_sib = rng.randrange(len(siblings)) if siblings and rng.random() < 0.85 else None
                sib = siblings[k_sib] if k_sib is not None else None
                shared = min(ranks[0], sib_ranks[k_sib] or MAX_RANK) if sib is not None else 0
                prop = _propose_dims(rng, ranks[0], s)
                first = [eq(t.range, ranges[0])] if ranges else []
                first += [eq(t.rank, ranks[0]), *[eq(t.dims[slot], sib.dims[slot]) for slot in range(shared)],
                          *[eq(t.dims[slot], prop[slot]) for slot in range(shared, ranks[0])]]
                out.append(Decision(first, self._tensor_fallback(rng, t, ranges, ranks, sib, prop, siblings[:],
                                                                 pinned[:])))
                siblings.append(t)
                sib_ranks.append(ranks[0])
                pinned.append(t)
            for _name, var in sorted(m.fresh_vars(i, k).items()):
                prop = _propose_dim(rng, s)
                before = pinned[:]
                out.append(Decision([eq(var, prop)], lambda z, var=var, prop=prop, before=before:
                                    z.pin_first(var, [prop, *reversed(self._seen(z, before)), 1, 2, *_spread(rng, s)])))
                pinned.append(var)
            pinned.append(m.outs[i])
        return out

    def _rank_plan(self, rng: random.Random, order: list[int], variants: list[int], srcs: list[list[int]]):
        """Ranks for every fresh input and node output that each op admits on its own (a
        proposal only), by randomised depth-first search; None if none is found quickly."""
        m = self.model
        tables = [m.rank_table(k, v) for k, v in zip(order, variants)]
        fresh: dict[tuple[int, int], int] = {}
        outs: list[int] = []
        budget = [2000]

        def visit(i: int) -> bool:
            if i == len(order):
                return True
            budget[0] -= 1
            if budget[0] < 0:
                return False
            known = [outs[src] if src >= 0 else 0 for src in srcs[i]]
            options = [(a, o) for a, os in tables[i].items()
                       if all(x == y for x, y in zip(a, known) if y) for o in os]
            rng.shuffle(options)
            for a, o in options:
                outs.append(o)
                if visit(i + 1):
                    fresh.update({(i, j): r for j, r in enumerate(a) if srcs[i][j] < 0})
                    return True
                outs.pop()
            return False

        return (fresh, outs) if visit(0) else None

    def _seen(self, z: Oracle, items: list) -> list[int]:
        """Values of earlier decided dims (and node output dims), oldest first."""
        seen = []
        for x in items:
            if isinstance(x, SymTensor):
                seen += [z.value(x.dims[slot]) for slot in range(z.value(x.rank))]
            else:
                seen.append(z.value(x))
        return seen

    def _tensor_fallback(self, rng, t, ranges, ranks, sib, first_prop, siblings, before):
        s = self.sizes

        def fallback(z: Oracle) -> None:
            # The first choice failed as a whole; its range and rank alone usually fit.
            if z.pin(*([eq(t.range, ranges[0])] if ranges else []), eq(t.rank, ranks[0])):
                rank = ranks[0]
            else:
                if ranges:
                    z.pin_first(t.range, ranges)
                rank = z.pin_first(t.rank, ranks)
            near_t = [x for x in siblings if x is not t]
            near = [[z.value(x.dims[slot]) for slot in range(MAX_RANK)] for x in near_t]
            same_prop = sib is None and rank == ranks[0]
            prop = first_prop if same_prop else _propose_dims(rng, rank, s)
            seen = list(reversed(self._seen(z, before)))
            decisions = []
            for slot in range(rank):
                cands = [prop[slot], *[x[slot] for x in near], *[x[slot + 1] for x in near if slot + 1 < MAX_RANK],
                         1, *seen, *_spread(rng, s)]
                decisions.append(choose(t.dims[slot], cands))
            z.pin_all(decisions, known_unsat=same_prop and rank == z.value(t.rank) and (
                not ranges or z.value(t.range) == ranges[0]))

        return fallback

    def _read_graph(self, z: Oracle, order, variants, srcs) -> Graph:
        m = self.model

        def shape(t) -> tuple[int, ...]:
            r = z.value(t.rank)
            return tuple(z.value(t.dims[slot]) for slot in reversed(range(r)))

        inputs: list[InputSpec] = []
        nodes: list[Node] = []
        pending_bounds: list[tuple[int, int]] = []  # (input index, node)
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
                    pending_bounds.append((len(inputs) - 1, i))
                else:
                    inputs.append(InputSpec(shape(t), range=RANGE_NAMES[z.value(t.range)]))
                args.append(("input", len(inputs) - 1))
            fresh = {name: z.value(var) for name, var in sorted(m.fresh_vars(i, k).items())}
            # a copy: the variant dict belongs to the catalog, the node to the task
            nodes.append(Node(op.name, dict(params), tuple(args), shape(m.outs[i]), fresh))
        for inp, i in pending_bounds:
            node = nodes[i]
            in_shapes = [inputs[kk].shape if kind == "input" else nodes[kk].shape for kind, kk in node.args]
            bound = get_op(node.op).index_bound(in_shapes, node.shape, {**node.params, "_fresh": node.fresh})
            inputs[inp] = InputSpec(inputs[inp].shape, kind="index", bound=int(bound))
        consumed = {kk for n in nodes for kind, kk in n.args if kind == "node"}
        outputs = tuple(i for i in range(len(nodes)) if i not in consumed)
        return Graph(tuple(inputs), tuple(nodes), outputs)


def _spread(rng: random.Random, s: SizeProfile) -> list[int]:
    """Last-resort candidates for a dim: every value up to 64, then for large profiles two per
    octave (its power of two and a random one), largest octave first."""
    small = list(range(s.lo, min(s.hi, 64) + 1))
    top = s.hi.bit_length() - 1
    big = [v for e in range(top, 5, -1) for v in (2**e, rng.randint(2**e, min(s.hi, 2 ** (e + 1) - 1)))]
    return [*[v for v in big if s.lo <= v <= s.hi], *small]


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
