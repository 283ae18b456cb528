"""Recurrent layers in the compiler: hand-written KernelBench-style problems with nn.LSTM, nn.GRU and
nn.RNN (tiny shapes; one and several layers, bidirectional or not, batch-first or not, with and
without biases; the output sequence, h_n or c_n returned) traced to the catalog ops `lstm`, `gru`
and `rnn`, compiled to Triton only and judged under the interpreter in strict mode; what is
still refused, by name."""

from __future__ import annotations

import pytest

from kernelgym.ops import get_op
from kernelgym.ops.spec import Weight
from kernelgym.task import Task
from policies.compiler import CompilerPolicy, TraceError, graph_from_source, partition_problem
from tests.policies.test_compiler import failures, judge, kernel_defs, launches, torch_compute_calls

TEMPLATE = '''
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.rnn = nn.{cls}(input_size, hidden_size, {options})
        self.fc = nn.Linear({width}, 3)

    def forward(self, x, {states}):
        {body}


def get_inputs():
    return [torch.rand({x_shape}), {state_inputs}]


def get_init_inputs():
    return [5, 6]
'''


def problem(cls: str, body: str, layers: int = 1, bidirectional: bool = False, batch_first: bool = False,
            bias: bool = True, extra: str = "") -> str:
    d = 2 if bidirectional else 1
    lstm = cls == "LSTM"
    state = f"torch.rand({layers * d}, 2, 6)"
    return TEMPLATE.format(
        cls=cls, width=6 * d, body=body, states="h0, c0" if lstm else "h0",
        options=f"{layers}, bias={bias}, batch_first={batch_first}, bidirectional={bidirectional}{extra}",
        x_shape="2, 4, 5" if batch_first else "4, 2, 5", state_inputs=f"{state}, {state}" if lstm else state)


# name -> (source, the traced ops, the recurrent node's result)
PROBLEMS = {
    # KernelBench's LSTM problems: the last step's output through a linear layer, h_n, c_n
    "lstm_last_step_fc": (problem("LSTM", "out, _ = self.rnn(x, (h0, c0))\n        return self.fc(out[:, -1, :])",
                                  layers=2, bidirectional=True, batch_first=True), ("lstm", "select", "linear"),
                          "output"),
    "lstm_h_n": (problem("LSTM", "out, state = self.rnn(x, (h0, c0))\n        return state[0]", layers=3),
                 ("lstm",), "h_n"),
    "lstm_c_n_no_bias": (problem("LSTM", "out, (h, c) = self.rnn(x, (h0, c0))\n        return c", layers=2,
                                 bidirectional=True, bias=False), ("lstm",), "c_n"),
    "gru_output": (problem("GRU", "output, h_n = self.rnn(x, h0)\n        return output", layers=2),
                   ("gru",), "output"),
    "gru_h_n_bidirectional": (problem("GRU", "output, h_n = self.rnn(x, h0)\n        return h_n", layers=2,
                                      bidirectional=True), ("gru",), "h_n"),
    "gru_batch_first_then_relu": (problem("GRU", "return torch.relu(self.rnn(x, h0)[0])", batch_first=True,
                                          bidirectional=True, bias=False), ("gru", "relu"), "output"),
    "rnn_tanh": (problem("RNN", "return self.rnn(x, h0)[0]", layers=2, bidirectional=True, batch_first=True),
                 ("rnn",), "output"),
    "rnn_relu_h_n": (problem("RNN", "return self.rnn(x, h0)[1]", layers=2, extra=", nonlinearity='relu'"),
                     ("rnn",), "h_n"),
}


CELL_LOOP = '''
import torch
import torch.nn as nn


class Model(nn.Module):
    """An Elman cell written out: the loop over steps is unrolled by tracing, the outputs stacked."""

    def __init__(self, n_in, n_hidden, n_out):
        super().__init__()
        self.step = nn.Linear(n_in + n_hidden, n_hidden)
        self.readout = nn.Linear(n_hidden, n_out)

    def forward(self, seq, h):
        outs = []
        for t in range(seq.size(0)):
            h = torch.tanh(self.step(torch.cat((seq[t], h), dim=1)))
            outs.append(self.readout(h))
        return torch.stack(outs, dim=STACK_DIM)


def get_inputs():
    return [torch.rand(3, 2, 5), torch.rand(2, 6)]


def get_init_inputs():
    return [5, 6, 4]
'''

