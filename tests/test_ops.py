"""The operator catalog: coverage, entries, and shape rules against what PyTorch produces."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernelgym.cli import main as cli_main
from kernelgym.ops import CATALOG, CATEGORIES, get_op, ops_in
from kernelgym.ops.infer import infer_shape
from kernelgym.sampler import Graph, TaskSampler
from kernelgym.task import exec_source

REQUIRED = {
    "reduction": {"sum", "mean", "amax", "amin", "logsumexp", "var", "norm"},
    "softmax": {"softmax", "log_softmax"},
    "norm": {"layer_norm", "rms_norm", "batch_norm", "group_norm", "instance_norm"},
    "matmul": {"linear", "matmul", "bmm", "addmm"},
    "conv": {"conv1d", "conv2d", "conv_transpose2d"},
    "pool": {"max_pool2d", "avg_pool2d"},
    "cumulative": {"cumsum"},
    "shape": {"transpose", "permute", "flatten", "concat"},
    "where": {"where_gt", "masked_fill"},
    "gather": {"gather", "embedding"},
}


def test_catalog_size_and_families():
    assert len(CATALOG) >= 60
    assert {op.category for op in CATALOG.values()} == set(CATEGORIES)
    for category, names in REQUIRED.items():
        assert names <= {op.name for op in ops_in(category)}, category
    assert len(ops_in("unary")) >= 20 and len(ops_in("binary")) >= 5 and len(ops_in("scalar")) >= 3


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_entry_is_complete(name):
    op = get_op(name)
    assert op.arity >= 1 and op.dtypes and op.category in CATEGORIES
    assert op.variants, "at least the empty parameter combination"
    d = op.describe()
    json.dumps(d)
    assert d["doc"]


def test_unknown_op_names_close_matches():
    with pytest.raises(KeyError, match="did you mean relu"):
        get_op("reluu")


@settings(max_examples=60, deadline=None)
@given(a=st.lists(st.sampled_from([1, 2, 3, 5]), min_size=1, max_size=4),
       b=st.lists(st.sampled_from([1, 2, 3, 5]), min_size=1, max_size=4))
def test_broadcast_rule_matches_torch(a, b):
    try:
        expected = tuple(torch.broadcast_shapes(tuple(a), tuple(b)))
    except RuntimeError:
        expected = None
    assert infer_shape("add", [a, b], {}) == expected


_SAMPLER = TaskSampler("tiny", check=False)


def _run(task):
    module = exec_source(task.source)
    torch.manual_seed(0)
    model = module.Model(*module.get_init_inputs())
    with torch.no_grad():
        out = model(*module.get_inputs())
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("name", sorted(CATALOG))
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6))
def test_shape_rule_agrees_with_pytorch(name, seed):
    """Random valid dims for every op: z3's predicted shape is what PyTorch returns."""
    difficulty = 1 if name not in ("flatten", "merge_last") else 2  # views need a producer node
    ops = [name] if difficulty == 1 else ["relu", name]
    task = _SAMPLER.sample(difficulty, seed, ops=ops)
    graph = Graph.from_dict(task.graph)
    outs = _run(task)
    assert [tuple(o.shape) for o in outs] == [graph.nodes[o].shape for o in graph.outputs]
    i = graph.ops.index(name)
    node = graph.nodes[i]
    assert infer_shape(name, graph.in_shapes(i), node.params, node.fresh) == node.shape


def test_ops_cli_lists_catalog(capsys):
    assert cli_main(["ops", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [d["name"] for d in listed] == list(CATALOG)
    assert cli_main(["ops", "--category", "conv"]) == 0
    assert "conv2d" in capsys.readouterr().out


_POOLS = [n for n in sorted(CATALOG) if CATALOG[n].category == "pool"]


@pytest.mark.parametrize("name", _POOLS)
def test_every_pool_variant_shape_rule_agrees_with_pytorch(name):
    """Each pool variant (padding, dilation, ceil_mode, ...) on lengths 1..7 in the first spatial
    dim: the rule's shape is torch's, and it rejects what torch rejects
    (adaptive pools also refuse length-1 dims: nothing to average)."""
    op = get_op(name)
    spatial = op.min_rank - 2
    for p in op.variants:
        call = eval("lambda x: " + op.call(["x"], {**p, "_w": {}}).replace("F.", "torch.nn.functional."))  # noqa: S307
        for size in (1, 2, 3, 4, 7):  # the first spatial dim varies; every slot has the same rule
            shape = (2, 3, size, *[5] * (spatial - 1))
            try:
                expected = tuple(call(torch.zeros(shape)).shape)
            except RuntimeError:
                expected = None
            if expected is not None and 0 in expected:
                expected = None
            got = infer_shape(name, [shape], p, hi=64)
            if name.startswith("adaptive") and size == 1:  # the rule asks for a window to average
                assert got in (None, expected), (p, shape, got, expected)
                continue
            assert got == expected, (p, shape, got, expected)
