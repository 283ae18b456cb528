"""KernelBench level-3 constructs in the tracer (`policies.compiler.trace_nn`): forward parameters
left to their defaults, registered buffers (a causal mask) with masked_fill, F.normalize, unfold
patches, F.pad and strided slices, nn.MultiheadAttention, nn.TransformerEncoderLayer and
nn.TransformerEncoder; hand-written problems in KernelBench's format, traced, compiled to Triton
only and judged ok in strict mode under the interpreter; what stays unsupported, by name."""

from __future__ import annotations

import pytest

from kernelgym.task import Task
from policies.compiler import CompilerPolicy, TraceError, graph_from_source
from tests.policies.test_compiler import failures, judge, kernel_defs, single_op_task, torch_compute_calls
from tests.policies.test_compiler_linalg import problem

# minGPT's masked self-attention (level3/43's form) at a tiny size: a tril(ones) buffer sliced to
# the sequence, compared with 0, filled with -inf
CAUSAL = '''
import math
import torch
import torch.nn as nn
import torch.nn.functional as F


class Model(nn.Module):
    def __init__(self, n_embd, n_head, max_seqlen):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.register_buffer("bias", torch.tril(torch.ones(max_seqlen, max_seqlen)).view(1, 1, max_seqlen, max_seqlen))
        self.n_head = n_head
        self.n_embd = n_embd

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float('-inf'))
        att = F.softmax(att, dim=-1)
        return (att @ v).transpose(1, 2).contiguous().view(B, T, C)


def get_inputs():
    return [torch.rand(2, 6, 16)]


def get_init_inputs():
    return [16, 2, 8]
'''

MHA = "        self.attn = nn.MultiheadAttention(16, 2{kw})\n        self.norm = nn.LayerNorm(16)"
LAYER = ("        self.layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=24, dropout=0.0{kw})")
ENCODER = ("        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 24, 0.0, activation='gelu'), 2,\n"
           "                                         norm=nn.LayerNorm(16), enable_nested_tensor=False)")

# name -> (source, the traced ops or None)
PROBLEMS = {
    # level3/46's form: forward(x, mask=None) called with x only; the branch on mask is not taken
    "default_none": (problem("x, mask=None, scale=2.0",
                             "if mask is not None:\n            x = x * mask\n        return torch.relu(x) * scale",
                             "torch.randn(3, 5)"), ("relu", "mul_scalar")),
    "causal_mask": (CAUSAL, None),
    "masked_fill_cmp": (problem("x, m", "return x.masked_fill(m > 0.25, -1.5) + x.masked_fill(0.5 >= m, 2.0)",
                                "torch.randn(3, 7), torch.rand(3, 7)"),
                        ("masked_fill_cmp", "masked_fill_cmp", "add")),
    "normalize": (problem("x", "return F.normalize(F.normalize(x, dim=2), dim=-1, eps=1e-6)", "torch.randn(2, 3, 5)"),
                  ("norm", "clamp", "div", "norm", "clamp", "div")),
    # level3/28's patch extraction: windows that tile H and W, flattened per patch
    "unfold_patches": (problem("img", "p = 2\n        x = img.unfold(2, p, p).unfold(3, p, p)\n"
                                      "        return x.reshape(img.shape[0], -1, p * p * img.shape[1])",
                               "torch.randn(2, 3, 4, 6)"), None),
    "unfold_remainder": (problem("x", "return x.unfold(1, 2, 2) * 3.0", "torch.randn(3, 7)"),
                         ("narrow", "reshape", "mul_scalar")),
    # level3/29's shifted windows: constant padding, a crop, strided slices (PatchMerging)
    "pad": (problem("x", "y = F.pad(x, [0, 0, 1, 2, 2, 1], 'constant', 0.5)\n"
                         "        return F.pad(y, (-1, 0, 0, -1)) + 1.0", "torch.randn(2, 3, 4, 5)"),
            ("pad", "narrow", "narrow", "add_scalar")),
    "strided_slices": (problem("x", "return torch.cat([x[:, 0::2, 0::2, :], x[:, 1::2, 1::2, :], x[:, 1::2, :4:2]], -1)",
                               "torch.randn(2, 6, 4, 3)"), None),
    "strided_short_step": (problem("x", "return x[:, 1::3] * 2.0", "torch.randn(2, 8)"), None),
    # level3/31's form: (B, C, H, W) as a sequence (seq, batch, embed), self-attention, residual norm
    "mha_seq_first": (problem("x", "B, C, H, W = x.shape\n"
                                   "        x = x.view(B, C, H * W).permute(2, 0, 1)\n"
                                   "        out, _ = self.attn(x, x, x)\n"
                                   "        return self.norm(out + x).permute(1, 2, 0).view(B, C, H, W)",
                              "torch.randn(2, 16, 2, 3)", init=MHA.format(kw="")), None),
    "mha_batch_first_cross": (problem("q, kv", "return self.attn(q, kv, kv, need_weights=False)[0]",
                                      "torch.randn(2, 3, 16), torch.randn(2, 5, 16)",
                                      init=MHA.format(kw=", batch_first=True, bias=False")), None),
    "mha_kdim_vdim": (problem("q, k, v", "return self.attn(q, k, v)[0]",
                              "torch.randn(2, 3, 16), torch.randn(2, 5, 12), torch.randn(2, 5, 10)",
                              init=MHA.format(kw=", kdim=12, vdim=10, batch_first=True")), None),
    # level3/32's form: batch-first post-norm layers; pre-norm with GELU; a stack with a final norm
    "encoder_layer": (problem("x", "return self.layer(x)", "torch.randn(2, 4, 16)",
                              init=LAYER.format(kw=", batch_first=True")), None),
    "encoder_layer_norm_first": (problem("x", "return self.layer(x)", "torch.randn(4, 2, 16)",
                                         init=LAYER.format(kw=", norm_first=True, activation=nn.GELU()")), None),
    "encoder": (problem("x", "return self.enc(x)", "torch.randn(3, 2, 16)", init=ENCODER), None),
}


