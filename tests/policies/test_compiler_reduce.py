"""The reduction / scan / loss family: catalog shape rules for every variant, the sampler's 0-d and
index outputs, the tracer's forms (argmax, torch.max indices, reversed and exclusive scan idioms,
losses in functional and module form) and their Triton lowerings judged under the interpreter."""

from __future__ import annotations

import pytest
import torch

from kernelgym.ops import CATALOG, get_op
from kernelgym.ops.infer import infer_shape
from kernelgym.sampler import sample_task
from kernelgym.task import Task
from policies.compiler import CompilerPolicy, TraceError, graph_from_source
from tests._tasks import model_source


def problem(body: str, inputs: str = "return [torch.randn(4, 37)]", args: str = "x", init: str = "pass") -> str:
    return model_source(body, args, inputs, init)


PAIR = "return [torch.randn(6, 33), torch.randn(6, 33)]"
# (name, forward body, inputs, forward args, init, traced ops)
CASES = [
    ("argmax", "return torch.argmax(x, dim=1)", "return [torch.randn(4, 37)]", "x", "pass", ("argmax",)),
    ("argmin_keepdim", "return x.argmin(0, keepdim=True)", "return [torch.randn(37, 5)]", "x", "pass", ("argmin",)),
    ("max_indices", "return torch.max(x, 1)[1] + x.min(dim=2).indices", "return [torch.randn(3, 5, 5)]", "x", "pass",
     ("argmax", "argmin", "add")),
    ("max_values_and_indices", "v, i = torch.max(torch.relu(x), dim=-1)\n        return v, i",
     "return [torch.randn(4, 37)]", "x", "pass", ("relu", "amax", "argmax")),
    ("whole_max", "return torch.max(x) - torch.min(x)", "return [torch.randn(4, 37)]", "x", "pass",
     ("amax", "amin", "sub")),
    ("prod", "return torch.prod(x, dim=-1, keepdim=True)", "return [torch.rand(4, 20) + 0.5]", "x", "pass", ("prod",)),
    ("sum_dims", "return torch.sum(x, dim=(0, 2), keepdim=True) * 2", "return [torch.randn(3, 4, 5)]", "x", "pass",
     ("sum", "mul_scalar")),
    ("mean_all", "return x.mean()", "return [torch.randn(3, 4, 5)]", "x", "pass", ("mean",)),
    ("var_dims", "return torch.var(x, dim=(1, 2), unbiased=False)", "return [torch.randn(3, 4, 5)]", "x", "pass",
     ("var",)),
    ("logsumexp_all", "return torch.logsumexp(x, dim=(0, 1, 2))", "return [torch.randn(3, 4, 5)]", "x", "pass",
     ("logsumexp",)),
    ("fro_norm", "return x / torch.norm(x, p='fro')", "return [torch.randn(2, 3, 8)]", "x", "pass", ("norm", "div")),
    ("cumprod", "return torch.cumprod(x, dim=1)", "return [torch.rand(3, 40) * 0.2 + 0.9]", "x", "pass", ("cumprod",)),
    ("cumsum_reverse", "return torch.cumsum(x.flip(1), dim=1).flip(1)", "return [torch.randn(3, 40)]", "x", "pass",
     ("cumsum",)),
    ("cummax_reverse", "return torch.cummax(torch.flip(x, [0]), dim=0).values.flip(0)",
     "return [torch.randn(40, 3)]", "x", "pass", ("cummax",)),
    ("cumsum_exclusive",
     "c = torch.cumsum(x.narrow(dim=1, start=0, length=x.size(1) - 1), dim=1)\n"
     "        return torch.cat((torch.zeros_like(x.select(1, 0).unsqueeze(1)), c), dim=1)",
     "return [torch.randn(3, 40)]", "x", "pass", ("cumsum",)),
    ("cumprod_exclusive_slice", "return torch.cat([torch.ones_like(x[:, :1]), x[:, :-1].cumprod(1)], dim=1)",
     "return [torch.rand(3, 40) * 0.2 + 0.9]", "x", "pass", ("cumprod",)),
    ("cumsum_reverse_exclusive",
     "s = x.narrow(0, 1, x.size(0) - 1).flip(0).cumsum(0).flip(0)\n"
     "        return torch.cat([s, torch.zeros_like(x[:1])], dim=0)",
     "return [torch.randn(40, 3)]", "x", "pass", ("cumsum",)),
    ("mse", "return F.mse_loss(a, b)", PAIR, "a, b", "pass", ("mse_loss",)),
    ("l1_sum", "return F.l1_loss(a, b, reduction='sum')", PAIR, "a, b", "pass", ("smooth_l1_loss",)),
    ("smooth_l1_module", "return self.loss(a, b)", PAIR, "a, b", "self.loss = nn.SmoothL1Loss(beta=0.5)",
     ("smooth_l1_loss",)),
    ("huber_delta", "return F.huber_loss(a, b, delta=2.0)", "return [torch.randn(6, 33) * 3, torch.randn(6, 33)]",
     "a, b", "pass", ("smooth_l1_loss", "mul_scalar")),
    ("kl_batchmean", "return F.kl_div(torch.log(p), q, reduction='batchmean')",
     "return [torch.rand(6, 33).softmax(-1), torch.rand(6, 33).softmax(-1)]", "p, q", "pass", ("log", "kl_div")),
    ("cross_entropy", "return F.cross_entropy(x, t)", "return [torch.randn(6, 11), torch.randint(0, 11, (6,))]",
     "x, t", "pass", ("cross_entropy",)),
    ("cross_entropy_module_sum", "return self.loss(torch.relu(x), t)",
     "return [torch.randn(6, 11), torch.randint(0, 11, (6,))]", "x, t",
     "self.loss = nn.CrossEntropyLoss(reduction='sum')", ("relu", "cross_entropy")),
    ("triplet_module", "return self.loss(a, p, n)", "return [torch.randn(5, 9), torch.randn(5, 9), torch.randn(5, 9)]",
     "a, p, n", "self.loss = nn.TripletMarginLoss(margin=0.5)", ("triplet_margin_loss",)),
    ("cosine_loss", "return torch.mean(1 - F.cosine_similarity(a, b, dim=1))", PAIR, "a, b", "pass",
     ("cosine_similarity", "neg", "add_scalar", "mean")),
    ("cosine_module", "return self.cos(a, b)", "return [torch.randn(9, 4, 3), torch.randn(9, 4, 3)]", "a, b",
     "self.cos = nn.CosineSimilarity(dim=0)", ("cosine_similarity",)),
    ("hinge", "return torch.mean(torch.clamp(1 - a * b, min=0))",
     "return [torch.randn(6, 8), torch.randint(0, 2, (8,)).float() * 2 - 1]", "a, b", "pass",
     ("mul", "neg", "add_scalar", "clamp", "mean")),
]


