"""The compiler policy: a task's graph -> a KernelBench-format action module of fused Triton kernels.

``CompilerPolicy().compile(task)`` reads `Task.graph` (or, for a hand-written task without one,
traces the reference with torch.fx: `graph_from_source`), splits the graph into fusion groups
(`default_partition`: elementwise chains into their producer or consumer, prologues and
epilogues into reductions, softmax / norm rows, scans, matmuls and convolutions) and writes one
``@triton.jit`` kernel per group plus a `ModelNew` with the reference's constructor signature and
state-dict names. `candidate_partitions` lists alternative valid fusions and `compile(...,
partition=, config=)` builds any of them with any launch configuration, for the search policy
(`CompilerPolicy` implements `policies.base.Compiler`, the protocol the search drives).

Modules: `ir` (op kinds, programs, partitions), `codegen` (the pointwise value generator, over
`coords`, `formulas`, `views`, `pools`), `kernels` (the kernel templates: `pointwise`, `rows`,
`matmul`, `einsum`, `attention`, `conv`, ...), `module` (the action module), `shared_memory`
(tl.dot launches fitted to the GPU's shared memory), `trace` (fx tracing).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kernelgym.evaluation.protocol import MODES
from kernelgym.ops import get_op
from kernelgym.runner import task_phase
from kernelgym.task import Task
from policies.base import Attempt

# The tracer handlers of the recurrent layers (trace_recurrent), the level-3 modules (trace_nn) and
# the reduction / scan / loss family (trace_reduce) register into trace's tables on import; the
# package imports them (trace itself does not, so the modules form no cycle), and importing any
# policies.compiler module runs this first.
from policies.compiler import trace_nn as _trace_nn  # noqa: E402,F401,I001
from policies.compiler import trace_recurrent as _trace_recurrent  # noqa: E402,F401,I001
from policies.compiler import trace_reduce as _trace_reduce  # noqa: E402,F401,I001
from policies.compiler.composite import expand as expand_composites
from policies.compiler.dot import CONV_DOT_PRECISION
from policies.compiler.extern import check_extern, default_extern, extern_anchors, extern_choices
from policies.compiler.ir import (
    SUPPORTED,
    Analysis,
    CompileError,
    PartitionError,
    Program,
    candidate_partitions,
    default_partition,
    kind,
    numel,
    order_groups,
    partition_problem,
    program_from_graph,
)
from policies.compiler.module import build_kernels, check_config, render_module
from policies.compiler.trace import TraceError, graph_from_source, program_from_source
from policies.smem import SMEM_BUDGET

# Catalog ops the compiler writes in torch (lenient mode only): none left; kept as the switch for
# ops added to the catalog before their lowering exists.
TORCH_FALLBACK: frozenset[str] = frozenset()

# Launch-config variants `propose(n > 1)` tries after the alternative partitions.
CONFIG_VARIANTS: tuple[dict[str, Any], ...] = (
    {"dot_precision": "ieee"},
    {"num_warps": 8},
    {"num_warps": 2},
    {"BLOCK": 256, "BLOCK_R": 256},
    {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 16},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "num_warps": 8},
    {"num_stages": 2},
    {"num_stages": 4},
)


class CompilerPolicy:
    """Policy that compiles a task's graph to fused Triton kernels (no model, deterministic).

    mode: ``"strict"`` (everything in Triton; raises `CompileError` for an op without a Triton
    lowering) or ``"lenient"`` (such ops run in torch, the rest in Triton). `torch_ops` adds ops
    to compute in torch (lenient only). `config` is the default launch config (see `compile`).
    extern: which convolutions / products run as the vendor call with the ops around them fused
    into Triton (lenient only; `policies.compiler.extern`): ``"auto"`` (lenient: every
    convolution, `default_extern`; strict: none), ``"none"``, ``"all"`` or node indices.
    smem_budget: the shared memory (bytes) a tl.dot kernel's launch may need by its estimate
    (`policies.smem`); a launch over it gets fewer stages, then smaller tiles (default
    `SMEM_BUDGET`, safe on H100/H200; None: no check).
    """

    name = "compiler"

    def __init__(self, mode: str = "strict", config: Mapping[str, Any] | None = None,
                 torch_ops: Iterable[str] = (), extern: str | Iterable[int] = "auto",
                 smem_budget: int | None = SMEM_BUDGET):
        if mode not in MODES:
            raise ValueError(f"mode must be 'strict' or 'lenient', got {mode!r}")
        if isinstance(extern, str) and extern not in ("auto", "none", "all"):
            raise ValueError(f"extern must be 'auto', 'none', 'all' or node indices, got {extern!r}")
        if not isinstance(extern, str):
            extern = tuple(extern)
        if mode == "strict" and (extern == "all" or not isinstance(extern, str) and extern):
            raise ValueError("extern anchors need mode='lenient' (strict mode computes everything in Triton)")
        if smem_budget is not None and (isinstance(smem_budget, bool) or not isinstance(smem_budget, int)
                                        or smem_budget <= 0):
            raise ValueError(f"smem_budget must be a positive number of bytes or None, got {smem_budget!r}")
        self.smem_budget = smem_budget
        self.extern: str | tuple[int, ...] = extern
        self.mode = mode
        self.config = check_config(config)
        self.torch_ops = frozenset(TORCH_FALLBACK) | frozenset(torch_ops)
        if self.torch_ops and mode == "strict" and frozenset(torch_ops):
            raise ValueError("torch_ops needs mode='lenient' (strict mode computes everything in Triton)")
        self._programs: dict[str, Program] = {}

    # -- programs --------------------------------------------------------------------------------
    def program(self, task: Task | str) -> Program:
        """The task's graph plus state and constructor info (traced when the task has no graph)."""
        task = _as_task(task)
        key = task.hash
        if key not in self._programs:
            if task.graph is not None:
                prog = program_from_graph(task.graph, str(task.meta.get("dtype", "float32")), task.name or task.id)
            else:
                with task_phase("tracing"):
                    prog = program_from_source(task.source)
                prog.name = task.name or task.id
            self._programs[key] = expand_composites(prog)
        return self._programs[key]

    def unsupported(self, task: Task | str) -> list[str]:
        """Ops of the task the compiler would compute in torch (lenient fallback), sorted."""
        prog = self.program(task)
        return sorted({n.op for n in prog.graph.nodes if n.op not in SUPPORTED or n.op in self.torch_ops})

    # -- compilation -----------------------------------------------------------------------------
    def extern_nodes(self, task: Task | str, extern: str | Iterable[int] | None = None) -> frozenset[int]:
        """The extern anchors (node indices) `compile` uses: `extern` (None: the policy's)
        resolved and checked; raises `CompileError` for a bad set or extern in strict mode."""
        prog = self.program(task)
        ext = self.extern if extern is None else extern
        if isinstance(ext, str):
            if ext not in ("auto", "none", "all"):
                raise CompileError(f"extern must be 'auto', 'none', 'all' or node indices, got {ext!r}")
            if ext == "none" or self.mode == "strict" and ext == "auto":
                return frozenset()
            ext = default_extern(prog) if ext == "auto" else extern_anchors(prog)
        out = check_extern(prog, ext)   # with the transposes the products read as views
        if out and self.mode == "strict":
            raise CompileError("strict mode: extern anchors (vendor calls) need mode='lenient'")
        return out

    def extern_choices(self, task: Task | str, limit: int = 6) -> list[list[int]]:
        """Extern-anchor sets worth judging, the policy's own first (`extern_choices`; lenient
        only, [] in strict mode or for a task with no convolution or product to leave extern)."""
        if self.mode == "strict":
            return []
        own = self.extern_nodes(task)
        rest = [c for c in extern_choices(self.program(task), limit) if c != own]
        out = [sorted(c) for c in [own, *rest][:max(limit, 1)]]
        return out if len(out) > 1 or out[0] else []

    def compile(self, task: Task | str, partition: Sequence[Iterable[int]] | None = None,
                config: Mapping[str, Any] | None = None, extern: str | Iterable[int] | None = None) -> str:
        """The action module for `task`.

        partition: groups of node indices, one kernel per group (None: `default_partition`);
        raises `PartitionError` when a group cannot be one kernel. config: launch parameters
        applied to every kernel that has them (``BLOCK`` for pointwise kernels, ``BLOCK_M`` /
        ``BLOCK_R`` for row kernels, ``BLOCK_M`` / ``BLOCK_N`` / ``BLOCK_K`` for matmuls and
        convolutions, ``num_warps``, ``num_stages``), with per-kernel overrides under
        ``config["kernels"][index or name]``; merged over the policy's default config.
        extern: the extern anchors (see the class; None: the policy's), each alone in its group.
        """
        prog = self.program(task)
        missing = self.unsupported(task)
        unknown = sorted(set(missing) - set(self.torch_ops))
        if unknown:
            raise CompileError(f"no lowering for op(s) {', '.join(unknown)}")
        if missing and self.mode == "strict":
            raise CompileError(f"strict mode: op(s) {', '.join(missing)} have no Triton lowering yet "
                               "(use mode='lenient' to compute them in torch)")
        cfg = merge_configs(self.config, check_config(config))
        ext = self.extern_nodes(task, extern)
        with task_phase("compiling"):
            groups, stored = self._groups(prog, partition, ext)
            return render_module(prog, groups, stored, cfg, self.mode, self.torch_ops, prog.name, ext,
                                 self.smem_budget)

    def _groups(self, prog: Program, partition: Sequence[Iterable[int]] | None,
                extern: frozenset[int] = frozenset()) -> tuple[list[list[int]], list[list[int]]]:
        if partition is None:
            partition = default_partition(prog.graph, torch_ops=self.torch_ops, extern=extern)
        groups = order_groups(prog.graph, partition, torch_ops=self.torch_ops, extern=extern)
        an = Analysis(prog.graph, self.torch_ops, extern)
        return groups, [sorted(an.stored(set(g))) for g in groups]

    def kernel_costs(self, task: Task | str, partition: Sequence[Iterable[int]] | None = None,
                     extern: str | Iterable[int] | None = None) -> dict[str, float]:
        """A rough cost (us on an H100-class GPU) of each kernel of ``compile(task, partition)``:
        the bytes its group reads and writes at 3 TB/s plus its products' 2*m*n*k flops at 50
        TFLOP/s. `SearchPolicy` spends launch moves on the costliest kernels first: on an H200 a
        static guess (`policies.launch.kernel_weights`) put a 3 us convolution before a 34 us GEMV."""
        prog = self.program(task)
        ext = self.extern_nodes(task, extern)
        groups, stored = self._groups(prog, partition, ext)
        esize = 2 if prog.dtype in ("float16", "bfloat16") else 4
        out: dict[str, float] = {}
        for k in build_kernels(prog, groups, stored, self.torch_ops, ext):
            if isinstance(k, int):   # an op left to torch: not a kernel
                continue
            shapes: dict[Any, tuple[int, ...]] = {}   # what the kernel reads, by ref or state key
            flops = 0
            for j in k.nodes:
                node = prog.graph.nodes[j]
                shapes |= {tuple(a): prog.shape(a) for a in node.args if not (a[0] == "node" and a[1] in k.nodes)}
                weights = prog.weights.get(j, {})
                shapes |= {key: tuple(prog.state_by_key[key].shape) for key in weights.values()}
                if node.op in ("einsum", "sdpa"):  # products of two operands (sdpa: two of them)
                    spec = get_op(node.op)
                    flops += spec.flops([prog.shape(a) for a in node.args], tuple(node.shape), node.params)
                elif kind(node.op) in ("matmul", "conv"):
                    # the reduction length: a weight's elements per output channel, else a's last dim
                    w = shapes.get(weights.get("weight"))
                    red = numel(w) // max(1, w[0]) if w else prog.shape(node.args[-2])[-1]
                    flops += 2 * numel(node.shape) * red
            written = sum(numel(prog.graph.nodes[j].shape) for j in k.stored)
            out[k.name] = esize * (sum(map(numel, shapes.values())) + written) / 3e6 + flops / 5e7
        return out

    def candidate_partitions(self, task: Task | str, limit: int = 8,
                             extern: str | Iterable[int] | None = None) -> list[list[list[int]]]:
        """Up to `limit` valid fusion partitions of the task's program (`ir.candidate_partitions`),
        the one ``compile(task, extern=extern)`` uses first; extern as in `compile`."""
        prog = self.program(task)
        ext = self.extern_nodes(task, extern)
        return candidate_partitions(prog.graph, limit=limit, torch_ops=self.torch_ops, extern=ext)

    def variants(self, task: Task | str, limit: int = 8) -> list[tuple[list[list[int]], dict[str, Any]]]:
        """(partition, config) pairs `propose` draws from: the default first, then alternative
        partitions, then launch-config variants of the default partition (all with the policy's
        extern anchors; `propose` adds the other `extern_choices`)."""
        parts = self.candidate_partitions(task, limit=max(limit, 1))
        out: list[tuple[list[list[int]], dict[str, Any]]] = [(p, {}) for p in parts]
        out += [(parts[0], dict(c)) for c in CONFIG_VARIANTS]
        return out

    def seed_configs(self, task: Task | str) -> list[dict[str, Any]]:
        """Configs besides the default that a search should try once each (`SearchPolicy` seeds),
        for fp32 ``tl.dot`` kernels (the evaluator decides what is correct and faster): 3xTF32 in
        the convolution kernels first (they default to plain TF32, as cuDNN runs the reference's:
        `policies.compiler.dot.CONV_DOT_PRECISION`; 3xTF32 is the accurate alternative should a
        long reduction miss the tolerance), then IEEE products everywhere (CUDA cores, exact fp32
        products) beside the default 3xTF32 products."""
        if "input_precision=" not in self.compile(task):
            return []
        convs = self._dot_kernels(task, "conv", CONV_DOT_PRECISION)
        return ([{"kernels": {name: {"dot_precision": "tf32x3"} for name in convs}}] if convs else []) + \
            [{"dot_precision": "ieee"}]

    def _dot_kernels(self, task: Task | str, kind_: str, precision: str) -> list[str]:
        """Names of the default compilation's `kind_` kernels with fp32 products in `precision`."""
        prog = self.program(task)
        ext = self.extern_nodes(task, None)
        groups, stored = self._groups(prog, None, ext)
        return [k.name for k in build_kernels(prog, groups, stored, self.torch_ops, ext)
                if not isinstance(k, int) and k.kind == kind_
                and any(f'input_precision="{precision}"' in line for line in k.body)]

    def propose(self, task: Task, n: int = 1, history: Sequence[Attempt] = ()) -> list[str]:
        """Up to `n` distinct candidates: the default compilation, then alternative partitions and
        launch configs. Sources already in `history` are skipped (the compiler cannot learn from
        verdicts, but it need not repeat itself)."""
        if n < 1:
            return []
        seen = {a.source for a in history}
        out: list[str] = []
        todo: list[tuple[Any, dict[str, Any], Any]] = [(p, c, None) for p, c in self.variants(task, limit=max(8, n))]
        if n > 1:   # the other extern-anchor sets, each with its default partition, after the partitions
            others = [(None, {}, ext) for ext in self.extern_choices(task)[1:]]
            todo = [t for t in todo if not t[1]] + others + [t for t in todo if t[1]]
        for partition, config, ext in todo:
            src = self.compile(task, partition=partition, config=config, extern=ext)
            if src not in seen:
                seen.add(src)
                out.append(src)
            if len(out) >= n:
                break
        return out


def merge_configs(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` on top of `base` (both checked configs); per-kernel overrides merge key by key, so a
    call's ``{"kernels": {"0": {"BLOCK_N": 32}}}`` keeps the policy's ``BLOCK_M`` for kernel 0."""
    out = {**base, **over}
    if "kernels" in base and "kernels" in over:
        kernels = {k: dict(v) for k, v in base["kernels"].items()}
        for k, v in over["kernels"].items():
            kernels[k] = {**kernels.get(k, {}), **v}
        out["kernels"] = kernels
    return out


def _as_task(task: Task | str) -> Task:
    if isinstance(task, Task):
        return task
    if isinstance(task, str):
        return Task.from_source(task)
    raise TypeError(f"expected a Task or KernelBench-format source, got {type(task).__name__}")


__all__ = [
    "TORCH_FALLBACK",
    "CompileError",
    "CompilerPolicy",
    "PartitionError",
    "Program",
    "TraceError",
    "candidate_partitions",
    "default_partition",
    "graph_from_source",
    "partition_problem",
]