@pytest.mark.parametrize("name", sorted(n for n, (_, ops) in PROBLEMS.items() if ops))
def test_constructs_trace_to_catalog_ops(name):
    src, ops = PROBLEMS[name]
    assert graph_from_source(src).ops == ops


def test_default_parameters_are_not_inputs():
    g = graph_from_source(PROBLEMS["default_none"][0])
    assert len(g.inputs) == 1 and g.nodes[1].params == {"c": 2.0}


def test_causal_mask_is_a_buffer_read_from_the_state():
    g = graph_from_source(CAUSAL)
    assert [s.key for s in g.state if s.buffer] == ["bias"]
    fill = g.nodes[g.ops.index("masked_fill_cmp")]
    assert fill.params == {"cmp": "eq", "c": 0.0, "value": float("-inf")}
    # the mask: the buffer narrowed to the sequence on both dims
    narrow = g.nodes[fill.args[1][1]]
    assert narrow.op == "narrow" and narrow.shape == (1, 1, 6, 6)


def test_attention_modules_decompose_into_sdpa_and_linears():
    g = graph_from_source(PROBLEMS["mha_seq_first"][0])
    assert g.ops.count("sdpa") == 1 and g.ops.count("linear") == 2, g.ops   # self-attention: one in-projection
    g = graph_from_source(PROBLEMS["mha_batch_first_cross"][0])
    assert g.ops.count("linear") == 3, g.ops   # q and kv projected apart, then the output projection
    g = graph_from_source(PROBLEMS["encoder"][0])
    assert g.ops.count("sdpa") == 2 and g.ops.count("gelu") == 2 and g.ops.count("layer_norm") == 5, g.ops
    g = graph_from_source(PROBLEMS["encoder_layer_norm_first"][0])
    assert g.ops[0] == "layer_norm" and g.ops[-1] == "add", g.ops


def test_level3_constructs_compile_to_triton_only_and_are_ok(evaluator):
    policy = CompilerPolicy()
    names = sorted(PROBLEMS)
    tasks = [Task.from_source(PROBLEMS[n][0]) for n in names]
    srcs = [policy.compile(t) for t in tasks]
    for n, s in zip(names, srcs):
        assert kernel_defs(s) and torch_compute_calls(s) == [], n
    verdicts = judge(evaluator, list(zip(tasks, srcs)), seed=5)
    assert failures(names, verdicts) == {}


@pytest.mark.parametrize("op", ["masked_fill_cmp", "pad"])
def test_new_catalog_ops_alone_are_ok(evaluator, op):
    tasks = [single_op_task(op, seed) for seed in range(3)]
    policy = CompilerPolicy()
    pairs = [(t, policy.compile(t)) for t in tasks]
    assert all(op in t.ops for t in tasks)
    assert failures([op] * len(tasks), judge(evaluator, pairs, seed=1)) == {}


UNSUPPORTED = {
    "mha_mask": (problem("x, m", "return self.attn(x, x, x, attn_mask=m)[0]", "torch.randn(4, 2, 16), torch.zeros(4, 4)",
                         init=MHA.format(kw="")), "MultiheadAttention with attn_mask"),
    "mha_weights": (problem("x", "out, w = self.attn(x, x, x)\n        return out.sum() + w.sum()",
                            "torch.randn(4, 2, 16)", init=MHA.format(kw="")), "getitem"),
    "unfold_overlap": (problem("x", "return x.unfold(1, 3, 2)", "torch.randn(2, 9)"), "unfold with step 2 != size 3"),
    "pad_reflect": (problem("x", "return F.pad(x, (1, 1), mode='reflect')", "torch.randn(2, 3, 5)"),
                    "F.pad with mode='reflect'"),
    "layer_mask": (problem("x, m", "return self.layer(x, src_mask=m)", "torch.randn(4, 2, 16), torch.zeros(4, 4)",
                           init=LAYER.format(kw="")), "TransformerEncoderLayer with src_mask"),
    "normalize_p1": (problem("x", "return F.normalize(x, p=1.0)", "torch.randn(2, 3)"), "F.normalize with p=1.0"),
}


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_forms_are_named(name):
    src, message = UNSUPPORTED[name]
    with pytest.raises(TraceError, match=message):
        graph_from_source(src)
