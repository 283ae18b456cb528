"""The operator catalog: PyTorch ops with shape rules (z3), dtypes, cost estimates, categories."""

from __future__ import annotations

from kernelgym.ops.catalog import CATALOG
from kernelgym.ops.spec import CATEGORIES, MAX_RANK, NONNEG, POSITIVE, REAL, OpSpec, Param, SymTensor, Weight


def get_op(name: str) -> OpSpec:
    """The catalog entry called `name` (KeyError naming close matches otherwise)."""
    try:
        return CATALOG[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, CATALOG, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown op {name!r}{hint}") from None


def ops_in(category: str) -> list[OpSpec]:
    if category not in CATEGORIES:
        raise KeyError(f"unknown category {category!r}; categories are {', '.join(CATEGORIES)}")
    return [op for op in CATALOG.values() if op.category == category]


__all__ = ["CATALOG", "CATEGORIES", "MAX_RANK", "NONNEG", "POSITIVE", "REAL", "OpSpec", "Param",
           "SymTensor", "Weight", "get_op", "ops_in"]
