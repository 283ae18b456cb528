"""The reference a trace reads and the graph it yields: a KernelBench file's `Model` and
`get_inputs()` loaded on the meta device (`load_reference`), the text of its constructor's
parameters (ModelNew repeats it), `TracedGraph` (a task graph that also carries the reference's
state-dict entries) and `TraceError`, how tracing fails."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

from kernelgym.pyast import parse
from kernelgym.sampler.graph import Graph
from policies.compiler.ir import CompileError, StateEntry


class TraceError(CompileError):
    """The reference cannot be traced, or uses calls that map to no catalog op (listed)."""


@dataclass(frozen=True)
class TracedGraph(Graph):
    """A Graph traced from a KernelBench file, with what ModelNew needs to match the reference:
    every state-dict entry, the constructor's parameter list and the float dtype. Nodes name the
    state tensors they read in ``params["_state"]`` (role -> state-dict key); an argument
    ``("state", k)`` refers to ``state[k]`` (a parameter used directly, e.g. ``x @ self.W``)."""

    state: tuple[StateEntry, ...] = ()
    init_params: str = ""
    dtype: str = "float32"

    def arg_shape(self, ref: tuple[str, int]) -> tuple[int, ...]:
        if ref[0] == "state":
            return tuple(self.state[ref[1]].shape)
        return super().arg_shape(ref)


def load_reference(source: str) -> tuple[Any, list[Any]]:
    """(Model instance in eval mode, get_inputs()) of a source, on the meta device: shapes and
    dtypes only. Raises `TraceError` when the task's code fails."""
    import torch

    from kernelgym.task import exec_source

    try:
        mod = exec_source(source, "kernelgym_traced_reference")
        init_inputs = list(mod.get_init_inputs())
        torch.manual_seed(0)
        try:
            with torch.device("meta"):
                model = mod.Model(*init_inputs)
        except Exception:  # noqa: BLE001
            # A constructor that reads tensor values (``.item()``, ``float(t)``, numpy, a branch on a
            # value) cannot run on meta: build it on the CPU, as the reference does, and move its state
            # to meta (a construction costs what the reference's own costs; tracing still computes nothing).
            torch.manual_seed(0)
            model = mod.Model(*init_inputs).to("meta")
        model = model.eval()
        torch.manual_seed(1)
        try:
            with torch.device("meta"):
                inputs = list(mod.get_inputs())
        except Exception:  # noqa: BLE001 - same fallback for a get_inputs that reads values
            torch.manual_seed(1)
            inputs = list(mod.get_inputs())
    except Exception as exc:  # noqa: BLE001 - any failure of task code is reported, not raised raw
        raise TraceError(f"running the reference failed: {type(exc).__name__}: {exc}") from None
    # numpy-made (from_numpy) or CPU-fallback tensors: to meta too, so nothing below computes
    return model, [t.to("meta") if isinstance(t, torch.Tensor) else t for t in inputs]


def _init_params(source: str) -> str:
    """Text of Model.__init__'s parameters after self (ModelNew repeats it)."""
    tree = parse(source)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Model":
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    args = item.args
                    if args.posonlyargs:
                        args.posonlyargs = args.posonlyargs[1:]
                    elif args.args:
                        args.args = args.args[1:]
                    return ast.unparse(args)
    return ""
