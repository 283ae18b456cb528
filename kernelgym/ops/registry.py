"""The catalog's table, `CATALOG` (op name -> `OpSpec`, in registration order: the order the
sampler draws by), and the helpers every op family registers with."""

from __future__ import annotations

from kernelgym.ops.spec import OpSpec, numel

CATALOG: dict[str, OpSpec] = {}


def register(spec: OpSpec) -> OpSpec:
    if spec.name in CATALOG:
        raise ValueError(f"duplicate op {spec.name!r}")
    CATALOG[spec.name] = spec
    return spec


def per_out(k: int):
    """FLOP estimate of k operations per output element."""
    return lambda ins, out, p: k * numel(out)
