"""The soak benchmark (benchmarks/soak.py) at CI size: a seeded stream of good, mutated, hostile and
broken actions through one evaluator, which must stay healthy (no lost or unclassified verdict, no
orphan, no leaked file, bounded parent memory, repeats judged alike)."""

from __future__ import annotations

import collections
import importlib

import pytest


def _soak():
    """The benchmark as `python -m benchmarks.soak` imports it."""
    return importlib.import_module("benchmarks.soak")


def test_actions_are_seeded_and_mixed():
    soak = _soak()
    # 400: the draw depends on the red team's size (seccomp's hacks made 300 miss one bad input).
    a, b = soak.actions(400, 3), soak.actions(400, 3)
    assert a == b and a != soak.actions(400, 4)
    kinds = collections.Counter(x.kind for x in a)
    assert set(kinds) == {"legit", "mutant", "hack", "bad", "repeat"}, kinds
    for x in a:
        if x.kind == "repeat":
            first = a[x.first]
            assert (first.source, first.seed, first.mode) == (x.source, x.seed, x.mode)
    names = {x.name for x in a if x.kind == "bad"}
    assert {"bad/loop_kernel", "bad/memory_forward", "bad/empty"} <= names, names


def test_mutations_change_the_kernel():
    soak = _soak()
    src = "    mask = offs < n\n    x = tl.load(x_ptr + offs, mask=mask)\n    tl.store(o + offs, x, mask=mask)\n"
    assert "offs <= n + 3" in soak.mutate(src, "mask")
    assert "tl.store" not in soak.mutate(src, "store")
    assert soak.mutate(src, "stride") is None


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_soak_ci_size():
    soak = _soak()
    rep = soak.soak(16, timeout=8, checkpoint=8, seed=11, progress=False)
    assert rep["failures"] == [], rep["failures"]
    assert sum(rep["verdict_mix"].values()) == 16
    assert set(rep["by_kind"]) >= {"legit", "hack", "bad"}, rep["by_kind"]
    assert rep["parent_rss_mb"]["growth"] < 200, rep["parent_rss_mb"]
    assert all(label.startswith("landlock-abi") for label in rep["sandbox_labels"]) or \
        rep["sandbox_labels"] == ["false"]