# name -> (source, the traced ops): recurrences written as loops (torch.stack)
CELL_PROBLEMS = {
    "cell_loop_stack_dim0": (CELL_LOOP.replace("STACK_DIM", "0"),
                             ("select", "concat", "linear", "tanh", "linear") * 3
                             + ("unsqueeze", "unsqueeze", "concat", "unsqueeze", "concat")),
    "cell_loop_stack_last_dim": (CELL_LOOP.replace("STACK_DIM", "-1"), None),
}


@pytest.mark.parametrize("name", sorted(CELL_PROBLEMS))
def test_stack_traces_to_unsqueeze_and_concat(name):
    source, ops = CELL_PROBLEMS[name]
    g = graph_from_source(source)
    assert ops is None or g.ops == ops
    assert g.nodes[g.outputs[0]].shape == ((3, 2, 4) if "dim0" in name else (2, 4, 3))


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_problems_trace_to_recurrent_nodes(name):
    source, ops, result = PROBLEMS[name]
    g = graph_from_source(source)
    assert g.ops == ops
    node = g.nodes[0]
    assert node.params["result"] == result
    weights = node.params["_state"]
    assert set(weights) == {w.name for w in get_op(node.op).weights(g.in_shapes(0), node.shape, node.params)}
    assert all(key == f"rnn.{role}" for role, key in weights.items())


def test_unused_parts_make_no_node_and_shared_parts_one():
    """``out, (h, c) = ...`` with only h used: one node; h used twice: still one node."""
    g = graph_from_source(problem("LSTM", "out, (h, c) = self.rnn(x, (h0, c0))\n        return h * 2.0 + h"))
    assert g.ops == ("lstm", "mul_scalar", "add")
    assert g.nodes[0].params["result"] == "h_n"


def test_problems_compile_to_triton_only_and_are_ok(evaluator):
    names = sorted(PROBLEMS) + sorted(CELL_PROBLEMS)
    policy = CompilerPolicy()
    pairs = []
    for name in names:
        task = Task.from_source({**PROBLEMS, **CELL_PROBLEMS}[name][0])
        src = policy.compile(task)
        assert torch_compute_calls(src) == [], (name, torch_compute_calls(src))
        assert kernel_defs(src) == launches(src), name
        if name in PROBLEMS:   # the time loop is in a kernel
            assert any(d.endswith("_cell") for d in kernel_defs(src)), name
        pairs.append((task, src))
    verdicts = judge(evaluator, pairs)
    assert failures(names, verdicts) == {}


def test_launches_do_not_grow_with_the_sequence():
    """Two launches per layer and direction whatever the length: the steps loop inside the cell kernel."""
    policy = CompilerPolicy()
    short = policy.compile(problem("GRU", "return self.rnn(x, h0)[0]", layers=2, bidirectional=True))
    long = policy.compile(problem("GRU", "return self.rnn(x, h0)[0]", layers=2, bidirectional=True)
                          .replace("torch.rand(4, 2, 5)", "torch.rand(300, 2, 5)"))
    body = long.split("def forward", 1)[1]
    assert body.count("_proj[grid](") == body.count("_cell[grid](") == 1   # one of each, in the layer loop
    assert long.count("self.rnn.weight_hh_l") == short.count("self.rnn.weight_hh_l") == 4
    assert "T=300" in long and "T=4" in short


def test_recurrent_node_is_alone_in_its_kernel():
    g = graph_from_source(PROBLEMS["gru_batch_first_then_relu"][0])
    assert partition_problem(g, [[0, 1]]) is not None
    assert "recurrent layer" in partition_problem(g, [[0, 1]])
    assert partition_problem(g, [[0], [1]]) is None


@pytest.mark.parametrize(("body", "options", "message"), [
    ("return self.rnn(x)[0]", "", "without an initial state"),
    ("return self.rnn(x, (h0, c0))[0]", ", proj_size=2", "proj_size"),
    ("return torch.stack([x, h0], dim=0)", "", "stack expects each tensor to be equal size"),  # the reference fails
])
def test_refused_by_name(body, options, message):
    src = problem("LSTM", body, extra=options)
    with pytest.raises(TraceError, match=message):
        graph_from_source(src)


