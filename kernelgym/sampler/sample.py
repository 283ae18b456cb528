"""Uniform, seeded sampling from the CSP-DAG.

How uniformity is obtained (z3's own model order is heavily biased: it returns the first model
its search finds, e.g. the smallest op index and dims at their bounds):

1. The *multiset* of ops is drawn uniformly, each op independently from the ops allowed at this
   difficulty (those for which z3 finds some valid program). z3 then only has to say whether the
   multiset fits (a cardinality constraint), not which ops to use. Op positions, edges and dims
   are left to the next steps, so almost every multiset fits and op frequencies stay uniform;
   the few that do not are redrawn and counted (`rejections["infeasible_ops"]`).
2. Every other decision (op order, parameter variant, each edge, each fresh input's value
   range, rank and dims, op-owned dims such as out_features) is *proposed* from the seeded RNG
   and *pinned* only if z3 says the whole problem stays satisfiable; otherwise the next candidate
   in a seeded order is tried. So z3 is a feasibility oracle and never picks a value itself.
3. Because only sat/unsat answers steer the process, and those are facts about the constraints
   rather than about z3's search history, the same seed gives the same task byte for byte, in
   any process and after any other samples (one incremental solver per difficulty is reused).
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
CHECK_TIMEOUT_MS = 5000


class Rejected(Exception):
    """A draw that cannot be completed; the sampler redraws and counts the reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Solver:
    """One incremental z3 solver over a `DagModel`, with pinning by push/check/pop."""

    model: DagModel
    solver: z3.Solver = field(init=False)
    depth: int = 0
    checks: int = 0

    def __post_init__(self) -> None:
        self.solver = z3.Solver()
        self.solver.set("timeout", CHECK_TIMEOUT_MS)
        self.solver.add(self.model.base)

    def sat(self, *exprs: z3.BoolRef) -> bool:
        """Whether the model plus the current pins plus `exprs` is satisfiable (pins nothing)."""
        self.checks += 1
        return self.solver.check(*exprs) == z3.sat

    def pin(self, *exprs: z3.BoolRef) -> bool:
        """Add `exprs` for the rest of this draw if the problem stays satisfiable."""
        self.solver.push()
        self.solver.add(*exprs)
        self.checks += 1
        if self.solver.check() == z3.sat:
            self.depth += 1
            return True
        self.solver.pop()
        return False

    def pin_first(self, var: z3.ArithRef, candidates: list[int]) -> int:
        """Pin `var` to the first feasible candidate (deduplicated, order kept)."""
        for value in dict.fromkeys(candidates):
            if self.pin(var == value):
                return value
        raise Rejected(f"no feasible value for {var}")

    def value(self, expr: z3.ArithRef) -> int:
        """Value of an expression fully determined by the pins (so history-independent)."""
        return self.solver.model().eval(expr, model_completion=True).as_long()

    def reset(self) -> None:
        if self.depth:
            self.solver.pop(self.depth)
        self.depth = 0


