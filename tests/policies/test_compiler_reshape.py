"""The general reshape in the compiler: reshapes that are not a merge of adjacent dims (a split of a
flattened dim, unit dims for broadcasting, attention's head split) trace to the catalog's
``reshape`` and lower as a coordinate map fused into their neighbours, judged ok in strict mode
under the interpreter."""

from __future__ import annotations

import pytest

from policies.compiler import graph_from_source
from tests.policies.test_compiler import (
    compile_triton_only,
    failures,
    judge,
    kernel_defs,
)
from tests.policies.test_compiler_linalg import problem

# name -> (source, the traced ops)
PROBLEMS = {
    # level2/38's form: softmax over a flattened spatial dim, then the dim split back
    "softmax_split_back": (problem(
        "x", "b, c, d, h, w = x.shape\n"
             "        x = torch.softmax(x.view(b, c, -1), dim=2)\n"
             "        return x.view(b, c, d, h, w) * 2.0",
        "torch.randn(2, 3, 2, 3, 4)"), ("flatten", "softmax", "reshape", "mul_scalar")),
    # level2/89's form: a (C,) parameter viewed as (1, C, 1, 1, 1) to broadcast over channels
    "param_unit_dims": (problem(
        "x", "return x - self.p.view(1, -1, 1, 1, 1)", "torch.randn(2, 3, 2, 3, 2)",
        init="        self.p = nn.Parameter(torch.randn(3))"), ("reshape", "sub")),
    # minGPT's head split: (B, T, C) -> (B, T, nh, hs) -> (B, nh, T, hs), then q @ k^T
    "head_split_matmul": (problem(
        "q, k", "B, T, C = q.shape\n"
                "        q = q.view(B, T, 2, C // 2).transpose(1, 2)\n"
                "        k = k.view(B, T, 2, C // 2).transpose(1, 2)\n"
                "        return q @ k.transpose(-2, -1)",
        "torch.randn(2, 5, 8), torch.randn(2, 5, 8)"), None),
    # a regrouping that is neither a merge nor a split of one dim: (6, 4) -> (4, 6) -> (2, 12)
    "regroup": (problem("x", "return torch.relu(x.reshape(4, 6)).reshape(2, 12) + 1.0", "torch.randn(6, 4)"),
                ("reshape", "relu", "reshape", "add_scalar")),
}


@pytest.mark.parametrize("name", sorted(n for n, (_, ops) in PROBLEMS.items() if ops))
def test_reshapes_trace_to_the_catalog_reshape(name):
    src, ops = PROBLEMS[name]
    assert graph_from_source(src).ops == ops


def test_head_split_traces_to_reshapes_feeding_a_product():
    g = graph_from_source(PROBLEMS["head_split_matmul"][0])
    assert g.ops.count("reshape") == 2, g.ops
    assert any(op in ("matmul", "einsum", "bmm") for op in g.ops), g.ops
    shapes = [n.shape for n in g.nodes if n.op == "reshape"]
    assert shapes == [(2, 5, 2, 4), (2, 5, 2, 4)]


def test_merges_of_adjacent_dims_stay_flatten():
    src = problem("x", "return x.view(2, 12)", "torch.randn(2, 3, 4)")
    assert graph_from_source(src).ops == ("flatten",)


def test_reshapes_compile_to_triton_only_and_are_ok(evaluator):
    names, tasks, by_name = compile_triton_only(PROBLEMS)
    # a reshape is a coordinate map: it fuses into its consumer, never a kernel of its own
    assert len(kernel_defs(by_name["param_unit_dims"])) == 1, kernel_defs(by_name["param_unit_dims"])
    assert len(kernel_defs(by_name["regroup"])) == 1, kernel_defs(by_name["regroup"])
    assert len(kernel_defs(by_name["head_split_matmul"])) == 1, kernel_defs(by_name["head_split_matmul"])
    verdicts = judge(evaluator, [(t, by_name[n]) for n, t in zip(names, tasks)], seed=3)
    assert failures(names, verdicts) == {}
