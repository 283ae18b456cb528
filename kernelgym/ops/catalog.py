"""The operator catalog: one `OpSpec` per PyTorch operator, in `CATALOG`. Adding an op is one entry in
its family's module under `kernelgym/ops/families/`.

Conventions for entries: `call` receives argument expressions and the parameter dict `p`, which
also holds ``p["_w"]`` (weight name -> ``self.<attr>`` expression), ``p["_in"]`` (input shapes)
and ``p["_out"]`` (output shape) at emission time. Reduction-like ``dim`` parameters count from
the right (1 = last dim), matching the right-aligned symbolic shapes of `spec.SymTensor`.
"""

from __future__ import annotations

# The families register their ops as they are imported: this order is the catalog's op order, which
# the sampler draws by (tests/test_sampler.py's golden hashes pin it). Append new families last.
# isort: off
from kernelgym.ops.families import (  # noqa: F401
    elementwise,
    reductions,
    norms,
    linalg,
    conv,
    pooling,
    scans,
    shape,
    gather,
    attention,
    views,
    losses,
    recurrent,
)
# isort: on
from kernelgym.ops.families.attention import einsum_operands
from kernelgym.ops.families.conv import conv_dims, conv_groups
from kernelgym.ops.families.pooling import adaptive_windows, per_dim, pool_out_size, pool_window
from kernelgym.ops.families.recurrent import RECURRENT_GATES, recurrent_weight_names
from kernelgym.ops.families.reductions import reduced_slots
from kernelgym.ops.families.shape import MASK_CMPS
from kernelgym.ops.registry import CATALOG, register

__all__ = ["CATALOG", "MASK_CMPS", "RECURRENT_GATES", "adaptive_windows", "conv_dims", "conv_groups",
           "einsum_operands", "per_dim", "pool_out_size", "pool_window", "recurrent_weight_names",
           "reduced_slots", "register"]
