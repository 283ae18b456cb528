"""Small generic Triton kernels for env tests: elementwise unary ops over a flattened input
(`kernelgym.examples.unary_candidate`)."""

from __future__ import annotations

from kernelgym.examples import unary_candidate as unary

RELU = unary()
WRONG_RELU = unary("x")  # identity: wrong on every negative input


def relu_variants(task) -> list[str]:
    """Stand-in candidate provider for relu tasks: two correct launch configs, a wrong op, no mask."""
    return [unary(block=32, warps=1), unary("x", block=64), unary(block=128, warps=4), unary("x * 0.0", block=16)]
