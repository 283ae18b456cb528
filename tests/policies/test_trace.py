"""The tracer's infrastructure: meta-device tracing (no compute), constructors that need real
values, number arguments of forward, constants built in forward, thread safety."""

from __future__ import annotations

import threading
import time

import pytest

from kernelgym.task import Task
from policies.compiler import CompilerPolicy, TraceError, graph_from_source
from policies.compiler.trace import load_reference

# At these sizes the input alone is 128 * 64 * 128 * 128 * 4 B = 537 MB and the convolution
# ~0.6 TFLOP: a tracer that computed would take minutes (or run out of memory) on a CI machine.
FULL_SIZE = '''
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self, cin, cout, k, bias_shape):
        super().__init__()
        self.conv = nn.ConvTranspose2d(cin, cout, k, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(cout)
        self.bias = nn.Parameter(torch.randn(bias_shape))

    def forward(self, x):
        x = self.bn(self.conv(x))
        x = torch.tanh(x) + self.bias
        return x.view(x.shape[0], -1).softmax(-1)


def get_inputs():
    return [torch.randn(128, 64, 128, 128)]


def get_init_inputs():
    return [64, 256, 4, (256, 1, 1)]
'''


def test_a_full_size_problem_traces_without_computing():
    graph_from_source(SCALAR_ARG)   # the first trace imports torch's meta kernels (seconds): not timed
    t0 = time.perf_counter()
    g = graph_from_source(FULL_SIZE)
    elapsed = time.perf_counter() - t0
    assert g.ops == ("conv_transpose2d", "batch_norm", "tanh", "add", "flatten", "softmax")
    assert g.inputs[0].shape == (128, 64, 128, 128) and g.nodes[0].shape == (128, 256, 256, 256)
    assert g.nodes[-1].shape == (128, 256 * 256 * 256)
    assert elapsed < 5, f"tracing took {elapsed:.1f} s: something computed"
    model, inputs = load_reference(FULL_SIZE)
    assert inputs[0].device.type == "meta" and model.conv.weight.device.type == "meta"


def test_state_and_init_params_are_those_of_the_cpu_model():
    """State-dict entries (keys, shapes, buffers, integer dtypes) and the constructor's parameters
    are exactly those of the reference built on the CPU."""
    import torch

    from kernelgym.task import exec_source

    src = FULL_SIZE.replace("return [torch.randn(128, 64, 128, 128)]", "return [torch.randn(2, 64, 5, 5)]")
    g = graph_from_source(src)
    mod = exec_source(src, "cpu_reference")
    model = mod.Model(*mod.get_init_inputs())
    buffers = {k for k, _ in model.named_buffers()}
    want = [(k, tuple(v.shape), k in buffers, None if v.is_floating_point() else str(v.dtype).removeprefix("torch."))
            for k, v in model.state_dict().items()]
    assert [(s.key, s.shape, s.buffer, s.dtype) for s in g.state] == want
    assert ("bn.num_batches_tracked", (), True, "int64") in want
    assert g.init_params == "cin, cout, k, bias_shape" and g.dtype == "float32"
    assert isinstance(model.conv.weight, torch.nn.Parameter)


READS_VALUES = '''
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self, n):
        super().__init__()
        w = torch.linspace(0.5, 1.5, n)
        self.scale = float(w.mean())          # reads a value: cannot run on the meta device
        self.fc = nn.Linear(n, n)

    def forward(self, x):
        return self.fc(x) * self.scale


def get_inputs():
    return [torch.randn(4, 8)]


def get_init_inputs():
    return [8]
'''


def test_a_constructor_that_reads_tensor_values_is_built_on_the_cpu():
    g = graph_from_source(READS_VALUES)
    assert g.ops == ("linear", "mul_scalar") and g.nodes[1].params["c"] == pytest.approx(1.0)
    assert [s.key for s in g.state] == ["fc.weight", "fc.bias"]
    model, _ = load_reference(READS_VALUES)
    assert model.fc.weight.device.type == "meta"   # built on the CPU, then moved: nothing computes later


SCALAR_ARG = '''
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, A, s):
        return torch.relu(A * s) + s


def get_inputs():
    return [torch.randn(16, 33), 3.25]


def get_init_inputs():
    return []
'''


def test_a_number_argument_is_a_scalar_input_taken_at_run_time(evaluator):
    g = graph_from_source(SCALAR_ARG)
    assert [(i.shape, i.kind) for i in g.inputs] == [((16, 33), "float"), ((), "scalar")]
    assert g.ops == ("mul", "relu", "add") and g.nodes[0].args == (("input", 0), ("input", 1))
    task = Task.from_source(SCALAR_ARG)
    src = CompilerPolicy().compile(task)
    assert "def forward(self, x0, x1):" in src and "3.25" not in src   # not baked into the kernel
    launch = [line for line in src.splitlines() if "[grid](" in line]
    assert len(launch) == 1 and "x0, x1," in launch[0]
    # a number in a row kernel's epilogue (softmax, then * s and - s, one kernel)
    row_task = Task.from_source(SCALAR_ARG.replace("torch.relu(A * s) + s", "torch.softmax(A, -1) * s - s"))
    row_src = CompilerPolicy().compile(row_task)
    assert len([line for line in row_src.splitlines() if "[grid](" in line]) == 1
    verdicts = evaluator.evaluate_batch([(task, src), (row_task, row_src)], "interpret", "strict", "local", seed=0)
    assert [v.status for v in verdicts] == ["ok", "ok"], [v.error for v in verdicts]


