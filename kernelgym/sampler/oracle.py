"""z3 as a feasibility oracle: decisions pinned only while the problem stays satisfiable.

The sampler (`kernelgym.sampler.sample`) proposes every choice itself and asks an `Oracle` whether
the problem with that choice pinned still has a solution; the module docstring there says why
that keeps draws uniform and reproducible.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

import z3

CHECK_TIMEOUT_MS = 20000


class Rejected(Exception):
    """A draw that cannot be completed; the sampler redraws and counts the reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@cache
def _const(v: int) -> z3.IntNumRef:
    return z3.IntVal(v)


def eq(a: z3.ArithRef, b: z3.ArithRef | int) -> z3.BoolRef:
    """``a == b`` without the Python-side coercions of ``__eq__`` (hot path)."""
    bb = b if isinstance(b, z3.ExprRef) else _const(b)
    return z3.BoolRef(z3.Z3_mk_eq(a.ctx_ref(), a.as_ast(), bb.as_ast()), a.ctx)


@dataclass
class Decision:
    """One decision: `first` (constraints of the preferred choice) and how to decide otherwise."""

    first: list[z3.BoolRef]
    fallback: Callable[[Oracle], object]


def choose(var: z3.ArithRef, candidates: list[int]) -> Decision:
    """Pin `var` to its first feasible candidate."""
    cands = list(dict.fromkeys(candidates))
    return Decision([eq(var, cands[0])], lambda z: z.pin_first(var, cands[1:]))


@dataclass
class Oracle:
    """A z3 solver over one problem, with pinning by check-then-add. Counts checks in `stats`."""

    constraints: list[z3.BoolRef]
    stats: Counter = field(default_factory=Counter)
    pool: list | None = None  # idle solvers to reuse (push/pop) instead of making a new one

    def __post_init__(self) -> None:
        if self.pool:
            self.solver = self.pool.pop()
        else:
            self.solver = z3.SimpleSolver()
            self.solver.set("timeout", CHECK_TIMEOUT_MS)
        self.solver.push()
        self._ctx = self.solver.ctx.ref()
        self._add(self.constraints)
        self._sat = False  # whether the last check was sat (with every pin so far)
        self._model: z3.ModelRef | None = None
        self._pending: list[z3.BoolRef] = []  # pins checked sat, added before the next check

    def _add(self, exprs: list[z3.BoolRef]) -> None:
        for e in exprs:  # solver.add without the Python-side coercions
            z3.Z3_solver_assert(self._ctx, self.solver.solver, e.as_ast())

    def _check(self, *exprs: z3.BoolRef) -> bool:
        self.stats["checks"] += 1
        self._model = None
        if self._pending:  # (adding them right away would discard the last model)
            self._add(self._pending)
            self._pending = []
        assumptions = (z3.Ast * len(exprs))(*[e.as_ast() for e in exprs])
        result = z3.Z3_solver_check_assumptions(self._ctx, self.solver.solver, len(exprs), assumptions)
        self._sat = result == z3.Z3_L_TRUE
        return self._sat

    def release(self) -> None:
        """Forget this problem and hand the solver back to the pool."""
        if self.pool is not None and self.solver is not None:
            self._model = None
            self.solver.pop()
            self.pool.append(self.solver)
            self.solver = None

    def sat(self, *exprs: z3.BoolRef) -> bool:
        """Whether the problem plus the pins plus `exprs` is satisfiable (pins nothing)."""
        return self._check(*exprs)

    def pin(self, *exprs: z3.BoolRef) -> bool:
        """Add `exprs` for good if the problem stays satisfiable."""
        if not exprs:
            return True
        if self._check(*exprs):
            self._pending = list(exprs)
            return True
        return False

    def pin_first(self, var: z3.ArithRef, candidates: list[int]) -> int:
        """Pin `var` to the first feasible candidate (deduplicated, order kept)."""
        for value in dict.fromkeys(candidates):
            if self.pin(eq(var, value)):
                return value
        raise Rejected(f"no feasible value for {var}")

    def pin_all(self, decisions: list[Decision], known_unsat: bool = False) -> None:
        """Each decision in turn: its first choice if feasible, else its fallback; in few checks.

        Blocks of decisions are tried with all their first choices at once (the whole list
        first, halving on unsat, doubling again after a success). A sat block means each of its
        decisions, taken in turn, would have found its first choice feasible; a single decision
        whose first choice is unsat runs its fallback. `known_unsat` says the whole list's
        first choices are already known not to fit together.
        """
        n, i = len(decisions), 0
        block = n // 2 if known_unsat else n
        while i < n:
            block = max(1, min(block, n - i))
            chunk = decisions[i:i + block]
            if self.pin(*[c for dec in chunk for c in dec.first]):
                self.stats["speculation_hits"] += 1
                i += block
                block *= 2
            elif block > 1:
                self.stats["speculation_misses"] += 1
                block //= 2
            else:
                self.stats["fallbacks"] += 1
                chunk[0].fallback(self)
                i += 1
                block = n - i

    def value(self, expr: z3.ArithRef) -> int:
        """Value of an expression fully determined by the pins (so history-independent)."""
        if not self._sat and not self._check():
            raise Rejected("no_completion")
        if self._model is None:
            self._model = self.solver.model()
        # model.eval(expr, model_completion=True).as_long(), without the Python wrappers
        ctx = expr.ctx_ref()
        r = (z3.Ast * 1)()
        if not z3.Z3_model_eval(ctx, self._model.model, expr.as_ast(), True, r):
            raise Rejected("no_completion")
        return int(z3.Z3_get_numeral_string(ctx, r[0]))
