"""Assemble the action module: helpers, one kernel per group, and `ModelNew` (the reference's
constructor signature and state-dict names, output allocation and the launches in order)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from kernelgym.ops import get_op
from policies.compiler.codegen import state_expr
from policies.compiler.extern import extern_line, late_bias
from policies.compiler.formulas import HELPER_ORDER, HELPERS
from policies.compiler.ir import ELEMENT_BYTES, CompileError, Program, StateEntry, kind, numel
from policies.compiler.kernels import (
    Kernel,
    conv_kernel,
    matmul_kernel,
    pointwise_kernel,
    row_kernel,
)
from policies.compiler.layout import FORMATS as CL_FORMATS
from policies.compiler.layout import channels_last
from policies.compiler.recurrent import recurrent_kernel
from policies.compiler.shared_memory import fit_shared_memory
from policies.smem import SMEM_BUDGET

BLOCK_KEYS = ("BLOCK", "BLOCK_M", "BLOCK_N", "BLOCK_K", "BLOCK_R", "SPLIT_K", "SPLIT_R")
OPTION_KEYS = ("num_warps", "num_stages")
# fp32 tl.dot precisions: 3xTF32 (the products' default: tensor cores at about fp32 accuracy),
# IEEE (CUDA-core products) and plain TF32 (the convolutions' default), which missed the fp32
# tolerance on products at bench sizes (their references run in full fp32) but matches a
# convolution's reference: PyTorch runs fp32 convolutions on cuDNN in TF32 by default
# (`policies.compiler.dot.CONV_DOT_PRECISION`).
DOT_PRECISIONS = ("tf32x3", "ieee", "tf32")
_PRECISION = re.compile(r'input_precision="[a-z0-9]+"')
_TORCH_DTYPES = {"float32": "torch.float32", "float16": "torch.float16", "bfloat16": "torch.bfloat16"}


# config keys that take a bool, with what each turns on (`matmul.matmul_kernel`)
SWITCH_KEYS = {"tma": "TMA tensor-descriptor loads of product operands",
               "warp_specialize": "a warp-specialised k loop in product kernels whose operands are TMA loads"}


def check_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate a launch config: block sizes (powers of two), num_warps, num_stages,
    ``dot_precision`` (fp32 ``tl.dot``: "tf32x3", "ieee" or "tf32"), the `SWITCH_KEYS` ``tma`` (product
    kernels load their eligible operands through TMA tensor descriptors, `matmul.tma_eligible`) and
    ``warp_specialize`` (a product kernel whose operands are both descriptor loads warp-specialises
    its k loop), and optional per-kernel overrides under ``"kernels"`` (kernel index or name -> the
    same keys)."""
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise CompileError(f"config must be a mapping, got {type(config).__name__}")
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key == "kernels":
            if not isinstance(value, Mapping):
                raise CompileError("config['kernels'] must map a kernel index or name to a config")
            out["kernels"] = {str(k): check_config(v) for k, v in value.items()}
            if any("kernels" in v for v in out["kernels"].values()):
                raise CompileError("per-kernel configs cannot nest 'kernels'")
            continue
        if key == "dot_precision":
            if value not in DOT_PRECISIONS:
                raise CompileError(f"config['dot_precision'] must be one of {', '.join(DOT_PRECISIONS)}, "
                                   f"got {value!r}")
            out[key] = value
            continue
        if key in SWITCH_KEYS:
            if not isinstance(value, bool):
                raise CompileError(f"config[{key!r}] must be true or false ({SWITCH_KEYS[key]}), got {value!r}")
            out[key] = value
            continue
        if key not in BLOCK_KEYS and key not in OPTION_KEYS:
            raise CompileError(f"unknown config key {key!r}; expected {', '.join(BLOCK_KEYS + OPTION_KEYS)},"
                               " dot_precision, tma, warp_specialize or 'kernels'")
        if not isinstance(value, int) or isinstance(value, bool):
            raise CompileError(f"config[{key!r}] must be an int, got {value!r}")
        if key in BLOCK_KEYS and (value < 1 or value & (value - 1) or value > 1 << 16):
            raise CompileError(f"config[{key!r}] = {value} is not a power of two in [1, 65536]")
        if key == "num_warps" and value not in (1, 2, 4, 8, 16, 32):
            raise CompileError(f"num_warps must be a power of two <= 32, got {value}")
        if key == "num_stages" and not 1 <= value <= 8:
            raise CompileError(f"num_stages must be in 1..8, got {value}")
        out[key] = value
    return out


def _kernel_config(config: Mapping[str, Any], i: int, name: str) -> dict[str, Any]:
    """What `config` sets for kernel `i` (counting kernels only) named `name`: the top-level keys,
    then its per-kernel entries by index and by name."""
    per = config.get("kernels", {})
    over = {key: v for key, v in config.items() if key != "kernels"}
    over.update(per.get(str(i), {}))
    over.update(per.get(name, {}))
    return over


