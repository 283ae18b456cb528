"""Degeneracy checks: a sampled task must be a real computation on random inputs.

A task is rejected (and redrawn) when, on CPU with random inputs, it raises, returns NaN/Inf
or huge values, an output does not depend on the inputs (constant), is near-constant, some input
does not influence any output, an output aliases an input, or an output shape differs from the
graph's (a catalog shape-rule bug, reported separately so tests can demand zero).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kernelgym.graph import Graph
from kernelgym.task import exec_source

HUGE = {torch.float32: 1e6, torch.float16: 1e4, torch.bfloat16: 1e4}


def _as_tuple(out: object) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)  # type: ignore[arg-type]


def _same(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> bool:
    return all(x.shape == y.shape and torch.allclose(x.double(), y.double(), rtol=1e-5, atol=1e-7) for x, y in zip(a, b))


def _other(x: torch.Tensor, fresh: torch.Tensor, bound: int | None) -> torch.Tensor:
    """A different draw of input x (indices shifted so they surely differ)."""
    if bound is not None:
        return (x + 1) % bound if bound > 1 else x
    return fresh


def _seed(s: int) -> None:
    # The CPU generator alone: torch.manual_seed also seeds every accelerator backend, which costs
    # milliseconds per call on the sampler's hot path; task inputs are drawn on the CPU.
    torch.random.default_generator.manual_seed(s)


def degeneracy(source: str, graph: Graph, seed: int = 0) -> str | None:
    """The reason this task is degenerate, or None if it is fine."""
    module = exec_source(source, "kernelgym_check")
    _seed(seed)
    model = module.Model(*module.get_init_inputs())
    with torch.no_grad():
        try:
            _seed(seed + 1)
            x1 = list(module.get_inputs())
            _seed(seed + 2)
            x2 = list(module.get_inputs())
            out1 = _as_tuple(model(*x1))
            out2 = _as_tuple(model(*x2))
        except Exception as exc:  # noqa: BLE001 - any failure makes the task unusable
            return f"error:{type(exc).__name__}"
        expected = [graph.nodes[o].shape for o in graph.outputs]
        if [tuple(o.shape) for o in out1] != [tuple(s) for s in expected]:
            return "shape_rule_mismatch"
        for o in (*out1, *out2):
            if not torch.isfinite(o).all():
                return "nonfinite"
            if o.numel() and o.abs().max().item() > HUGE.get(o.dtype, 1e6):
                return "huge_values"
        in_storages = {x.untyped_storage().data_ptr() for x in x1}
        if any(o.untyped_storage().data_ptr() in in_storages for o in out1):
            return "output_aliases_input"
        for a, b in zip(out1, out2):
            if _same([a], [b]):
                return "constant_output"
            flat = torch.cat([a.flatten(), b.flatten()]).double()
            if (flat.max() - flat.min()).item() <= 1e-6 * max(1.0, flat.abs().mean().item()):
                return "near_constant_output"
        for k, spec in enumerate(graph.inputs):
            xs = list(x1)
            xs[k] = _other(x1[k], x2[k], spec.bound if spec.kind == "index" else None)
            if _same(_as_tuple(model(*xs)), out1):
                return "input_unused"
    return None