def test_traced_family_problems_map_to_catalog_ops_and_are_ok(evaluator):
    policy = CompilerPolicy()
    pairs, names = [], []
    for name, body, inputs, args, init, ops in CASES:
        src = problem(body, inputs, args, init)
        assert graph_from_source(src).ops == ops, name
        task = Task.from_source(src)
        pairs.append((task, policy.compile(task)))
        names.append(name)
    # chunked rows: carries across chunks and ties between chunks (argmax keeps the first index)
    for name, body, inputs in [
        ("argmax_ties_chunked", "return torch.argmax(x, dim=1)", "return [torch.randint(0, 3, (4, 100)).float()]"),
        ("argmin_ties_chunked", "return torch.argmin(x, dim=0)", "return [torch.randint(0, 3, (100, 4)).float()]"),
        ("cumprod_excl_rev_chunked", "s = x[:, 1:].flip(1).cumprod(1).flip(1)\n"
         "        return torch.cat([s, torch.ones_like(x[:, :1])], dim=1)", "return [torch.rand(3, 50) * 0.2 + 0.9]"),
        ("cumsum_excl_chunked", "return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1].cumsum(1)], dim=1)",
         "return [torch.randn(3, 50)]"),
    ]:
        task = Task.from_source(problem(body, inputs))
        pairs.append((task, policy.compile(task, config={"BLOCK_R": 16})))
        names.append(name)
    verdicts = evaluator.evaluate_batch(pairs, "interpret", "strict", "local", seed=3)
    bad = {n: f"{v.status} {v.reasons[:2]} {v.error[:300]}" for n, v in zip(names, verdicts) if v.status != "ok"}
    assert bad == {}
    argmax_src = pairs[0][1]
    assert "dtype=torch.int64" in argmax_src and "tl.argmax" not in argmax_src