def _apply_config(kernels: list[Kernel], config: dict[str, Any]) -> None:
    for i, k in enumerate(kernels):
        for key, v in _kernel_config(config, i, k.name).items():
            if key in k.blocks:
                if k.kind in ("matmul", "conv") and key != "SPLIT_K" and v < 16:
                    raise CompileError(f"{k.name}: {key}={v}; tl.dot needs blocks of at least 16")
                k.blocks[key] = v
            elif key in OPTION_KEYS:
                k.options[key] = v
            elif key == "dot_precision":   # fp32 dots only: half-precision ones carry no precision
                k.body = [_PRECISION.sub(f'input_precision="{v}"', line) for line in k.body]


def _describe(prog: Program, nodes: Sequence[int]) -> str:
    return " -> ".join(f"{prog.graph.nodes[i].op} (node {i})" for i in nodes)


def _kernel_name(prog: Program, gi: int, nodes: Sequence[int]) -> str:
    ops = [prog.graph.nodes[i].op for i in nodes]
    short = "_".join(ops[:3]) + ("_etc" if len(ops) > 3 else "")
    return f"k{gi}_{short}"


def build_kernels(prog: Program, groups: list[list[int]], stored: list[list[int]],
                  torch_ops: frozenset[str], extern: frozenset[int] = frozenset(),
                  config: Mapping[str, Any] | None = None) -> list[Kernel | int]:
    """A Kernel per group, or the node index of a group left to torch (lenient fallback, or an
    extern anchor: a vendor call). `config` (checked) decides what a row kernel's code is: a
    softmax or norm whose row fits its BLOCK_R is written without a chunk loop (`rows.row_kernel`)."""
    out: list[Kernel | int] = []
    for gi, (nodes, st) in enumerate(zip(groups, stored)):
        ops = [prog.graph.nodes[i].op for i in nodes]
        if any(op in torch_ops for op in ops) or any(i in extern for i in nodes):
            if len(nodes) != 1:
                raise CompileError(f"group {gi}: an op computed in torch must be alone in its group")
            out.append(nodes[0])
            continue
        anchors = [i for i in nodes if kind(prog.graph.nodes[i].op) not in ("pointwise",)]
        name = _kernel_name(prog, gi, nodes)
        if not anchors:
            k = pointwise_kernel(prog, nodes, st, name)
        else:
            a = anchors[0]
            ka = kind(prog.graph.nodes[a].op)
            builder = {"row": row_kernel, "matmul": matmul_kernel, "conv": conv_kernel,
                       "recurrent": recurrent_kernel}.get(ka)
            if builder is None:
                raise CompileError(f"node {a}: no Triton lowering for {prog.graph.nodes[a].op!r}")
            # what the config sets for this kernel that shapes its body (applied to the rest later)
            kc = _kernel_config(config or {}, sum(isinstance(x, Kernel) for x in out), name)
            if ka == "row":
                k = row_kernel(prog, nodes, st, a, name, kc.get("BLOCK_R"))
            elif ka == "matmul":
                k = matmul_kernel(prog, nodes, st, a, name, tma=bool(kc.get("tma", False)),
                                  host_nodes=_torch_made(out, extern),
                                  warp_specialize=bool(kc.get("warp_specialize", False)))
            else:
                k = builder(prog, nodes, st, a, name)
        k.comment = _describe(prog, nodes)
        k.comment += k.comment_note
        out.append(k)
    return out


def _torch_made(items: Sequence[Kernel | int], extern: frozenset[int]) -> frozenset[int]:
    """Nodes of `items` (the groups built so far) that a lenient fallback computes in torch: such a
    tensor may be a view (an offset, strides) that a TMA descriptor cannot take."""
    return frozenset(j for j in items if isinstance(j, int) and j not in extern)


def _state_lines(prog: Program) -> list[str]:
    lines: list[str] = []
    made: set[str] = set()
    for entry in prog.state:
        lines += _declare(entry, made)
    return lines


def _alloc(shape: Sequence[int], dtype: str | None) -> str:
    dims = ", ".join(map(str, shape)) if shape else ""
    if dtype is None:
        return f"torch.empty({dims or '()'})"
    return f"torch.empty(({dims}{',' if len(shape) == 1 else ''}), dtype=torch.{dtype})"


def _declare(entry: StateEntry, made: set[str]) -> list[str]:
    """Declare one state tensor under its exact state-dict key (nested modules for dotted keys)."""
    parts = entry.key.split(".")
    lines: list[str] = []
    for depth in range(1, len(parts)):
        path = ".".join(parts[:depth])
        if path not in made:
            made.add(path)
            parent = "self" if depth == 1 else f'self.get_submodule("{".".join(parts[:depth - 1])}")'
            lines.append(f'{parent}.add_module("{parts[depth - 1]}", nn.Module())')
    owner = "self" if len(parts) == 1 else f'self.get_submodule("{".".join(parts[:-1])}")'
    leaf = parts[-1]
    value = _alloc(entry.shape, entry.dtype)
    if entry.buffer:
        lines.append(f'{owner}.register_buffer("{leaf}", {value})')
    elif len(parts) == 1 and leaf.isidentifier():
        lines.append(f"self.{leaf} = nn.Parameter({value})")
    else:
        lines.append(f'{owner}.register_parameter("{leaf}", nn.Parameter({value}))')
    return lines