def test_catalog_weights_are_torchs():
    """The ops' weights are named and shaped as the nn modules' (so ModelNew loads the reference's state
    dict), for every drawn parameter combination."""
    import torch

    for op, cls in (("lstm", torch.nn.LSTM), ("gru", torch.nn.GRU), ("rnn", torch.nn.RNN)):
        spec = get_op(op)
        for p in spec.variants:
            d = 2 if p["bidirectional"] else 1
            ref = cls(5, 6, p["layers"], bias=p["bias"], bidirectional=p["bidirectional"])
            ins = [(4, 2, 5)] + [(p["layers"] * d, 2, 6)] * (spec.arity - 1)
            got = {w.name: w.shape for w in spec.weights(ins, (4, 2, 6 * d), p)}
            assert got == {k: tuple(v.shape) for k, v in ref.named_parameters()}, (op, p)
            assert all(isinstance(w, Weight) for w in spec.weights(ins, (4, 2, 6 * d), p))


@pytest.mark.parametrize("op", ["lstm", "gru", "rnn"])
def test_sampled_sources_trace_back_to_their_ops(op):
    """A sampled task's source calls torch's functional form (``torch.lstm(x, (h0, c0), [...], ...)[k]``):
    traced, it gives the sampled node back."""
    from kernelgym.sampler import sample_task

    for seed in range(3):
        task = sample_task(1, seed, ops=[op])
        sampled = task.graph.nodes[0]   # Task.graph is a Graph
        traced = graph_from_source(task.source).nodes[0]
        assert (traced.op, traced.shape) == (sampled.op, sampled.shape)
        assert {k: v for k, v in traced.params.items() if k != "_state"} == dict(sampled.params)


def bench_problem(cls: str, body: str, bidirectional: bool, batch_first: bool) -> str:
    """KernelBench's recurrent sizes: 512 steps, batch 10, 128 inputs, hidden 256, 6 layers."""
    d = 2 if bidirectional else 1
    state = f"torch.rand({6 * d}, 10, 256)"
    return (TEMPLATE.format(cls=cls, width=256 * d, body=body, states="h0, c0" if cls == "LSTM" else "h0",
                            options=f"6, batch_first={batch_first}, bidirectional={bidirectional}",
                            x_shape="10, 512, 128" if batch_first else "512, 10, 128",
                            state_inputs=f"{state}, {state}" if cls == "LSTM" else state)
            .replace("return [5, 6]", "return [128, 256]"))


@pytest.mark.gpu
@pytest.mark.parametrize(("cls", "body", "bidirectional", "batch_first"), [
    ("LSTM", "out, _ = self.rnn(x, (h0, c0))\n        return self.fc(out[:, -1, :])", True, True),
    ("LSTM", "out, state = self.rnn(x, (h0, c0))\n        return state[1]", False, True),
    ("GRU", "output, h_n = self.rnn(x, h0)\n        return output", True, False),
])
def test_bench_size_layers_are_ok_on_the_gpu(evaluator, cls, body, bidirectional, batch_first):
    task = Task.from_source(bench_problem(cls, body, bidirectional, batch_first))
    src = CompilerPolicy().compile(task)
    v = evaluator.evaluate(task, src, backend="cuda", seed=3)
    assert v.status == "ok", (v.status, v.error[:500])
    print(f"{cls} bidirectional={bidirectional}: speedup {v.speedup}")


def test_in_place_calls_on_unused_parts_are_kept():
    """An unused part written in place stays (and is reported: no catalog op), never silently dropped."""
    src = problem("GRU", "output, h_n = self.rnn(x, h0)\n        output.add_(1.0)\n        return h_n")
    with pytest.raises(TraceError, match="add_"):
        graph_from_source(src)


def test_launch_config_reaches_the_recurrent_launches():
    """num_warps / num_stages set the recurrence's launch; the products' tiles stay >= 16 (tl.dot)."""
    task = Task.from_source(PROBLEMS["gru_output"][0])
    policy = CompilerPolicy()
    src = policy.compile(task, config={"BLOCK_K": 8, "BLOCK_M": 32, "num_warps": 2, "num_stages": 2})
    proj, cell = [line for line in src.splitlines() if "[grid](" in line]
    assert "BLOCK_M=32" in proj and "BLOCK_K=16" in proj and "num_warps=4" in proj
    assert cell.endswith("num_warps=2, num_stages=2)")
    assert len(policy.propose(task, n=4)) == 4   # launch variants of a recurrent task are distinct