@pytest.mark.parametrize("body", [
    "return torch.cat([torch.zeros(x.shape[0], 1), x.cumsum(1)], dim=1)",      # the scan of the whole row
    "return torch.cat([torch.zeros(x.shape[0], 1), x.narrow(1, 1, x.shape[1] - 1).cumsum(1)], dim=1)",
    "return torch.cat([torch.ones(x.shape[0], 1), x.narrow(1, 0, x.shape[1] - 1).cumsum(1)], dim=1)",
    "return torch.cumsum(x.flip(0), dim=1).flip(0)",                            # flips of another dim
    "return torch.cumsum(x.flip(1), dim=1).flip(1) + x.flip(1)",               # fine: the idiom, then a flip
])
def test_only_exact_scan_idioms_fuse(body):
    """A cat of zeros with the scan of the whole row or of the wrong part, a ones slot before a
    cumsum, or flips of another dim are not taken for reversed / exclusive scans: they trace to
    what they are, or fail naming the calls that have no catalog op."""
    idiom_then_flip = body.endswith("+ x.flip(1)")
    try:
        g = graph_from_source(problem(body))
    except TraceError as exc:
        if idiom_then_flip:  # only the lone flip can be unsupported (one call listed), not the idiom's
            assert str(exc).count("no catalog op") == 2 and "flip" in str(exc), exc
        return
    scans = [n for n in g.nodes if n.op == "cumsum"]
    if idiom_then_flip:
        assert scans and scans[0].params.get("reverse") is True
    else:
        assert all(not n.params.get("exclusive") and not n.params.get("reverse") for n in scans), g.nodes


@pytest.mark.parametrize("body,message", [
    ("return torch.argmax(x)", "without dim"),
    ("return F.cross_entropy(x, torch.softmax(x, -1))", "int64 input"),
    ("return F.cross_entropy(x, t, label_smoothing=0.1)", "label_smoothing"),
    ("return F.triplet_margin_loss(x, x, x, p=1)", "p != 2"),
])
def test_unsupported_family_forms_are_named(body, message):
    src = problem(body, "return [torch.randn(6, 11), torch.randint(0, 11, (6,))]", "x, t")
    with pytest.raises(TraceError, match=message):
        graph_from_source(src)


FAMILY = [n for n, op in CATALOG.items() if op.category in ("reduction", "cumulative", "loss")]
assert "cosine_similarity" in FAMILY


@pytest.mark.parametrize("name", FAMILY)
def test_every_variant_shape_rule_agrees_with_pytorch(name):
    """Each parameter combination of the family's ops on a rank-3 input (and the loss inputs):
    the z3 rule's shape is what the emitted torch call returns."""
    import torch.nn.functional as F  # noqa: F401,N812 - the emitted calls use F

    op = get_op(name)
    shapes = {1: [(3, 4, 5)], 2: [(3, 4, 5), (3, 4, 5)], 3: [(6, 5)] * 3}[op.arity]
    if name == "cross_entropy":
        shapes = [(6, 5), (6,)]
    elif name == "triplet_margin_loss":
        shapes = [(6, 5)] * 3
    for p in op.variants:
        args = [torch.rand(s) + 0.1 if j not in op.index_args else torch.randint(0, 5, s)
                for j, s in enumerate(shapes)]
        expr = op.call([f"a{j}" for j in range(op.arity)], {**p, "_in": shapes})
        out = eval(expr, {"torch": torch, "F": F, **{f"a{j}": a for j, a in enumerate(args)}})  # noqa: S307
        assert infer_shape(name, shapes, p) == tuple(out.shape), (name, p, expr)
        if op.index_out:
            assert out.dtype == torch.int64


@pytest.mark.parametrize("ops", [["argmax", "relu", "add"], ["cross_entropy", "relu", "mul_scalar"],
                                 ["mean", "exp", "argmin"], ["mse_loss", "sigmoid", "sub"]])
def test_index_and_scalar_outputs_are_never_consumed(ops):
    """An argmax's int64 indices and a loss's 0-d value end the program: sampled graphs return
    them and feed them to no op, at any seed."""
    for seed in range(4):
        g = sample_task(3, seed, ops=ops).graph
        for i, node in enumerate(g.nodes):
            spec = get_op(node.op)
            if spec.index_out or node.shape == ():
                assert i in g.outputs and all(src != i for src, _ in g.edges()), (seed, g)
            else:
                assert node.shape != (), (seed, g)


def test_sampled_family_tasks_are_ok(evaluator):
    """Sampled tasks mixing the family with other ops compile in strict mode and are judged ok."""
    policy = CompilerPolicy()
    tasks = [sample_task(2, s, ops=ops) for s, ops in enumerate([
        ["argmax", "softmax"], ["cumprod", "sigmoid"], ["kl_div", "exp"], ["cross_entropy", "linear"],
        ["triplet_margin_loss", "relu"], ["prod", "tanh"], ["smooth_l1_loss", "mul"], ["cumsum", "add"],
        ["cosine_similarity", "exp"]])]
    pairs = [(t, policy.compile(t)) for t in tasks]
    verdicts = evaluator.evaluate_batch(pairs, "interpret", "strict", "local", seed=4)
    bad = {f"{t.ops}": f"{v.status} {v.reasons[:2]} {v.error[:300]}" for t, v in zip(tasks, verdicts)
           if v.status != "ok"}
    assert bad == {}