CONSTANTS = '''
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        two = torch.tensor(2.0, device=x.device, dtype=x.dtype)
        y = x * two + torch.ones(1, x.shape[1], 1, device=x.device)
        y = torch.clamp(y, min=torch.tensor(-1.0)) - torch.full_like(y, 0.5)
        y = y.to(x.dtype).to(x.device) / x.new_full((1,), 4.0)
        return torch.max(torch.min(y, torch.tensor(3, device=x.device)), torch.tensor(-2.0))


def get_inputs():
    return [torch.randn(2, 6, 7)]


def get_init_inputs():
    return []
'''


def test_constants_built_in_forward_fold_into_scalar_ops(evaluator):
    g = graph_from_source(CONSTANTS)
    assert [(n.op, n.params) for n in g.nodes] == [
        ("mul_scalar", {"c": 2.0}), ("add_scalar", {"c": 1.0}), ("clamp", {"lo": -1.0, "hi": None}),
        ("add_scalar", {"c": -0.5}), ("div_scalar", {"c": 4.0}), ("clamp", {"lo": None, "hi": 3.0}),
        ("clamp", {"lo": -2.0, "hi": None})]   # torch.min(y, <int 3>) is a clamp, not a reduction over dim 3
    task = Task.from_source(CONSTANTS)
    (verdict,) = evaluator.evaluate_batch([(task, CompilerPolicy().compile(task))], "interpret", "strict", "local",
                                          seed=0)
    assert verdict.status == "ok", verdict.error


@pytest.mark.parametrize("body,message", [
    # a constant of several values: no catalog op takes a constant tensor
    ("return x + torch.arange(x.shape[-1], device=x.device)", r"constant tensor of shape \(7,\).*no catalog op"),
    # one value, but the constant sets the result's shape (broadcasts x): no number can stand for it
    ("return x + torch.zeros(3, 2, 6, 7)", r"one value 0\.0, used where no number"),
    ("return x.to(torch.float16)", "dtype conversion"),
])
def test_constants_and_conversions_without_a_catalog_op_are_named(body, message):
    src = CONSTANTS.replace(CONSTANTS[CONSTANTS.index("two = "):CONSTANTS.index("\n\n\ndef get_inputs")], body)
    with pytest.raises(TraceError, match=message):
        graph_from_source(src)


def test_a_reference_that_fails_on_its_own_shapes_is_reported_as_such():
    bad = READS_VALUES.replace("torch.randn(4, 8)", "torch.randn(4, 9)")
    with pytest.raises(TraceError, match=r"running the traced graph failed: fc .*mat1 and mat2|running the traced "
                                         r"graph failed: fc .*reduction dim"):
        graph_from_source(bad)


def test_tracing_from_many_threads_gives_the_serial_graphs():
    """torch.fx patches globals while it traces; the tracer's lock keeps concurrent traces apart
    (without it 4 of 8 parallel compilations failed with "CURRENT_PATCHER is None")."""
    sources = [FULL_SIZE, READS_VALUES, SCALAR_ARG, CONSTANTS] * 6
    want = [graph_from_source(s) for s in sources[:4]]
    got: list = [None] * len(sources)
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(k: int) -> None:
        try:
            start.wait()
            for i in range(k, len(sources), 8):
                got[i] = graph_from_source(sources[i])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert got == [want[i % 4] for i in range(len(sources))]


RNN_AND_MASK = '''
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(16, 32, num_layers=4, batch_first=True)
        self.register_buffer("mask", torch.tril(torch.ones(4096, 4096)))

    def forward(self, x, h0):
        out, h = self.rnn(x, h0)
        t = x.shape[1]
        return h, x.masked_fill(self.mask[:t, :16] == 0, 0.0)


def get_inputs():
    return [torch.randn(8, 2048, 16), torch.randn(4, 8, 32)]


def get_init_inputs():
    return []
'''


def test_recurrent_modules_are_not_run_and_buffer_masks_trace():
    """A GRU maps to its catalog op without being run (its meta kernel would still unroll 2048 steps
    in Python: seconds to minutes; its result shapes are computed). A mask computed from a buffer
    traces (the buffer is a get_attr, read from the reference's state like a weight)."""
    graph_from_source(SCALAR_ARG)   # imports torch's meta kernels: not timed
    t0 = time.perf_counter()
    graph = graph_from_source(RNN_AND_MASK)
    assert time.perf_counter() - t0 < 5
    assert "gru" in graph.ops and "masked_fill_cmp" in graph.ops, graph.ops
