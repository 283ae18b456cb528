"""The matmul / attention / view family in the compiler: hand-written KernelBench-style problems
(tensor-matrix products, einsum, scaled-dot-product attention, triangular products, views, copies
and indexing) traced, compiled to Triton only and judged under the interpreter; the einsum
contraction analysis; what is still refused, by name."""

from __future__ import annotations

import pytest

from kernelgym.task import Task
from policies.compiler import CompileError, CompilerPolicy, TraceError, graph_from_source
from policies.compiler.kernels import contraction
from tests._tasks import model_source
from tests.policies.test_compiler import (
    compile_triton_only,
    failures,
    judge,
    kernel_defs,
)


def problem(args: str, body: str, inputs: str, init: str = "pass") -> str:
    return model_source(body, args, f"return [{inputs}]", init)


# name -> (source, the traced ops)
PROBLEMS = {
    "tensor3_matrix": (problem("A, B", "return torch.matmul(A, B)", "torch.rand(2, 5, 24), torch.rand(24, 18)"),
                       ("matmul",)),
    "einsum_4d_matrix": (problem("A, B", 'return torch.einsum("bijl,lk->bijk", A, B)',
                                 "torch.rand(2, 3, 5, 20), torch.rand(20, 17)"), ("einsum",)),
    "einsum_implicit_transposed": (problem("A, B", 'return torch.einsum("ki,kj", A, B)',
                                           "torch.rand(19, 6), torch.rand(19, 9)"), ("einsum",)),
    "matmul_4d_broadcast": (problem("q, k", "return torch.relu(q @ k.transpose(-2, -1))",
                                    "torch.rand(2, 3, 7, 16), torch.rand(1, 3, 9, 16)"),
                            ("transpose", "einsum", "relu")),
    "diag_matmul": (problem("A, B", "return A.unsqueeze(1) * B", "torch.rand(20), torch.rand(20, 7)"),
                    ("unsqueeze", "mul")),
    "triu_matmul": (problem("A, B", "return torch.triu(torch.matmul(A, B))",
                            "torch.triu(torch.rand(20, 20)), torch.triu(torch.rand(20, 20))"), ("matmul", "triu")),
    "sdpa": (problem("Q, K, V", "return F.scaled_dot_product_attention(Q, K, V)",
                     "torch.rand(2, 2, 19, 24), torch.rand(2, 2, 21, 24), torch.rand(2, 2, 21, 20)"), ("sdpa",)),
    "sdpa_causal_scaled": (problem("Q, K, V",
                                   "return torch.nn.functional.scaled_dot_product_attention(Q * 2.0, K, V, "
                                   "is_causal=True, scale=0.3) + 1.0",
                                   "torch.randn(3, 40, 16), torch.randn(3, 40, 16), torch.randn(3, 40, 16)"),
                           ("mul_scalar", "sdpa", "add_scalar")),
    "manual_attention": (problem("x", "B, T, C = x.size()\n        q, k, v = self.c_attn(x).split(C, dim=2)\n"
                                      "        att = (q @ k.transpose(-2, -1)) * (1.0 / C ** 0.5)\n"
                                      "        att = att.masked_fill(self.bias[:, :T, :T] == 0, float('-inf'))\n"
                                      "        return F.softmax(att, dim=-1) @ v",
                                 "torch.randn(2, 8, 16)",
                                 "        self.c_attn = nn.Linear(16, 48)\n"
                                 "        self.register_buffer('bias', torch.tril(torch.ones(12, 12)).view(1, 12, 12))"),
                         None),  # the mask: a buffer compared with 0 (see below; judged in test_compiler_level3)
    # (flip -> cumsum -> flip, KernelBench's reversed scan, traces to one reversed cumsum node)
    "flip_then_cumsum": (problem("x", "return torch.cumsum(x.flip(1), dim=1) * 2.0", "torch.rand(4, 30)"),
                         ("flip", "cumsum", "mul_scalar")),
    "views_and_copies": (problem("x, y",
                                 "a = x.clone().detach().narrow(1, 1, 5).unsqueeze(0).squeeze()\n"
                                 "        b = torch.select(y, 0, 1)[None, :, 2:7].expand(3, 4, 5)\n"
                                 "        return a.repeat(3, 1, 1) + b + x[:, -5:][..., None, :].squeeze(1)",
                                 "torch.randn(4, 7), torch.randn(2, 4, 9)"),
                         None),
    "split_chunk": (problem("x", "a, b = x.chunk(2, dim=-1)\n        c, d, e = x.split([3, 5, 2], dim=1)\n"
                                 "        return torch.cat([a * b, torch.sigmoid(c[:, :2]) + e], dim=1)[:, 1:5] + d[:, 1:]",
                            "torch.randn(6, 10)"), None),
    "bmm_clone_unsqueeze_norm": (problem("x, w", "x = torch.bmm(x, w)\n        r = x.clone()\n"
                                               "        x = self.norm(x.unsqueeze(1)).squeeze(1)\n"
                                               "        return x + r",
                                         "torch.randn(2, 8, 12), torch.randn(2, 12, 10)",
                                         "        self.norm = nn.InstanceNorm2d(1)"),
                                 ("bmm", "clone", "unsqueeze", "instance_norm", "squeeze", "add")),
}
TRACED = {k: v for k, v in PROBLEMS.items() if k != "manual_attention"}


@pytest.mark.parametrize("name", sorted(p for p, (_, ops) in PROBLEMS.items() if ops))
def test_problems_trace_to_the_family_ops(name):
    src, ops = PROBLEMS[name]
    assert graph_from_source(src).ops == ops