class GraphSampler:
    """Samples `Graph`s for one difficulty and size profile."""

    def __init__(self, difficulty: int, sizes: str | SizeProfile = "tiny", ops: list[str] | None = None):
        self.profile = difficulty_profile(difficulty)
        self.sizes = size_profile(sizes) if isinstance(sizes, str) else sizes
        specs = [get_op(n) for n in ops] if ops is not None else list(CATALOG.values())
        self.model = DagModel(self.profile, self.sizes, specs)
        self.z = Solver(self.model)
        self.rejections: Counter[str] = Counter()
        self.allowed = self._allowed_ops()

    @property
    def d(self) -> int:
        return self.profile.difficulty

    def _allowed_ops(self) -> list[OpSpec]:
        """Ops that appear in at least one valid program of this difficulty."""
        m = self.model
        return [op for k, op in enumerate(m.ops) if self.z.sat(z3.Or(*[v == k for v in m.op_var]))]

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
                self.z.reset()
        raise RuntimeError(f"could not sample a difficulty-{self.d} graph in {MAX_OP_DRAWS} draws")

    def _complete(self, rng: random.Random, chosen: list[OpSpec]) -> Graph:
        m, z = self.model, self.z
        idx = [m.op_index[op.name] for op in chosen]
        counts = Counter(idx)
        if not z.pin(*[z3.Sum(*[z3.If(v == k, 1, 0) for v in m.op_var]) == n for k, n in counts.items()]):
            raise Rejected("infeasible_ops")
        order = self._place_ops(rng, idx)
        for i, k in enumerate(order):
            op = m.ops[k]
            prefs = list(range(len(op.variants)))
            rng.shuffle(prefs)
            z.pin_first(m.variant_var[i], prefs)
        self._pin_edges(rng, order)
        fresh_values = self._pin_tensors(rng, order)
        return self._read_graph(order, fresh_values)

    def _place_ops(self, rng: random.Random, idx: list[int]) -> list[int]:
        """Op order: a random permutation if feasible, else position by position."""
        m, z = self.model, self.z
        perm = idx[:]
        rng.shuffle(perm)
        if z.pin(*[m.op_var[i] == k for i, k in enumerate(perm)]):
            return perm
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

    def _pin_edges(self, rng: random.Random, order: list[int]) -> None:
        m, z = self.model, self.z
        prefs = self._edge_preferences(rng, order)
        if z.pin(*[m.src[i][j] == prefs[i][j][0] for i in range(self.d) for j in range(MAX_ARITY)]):
            return
        for i in range(self.d):
            for j in range(MAX_ARITY):
                z.pin_first(m.src[i][j], prefs[i][j])

    def _pin_tensors(self, rng: random.Random, order: list[int]) -> dict[int, dict[str, int]]:
        """Pin every fresh input's range, rank and dims and every op-owned dim, node by node."""
        m, z, s = self.model, self.z, self.sizes
        fresh_values: dict[int, dict[str, int]] = {}
        seen_dims: list[int] = []
        for i, k in enumerate(order):
            op = m.ops[k]
            srcs = [z.value(m.src[i][j]) for j in range(op.arity)]
            # Only tensors already fully determined by the pins may seed candidates.
            determined = [m.args[i][j] for j, src in enumerate(srcs) if src >= 0]
            for j, src in enumerate(srcs):
                if src >= 0:
                    continue
                t = m.args[i][j]
                if j not in op.index_args:
                    z.pin_first(t.range, [op.input_domain(j), 2])
                ranks = list(range(1, MAX_RANK + 1))
                rng.shuffle(ranks)
                rank = z.pin_first(t.rank, ranks)
                proposal = _propose_dims(rng, rank, s)
                for slot in range(rank):
                    near = [z.value(x.dims[slot]) for x in determined] + [
                        z.value(x.dims[slot + 1]) for x in determined if slot + 1 < MAX_RANK]
                    value = z.pin_first(t.dims[slot], [proposal[slot], *near, 1, *reversed(seen_dims),
                                                       *range(s.lo, min(s.hi, 64) + 1)])
                    seen_dims.append(value)
                determined.append(t)
            values = {}
            for name, var in sorted(m.fresh.get((i, op.name), {}).items()):
                values[name] = z.pin_first(var, [_propose_dim(rng, s), *reversed(seen_dims), 1, 2])
                seen_dims.append(values[name])
            fresh_values[i] = values
            for slot in range(MAX_RANK):
                seen_dims.append(z.value(m.outs[i].dims[slot]))
        return fresh_values

    def _read_graph(self, order: list[int], fresh_values: dict[int, dict[str, int]]) -> Graph:
        m, z = self.model, self.z
        if not z.sat():
            raise Rejected("no_completion")

        def shape(t) -> tuple[int, ...]:
            r = z.value(t.rank)
            return tuple(z.value(t.dims[slot]) for slot in reversed(range(r)))

        inputs: list[InputSpec] = []
        nodes: list[Node] = []
        pending_bounds: list[tuple[int, int, int]] = []  # (input index, node, slot)
        for i, k in enumerate(order):
            op = m.ops[k]
            params = op.variants[z.value(m.variant_var[i])]
            args = []
            for j in range(op.arity):
                src = z.value(m.src[i][j])
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
            nodes.append(Node(op.name, params, tuple(args), shape(m.outs[i]), fresh_values[i]))
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

