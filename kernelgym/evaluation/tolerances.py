"""The one table of dtype-aware tolerances used to compare candidate and reference outputs.

An element passes when ``|cand - ref| <= atol + rtol * |ref|`` (torch.isclose semantics), with
the tolerance of the reference output's dtype. NaN or Inf in the candidate where the reference is
finite always fails; matching infinities pass; integer and bool outputs must match exactly.

Why these numbers: float32 allows 1e-2 as KernelBench does, because Triton's `tl.dot` uses TF32
by default on NVIDIA GPUs (10-bit mantissa) and a correct kernel must not fail for it. Half types
get the spacing of a few ulps at magnitude 1 (fp16 eps = 9.8e-4, bf16 eps = 7.8e-3) plus room for
a different accumulation order.
"""

from __future__ import annotations

from typing import Any

TOLERANCES: dict[str, dict[str, float]] = {
    "float64": {"atol": 1e-5, "rtol": 1e-5},
    "float32": {"atol": 1e-2, "rtol": 1e-2},
    "float16": {"atol": 1e-2, "rtol": 1e-2},
    "bfloat16": {"atol": 5e-2, "rtol": 5e-2},
    "complex64": {"atol": 1e-2, "rtol": 1e-2},
    "complex128": {"atol": 1e-5, "rtol": 1e-5},
}
EXACT = {"atol": 0.0, "rtol": 0.0}


def tolerance_for(dtype: Any) -> dict[str, float]:
    """atol/rtol for a torch dtype (or its name); exact for integer and bool dtypes."""
    name = str(dtype).removeprefix("torch.")
    return dict(TOLERANCES.get(name, EXACT))


def table() -> dict[str, dict[str, float]]:
    """The full table, as recorded in `Verdict.tolerances`."""
    return {**{k: dict(v) for k, v in TOLERANCES.items()}, "integer/bool": dict(EXACT)}