def test_problems_compile_to_triton_only_and_are_ok(evaluator):
    names, tasks, by_name = compile_triton_only(TRACED)
    # one kernel each: triu as the product's epilogue, views as prologues, attention with its
    # scale prologue and epilogue (the scores never reach memory)
    for n in ("triu_matmul", "diag_matmul", "sdpa", "sdpa_causal_scaled", "einsum_4d_matrix", "matmul_4d_broadcast"):
        assert len(kernel_defs(by_name[n])) == 1, (n, kernel_defs(by_name[n]))
    # the flip is the scan's prologue, the scale its epilogue
    assert kernel_defs(by_name["flip_then_cumsum"]) == ["k0_flip_cumsum_mul_scalar"]
    assert "tl.dot(" in by_name["sdpa"] and "tl.exp(" in by_name["sdpa"]
    verdicts = judge(evaluator, [(t, by_name[n]) for n, t in zip(names, tasks)], seed=7)
    assert failures(names, verdicts) == {}


def test_contraction_classifies_letters():
    ct = contraction("bijl,lk->bijk", (2, 3, 4, 5), (5, 6))
    assert (ct.batch, ct.rows, ct.cols, ct.red) == ("", "bij", "k", "l")
    ct = contraction("bhqd,bhkd->bhqk", (2, 3, 4, 5), (2, 3, 6, 5))
    assert (ct.batch, ct.rows, ct.cols, ct.red) == ("bh", "q", "k", "d")
    # a broadcast batch dim of size 1 on one side has a letter of its own there, summed over 1
    ct = contraction("pamk,bakn->bamn", (1, 3, 4, 5), (2, 3, 5, 6))
    assert (ct.batch, ct.rows, ct.cols, ct.red) == ("a", "m", "bn", "k")
    with pytest.raises(CompileError, match="sums letter 'j' within one operand"):
        contraction("ij,k->ik", (2, 3), (4,))
    with pytest.raises(CompileError, match="explicit equations"):
        contraction("ij,jk", (2, 3), (3, 4))


@pytest.mark.parametrize("body,inputs,message", [
    ("return torch.einsum('ij,jk,kl->il', x, x, x)", "torch.randn(4, 4)", "of 3 operand"),
    ("return torch.einsum('ii,ij->ij', x, x)", "torch.randn(4, 4)", "distinct letters"),
    ("return torch.einsum('ij,j->i', x, x[0])", "torch.randn(4, 4)", None),   # a matrix-vector product is fine
    ("return x @ x[0]", "torch.randn(4, 4)", "a 1-D operand"),
    ("return F.scaled_dot_product_attention(x, x, x, attn_mask=x > 0)", "torch.randn(2, 4, 4)", "attn_mask"),
    ("return F.scaled_dot_product_attention(x, x, x, dropout_p=0.1)", "torch.randn(2, 4, 4)", "dropout"),
    ("return x[[0, 2]]", "torch.randn(4, 4)", "indexing with immutable_list"),
    ("return x[x > 0]", "torch.randn(4, 4)", "indexing with"),
])
def test_family_calls_outside_the_catalog_are_named(body, inputs, message):
    src = problem("x", body, inputs)
    if message is None:
        assert graph_from_source(src).ops == ("select", "einsum")
        return
    with pytest.raises(TraceError, match=message):
        graph_from_source(src)


def test_manual_attention_traces_with_its_mask():
    """minGPT's attention (level 3) traces whole: its causal mask is the buffer (read from the
    state) narrowed to the sequence and compared with 0, and masked_fill with -inf is one
    masked_fill_cmp node feeding the softmax."""
    g = graph_from_source(PROBLEMS["manual_attention"][0])
    fill = g.nodes[g.ops.index("masked_fill_cmp")]
    assert fill.params == {"cmp": "eq", "c": 0.0, "value": float("-inf")}
    assert g.ops[g.ops.index("masked_fill_cmp") + 1] == "softmax", g.ops
    assert [s.key for s in g.state if s.buffer] == ["bias"]


GPU_PROBLEMS = {
    # KernelBench level 1 97's form at a smaller size; a head dim of 256 splits the value dim
    "sdpa": problem("Q, K, V", "return F.scaled_dot_product_attention(Q, K, V)",
                    "torch.rand(4, 8, 512, 256), torch.rand(4, 8, 512, 256), torch.rand(4, 8, 512, 256)"),
    "sdpa_causal_fp16": problem("Q, K, V", "return F.scaled_dot_product_attention(Q, K, V, is_causal=True)",
                                ", ".join(["torch.randn(8, 16, 1000, 64, dtype=torch.float16)"] * 3)),
    "einsum_4d_matrix": problem("A, B", 'return torch.einsum("bijl,lk->bijk", A, B)',
                                "torch.rand(4, 64, 128, 256), torch.rand(256, 384)"),
    "matmul_4d_broadcast": problem("q, k", "return q @ k.transpose(-2, -1)",
                                   "torch.randn(4, 8, 256, 64), torch.randn(1, 8, 300, 64)"),
}


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(GPU_PROBLEMS))
def test_family_problems_are_correct_on_the_gpu(evaluator, name):
    task = Task.from_source(GPU_PROBLEMS[name])
    src = CompilerPolicy().compile(task)
    v = evaluator.evaluate(task, src, backend="cuda", seed=3)
    assert v.status == "ok", (v.status, v.reasons, v.error[:500])
    assert v.speedup is not None