def _fallback_line(prog: Program, j: int) -> str:
    node = prog.graph.nodes[j]
    spec = get_op(node.op)
    args = [f"x{k}" if kind_ == "input" else f"v{k}" for kind_, k in node.args]
    p = {**node.params, "_in": prog.graph.in_shapes(j), "_out": tuple(node.shape), "_fresh": node.fresh,
         "_w": {role: state_expr(prog, key) for role, key in prog.weights.get(j, {}).items()}}
    return f"v{j} = {spec.call(args, p)}  # {node.op} in torch (lenient fallback)"


def render_module(prog: Program, groups: list[list[int]], stored: list[list[int]], config: dict[str, Any],
                  mode: str, torch_ops: frozenset[str], title: str = "",
                  extern: frozenset[int] = frozenset(), smem_budget: int | None = SMEM_BUDGET) -> str:
    """The whole action module for `groups` (already validated and in launch order); nodes in
    `extern` are vendor calls (`policies.compiler.extern`). tl.dot kernels whose shared memory
    estimate exceeds `smem_budget` bytes get fewer stages, then smaller tiles (None: no check)."""
    late = late_bias(prog, extern)
    cl = channels_last(prog, groups, stored, extern)
    if late or cl:
        prog = dataclasses.replace(prog, late_bias=late, channels_last=cl)
    items = build_kernels(prog, groups, stored, torch_ops, extern, config)
    anchors = sorted(j for j in extern if kind(prog.graph.nodes[j].op) in ("conv", "matmul"))
    kernels = [k for k in items if isinstance(k, Kernel)]
    _apply_config(kernels, config)
    if smem_budget is not None:
        fit_shared_memory(kernels, ELEMENT_BYTES[prog.dtype], smem_budget)
    if not kernels:
        raise CompileError("every op would run in torch; no Triton kernel to write")
    helpers = set().union(*(k.helpers for k in kernels))
    g = prog.graph
    inputs = [f"x{k}" for k in range(len(g.inputs))]
    chain = " -> ".join(g.ops)
    head = [
        f'"""{title or "Task"}: {chain}, as {sum(1 + (k.pre is not None) for k in kernels)} Triton kernel(s)'
        + (f" around {len(anchors)} vendor call(s) (extern anchors {anchors})." if anchors else "."),
        "",
        "Generated by the kernelgym compiler policy (mode {mode}). Fusion partition (node indices per kernel):",
        f"{[list(x) for x in groups]}.",
        '"""',
        "import torch",
        "import torch.nn as nn",
        "import triton",
        "import triton.language as tl",
        "",
        f"DTYPE = {_TORCH_DTYPES[prog.dtype]}",
        "",
    ]
    head[2] = head[2].format(mode=mode)
    if any(k.descriptors for k in kernels):
        head.insert(head.index("import triton.language as tl") + 1,
                    "from triton.tools.tensor_descriptor import TensorDescriptor")
    if any(isinstance(item, int) for item in items):  # fallback lines call torch.nn.functional
        head.insert(head.index("import torch.nn as nn") + 1, "import torch.nn.functional as F")
    body: list[str] = []
    for h in HELPER_ORDER:
        if h in helpers:
            body += ["", "@triton.jit", *HELPERS[h].rstrip("\n").split("\n"), ""]
    for k in kernels:
        body += ["", k.source().rstrip("\n"), ""]
    init_sig = f"self, {prog.init_params}" if prog.init_params.strip() else "self"
    cls = ["", "class ModelNew(nn.Module):", f"    def __init__({init_sig}):", "        super().__init__()"]
    cls += [f"        {line}" for line in _state_lines(prog)]
    cls += ["        self.to(DTYPE)", "", f"    def forward(self, {', '.join(inputs)}):"]
    fwd: list[str] = []
    tensors = [k for k, spec in enumerate(g.inputs) if spec.kind != "scalar"]  # numbers have no device
    if not tensors:
        raise CompileError("forward takes no tensor argument (only numbers): no device to compute on")
    dev = f"x{tensors[0]}.device"
    for gi, item in enumerate(items):
        if isinstance(item, int):
            fwd.append(extern_line(prog, item) if item in extern else _fallback_line(prog, item))
            continue
        alloc = "torch.zeros" if item.zero_init else "torch.empty"
        for j in item.stored:
            shape = tuple(g.nodes[j].shape)
            dtype = "torch.int64" if prog.is_index(("node", j)) else "DTYPE"
            fmt = f", memory_format={CL_FORMATS[len(shape)]}" if j in prog.channels_last else ""
            fwd.append(f"v{j} = {alloc}({shape!r}, device={dev}, dtype={dtype}{fmt})")
        fwd += [f"{var} = {alloc.format(dev=dev, **item.blocks)}" for var, alloc in item.scratch.items()]
        fwd += item.launch()
    outs = ", ".join(f"v{o}" for o in g.outputs)
    fwd.append(f"return {outs}")
    cls += [f"        {line}" for line in fwd]
    return "\n".join(head + body + cls) + "\n"


def element_count(prog: Program) -> int:
    return sum(numel(n.shape) for n in prog.graph.nodes)
