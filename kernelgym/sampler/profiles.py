"""Difficulty and size profiles: the bounds the CSP-DAG sampler works within.

Difficulty d is a program of d catalog operators (the DRTriton curriculum): 1 is a single op
(≈ KernelBench level 1), 2–3 are chains (≈ level 2: each op prefers to consume the previous one),
4–5 are compositions with branches (fan-out and multi-input ops consuming earlier nodes), and
6–16 (`MAX_DIFFICULTY`) are longer programs with the same rules and looser caps. Structure
preferences are soft (dropped when they conflict with the ops drawn); the caps below are hard
constraints.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_DIFFICULTY = 16


@dataclass(frozen=True)
class DifficultyProfile:
    difficulty: int
    max_fan_in: int      # graph-node arguments one op may take (fresh inputs not counted)
    max_fan_out: int     # consumers of one node
    max_outputs: int     # sinks returned by forward
    max_inputs: int      # fresh input tensors in total
    max_reductions: int  # reduction / softmax / norm / cumulative ops
    max_matmuls: int     # matmul / conv ops
    chain: bool          # prefer node i to consume node i-1
    branch: bool         # prefer extra edges to earlier nodes (fan-out and joins)


def difficulty_profile(d: int) -> DifficultyProfile:
    """The documented profile for difficulty `d` (1 <= d <= MAX_DIFFICULTY)."""
    if not isinstance(d, int) or not 1 <= d <= MAX_DIFFICULTY:
        raise ValueError(f"difficulty must be an int in 1..{MAX_DIFFICULTY}, got {d!r}")
    if d == 1:
        return DifficultyProfile(1, 0, 0, 1, 3, 1, 1, chain=False, branch=False)
    if d <= 3:
        return DifficultyProfile(d, 2, 2, 2, d + 2, 2, 2, chain=True, branch=False)
    if d <= 5:
        return DifficultyProfile(d, 2, 3, 2, d + 2, 3, 2, chain=True, branch=True)
    return DifficultyProfile(d, 3, 3, 3, d + 3, max(3, d // 2), max(2, d // 3), chain=True, branch=True)


@dataclass(frozen=True)
class SizeProfile:
    """Bounds on every dim, on each tensor (log2 elements) and on each op's FLOPs (log2)."""

    name: str
    lo: int
    hi: int
    max_log: int        # largest tensor, weights included: at most 2**max_log elements
    min_log: int        # the largest tensor of the program has at least 2**min_log elements
    max_log_flops: int  # each op at most ~2**max_log_flops FLOPs


SIZE_PROFILES = {
    # Fits the Triton interpreter on a CPU in well under a second: ~1024 elements a tensor at most,
    # and at least one tensor of 16+ elements so kernels need masks and loops.
    "tiny": SizeProfile("tiny", 1, 16, max_log=10, min_log=4, max_log_flops=16),
    # Fills an H100 so that timing means something: the largest tensor holds 4M..16M elements
    # (16-64 MB in fp32, beyond the 50 MB L2 at the top), ops up to ~1 TFLOP.
    "bench": SizeProfile("bench", 1, 8192, max_log=24, min_log=22, max_log_flops=40),
}


def size_profile(name: str) -> SizeProfile:
    try:
        return SIZE_PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown sizes profile {name!r}; choose from {', '.join(SIZE_PROFILES)}") from None
