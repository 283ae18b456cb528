"""Graph -> readable KernelBench-format source (`Model`, `get_inputs`, `get_init_inputs`)."""

from __future__ import annotations

import math
from typing import Any

from kernelgym.graph import Graph
from kernelgym.ops import get_op
from kernelgym.ops.spec import Weight

_DTYPES = {"float32": "torch.float32", "float16": "torch.float16", "bfloat16": "torch.bfloat16"}


def title(ops: tuple[str, ...]) -> str:
    """KernelBench-style name: Conv2d_Relu_Sum."""
    return "_".join(o.replace("_", " ").title().replace(" ", "") for o in ops)


def _weight_init(w: Weight, fan_in: int) -> str:
    shape = ", ".join(map(str, w.shape))
    if w.init == "randn_scaled":  # keeps activations O(1) through matmuls and convs
        return f"torch.randn({shape}) * {1.0 / math.sqrt(max(fan_in, 1)):.6g}"
    if w.init == "rand_pos":
        return f"torch.rand({shape}) + 0.5"
    if w.init in ("ones", "zeros", "randn"):
        return f"torch.{w.init}({shape})"
    raise ValueError(f"unknown weight init {w.init!r}")


def _input_expr(spec: Any) -> str:
    shape = ", ".join(map(str, spec.shape))
    if spec.kind == "index":
        return f"torch.randint(0, {spec.bound}, ({shape},))"
    if spec.range == "positive":
        return f"torch.rand({shape}, dtype=DTYPE) + 0.1"
    if spec.range == "nonneg":
        return f"torch.rand({shape}, dtype=DTYPE)"
    return f"torch.randn({shape}, dtype=DTYPE)"


def emit_source(graph: Graph, *, difficulty: int, seed: int, dtype: str = "float32", sizes: str = "tiny") -> str:
    """The task's Python source. Weights are created in `__init__` (seeded by the evaluator)."""
    if dtype not in _DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; choose from {', '.join(_DTYPES)}")
    init_lines: list[str] = []
    body: list[str] = []
    for i, node in enumerate(graph.nodes):
        spec = get_op(node.op)
        in_shapes = graph.in_shapes(i)
        p: dict[str, Any] = {**node.params, "_in": in_shapes, "_out": node.shape, "_fresh": node.fresh, "_w": {}}
        for w in spec.weights(in_shapes, node.shape, p) if spec.weights else []:
            attr = f"n{i}_{w.name}"
            p["_w"][w.name] = f"self.{attr}"
            fan_in = math.prod(w.shape[1:]) if len(w.shape) > 1 else 1
            if spec.category == "conv" and node.op.startswith("conv_transpose"):
                fan_in = w.shape[0] * math.prod(w.shape[2:])
            expr = _weight_init(w, fan_in)
            if w.buffer:
                init_lines.append(f'self.register_buffer("{attr}", {expr})')
            else:
                init_lines.append(f"self.{attr} = nn.Parameter({expr})")
        args = [f"x{k}" if kind == "input" else f"v{k}" for kind, k in node.args]
        body.append(f"v{i} = {spec.call(args, p)}  # {node.op} -> {tuple(node.shape)}")
    outs = ", ".join(f"v{o}" for o in graph.outputs)
    params = ", ".join(f"x{k}" for k in range(len(graph.inputs)))
    chain = graph.expression()   # the DAG (branches shown), not a chain of the ops in node order
    lines = [
        f'"""{title(graph.ops)}: {chain}.',
        "",
        f"Sampled by kernelgym (difficulty {difficulty}, seed {seed}, sizes {sizes}, dtype {dtype}).",
        f"Ops: {', '.join(graph.ops)}",
        '"""',
        "import torch",
        "import torch.nn as nn",
        "import torch.nn.functional as F",
        "",
        f"DTYPE = {_DTYPES[dtype]}",
        "",
        "",
        "class Model(nn.Module):",
        f'    """{chain}"""',
        "",
        "    def __init__(self):",
        "        super().__init__()",
        *[f"        {line}" for line in init_lines],
        "        self.to(DTYPE)",
        "",
        f"    def forward(self, {params}):",
        *[f"        {line}" for line in body],
        f"        return {outs}",
        "",
        "",
        "def get_inputs():",
        *[f"    x{k} = {_input_expr(x)}" for k, x in enumerate(graph.inputs)],
        f"    return [{params}]",
        "",
        "",
        "def get_init_inputs():",
        "    return []",
        "",
    ]
    return "\n".join(lines)
