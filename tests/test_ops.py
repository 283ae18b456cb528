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
from kernelgym.sampler import TaskSampler
from kernelgym.sampler.model import VIEW_OPS
from tests._tasks import model_outputs

REQUIRED = {
    "reduction": {"sum", "mean", "amax", "amin", "logsumexp", "var", "norm"},
    "softmax": {"softmax", "log_softmax"},
    "norm": {"layer_norm", "rms_norm", "batch_norm", "group_norm", "instance_norm"},
    "matmul": {"linear", "matmul", "bmm", "addmm"},
    "conv": {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"},
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




@pytest.mark.parametrize("name", sorted(CATALOG))
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6))
def test_shape_rule_agrees_with_pytorch(name, seed):
    """Random valid dims for every op: z3's predicted shape is what PyTorch returns."""
    difficulty = 1 if name not in VIEW_OPS else 2  # views need a producer node
    ops = [name] if difficulty == 1 else ["relu", name]
    task = _SAMPLER.sample(difficulty, seed, ops=ops)
    graph = task.graph
    outs = model_outputs(task)
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


# -- convolutions: every drawable variant ---------------------------------------------------------
CONVS = sorted(op.name for op in ops_in("conv"))


def _conv_fn(name: str):
    return getattr(torch.nn.functional, name)


@pytest.mark.parametrize("name", CONVS)
def test_every_conv_variant_agrees_with_pytorch(name):
    """Each variant's shape rule, weights and FLOP estimate on a concrete input, against PyTorch's
    convolution with the emitted arguments (groups, dilation, output_padding, per-dim tuples)."""
    from kernelgym.ops.catalog import conv_groups

    op = get_op(name)
    spatial = int(name[-2])
    for p in op.variants:
        cin = 4
        cout = cin if p["groups"] == "depthwise" else 8
        x = torch.randn(2, cin, *(9, 10, 7)[:spatial])
        out = infer_shape(name, [tuple(x.shape)], p, {"out_channels": cout})
        ws = {w.name: torch.randn(w.shape) for w in op.weights([tuple(x.shape)], out, p)}
        assert ("bias" in ws) == p["bias"], p
        kw = {k: p[k] for k in ("stride", "padding", "dilation", "output_padding") if k in p}
        y = _conv_fn(name)(x, ws["weight"], ws.get("bias"), groups=conv_groups(p, cin), **kw)
        assert tuple(y.shape) == out, (p, tuple(y.shape), out)
        macs = y.numel() * ws["weight"][0].numel() if "transpose" not in name else x.numel() * ws["weight"][0].numel()
        assert op.flops([tuple(x.shape)], out, p) == 2 * macs, p


@pytest.mark.parametrize("name", CONVS)
def test_every_conv_variant_fits_the_tiny_profile(name):
    """A variant the tiny sizes cannot hold would never be drawn (and cost z3 checks each draw)."""
    from kernelgym.sampler.sample import GraphSampler

    model = GraphSampler(1, "tiny", ops=[name]).model
    k = model.op_index[name]
    assert all(model.rank_table(k, v) for v in range(len(model.ops[k].variants)))


def test_conv_draws_cover_every_groups_and_bias_pair():
    """Sampled conv2d tasks use the listed variants: grouped, depthwise and bias-free ones too."""
    seen = set()
    for seed in range(16):
        node = _SAMPLER.sample(1, seed, ops=["conv2d"]).graph.nodes[0]
        seen.add((node.params["groups"], node.params["bias"]))
    assert seen == {(1, True), (1, False), (2, True), ("depthwise", False)}


def test_combos_must_be_choices_of_the_params():
    from kernelgym.ops.spec import OpSpec, Param

    def spec(combos):
        return OpSpec(name="x", category="unary", arity=1, call=lambda a, p: a[0], shape=lambda a, o, p, c: [],
                      flops=lambda i, o, p: 0, params=(Param("k", (1, 3)), Param("s", (1, 2))), combos=combos)

    assert spec(((1, 2), (3, 1))).variants == [{"k": 1, "s": 2}, {"k": 3, "s": 1}]
    assert len(spec(()).variants) == 4
    with pytest.raises(ValueError, match="combo \\(5, 1\\) is not one choice of each of \\['k', 's'\\]"):
        spec(((5, 1),))
    with pytest.raises(ValueError, match="repeated combos"):
        spec(((1, 1), (1, 1)))


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
