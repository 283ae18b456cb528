"""Coverage statistics of the sampler: op frequencies, chi-square, family-pair adjacency."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import z3

from kernelgym.graph import Graph
from kernelgym.ops import CATALOG, CATEGORIES
from kernelgym.sampler.sample import GraphSampler


def op_counts(graphs: Iterable[Graph]) -> Counter[str]:
    return Counter(op for g in graphs for op in g.ops)


def family_pairs(graphs: Iterable[Graph]) -> Counter[tuple[str, str]]:
    """(producer category, consumer category) over every edge."""
    out: Counter[tuple[str, str]] = Counter()
    for g in graphs:
        for src, dst in g.edges():
            out[(CATALOG[g.nodes[src].op].category, CATALOG[g.nodes[dst].op].category)] += 1
    return out


def chi_square_uniform(counts: Counter[str], support: Iterable[str]) -> tuple[float, float]:
    """Chi-square statistic and p-value of `counts` against uniform over `support`."""
    from scipy.stats import chisquare

    observed = [counts.get(name, 0) for name in support]
    result = chisquare(observed)
    return float(result.statistic), float(result.pvalue)


def adjacent_families(sizes: str = "tiny") -> set[tuple[str, str]]:
    """Ordered category pairs (A, B) such that some valid 2-op program feeds an A op into a B op."""
    gs = GraphSampler(2, sizes)
    m, z = gs.model, gs.z
    members = {c: [k for k, op in enumerate(m.ops) if op.category == c] for c in CATEGORIES}
    edge = z3.Or(*[m.src[1][j] == 0 for j in range(len(m.src[1]))])
    pairs = set()
    for a in CATEGORIES:
        for b in CATEGORIES:
            if z.sat(z3.Or(*[m.op_var[0] == k for k in members[a]]), z3.Or(*[m.op_var[1] == k for k in members[b]]),
                     edge):
                pairs.add((a, b))
    return pairs
