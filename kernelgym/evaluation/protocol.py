"""What the parent side of the evaluation (`evaluator`, `pipeline`) and its worker processes
(`worker`, `reference`, `candidate`, `timing`) agree on: backend and mode names, how trial seeds
derive from an evaluation seed, the CUDA sync setting workers read at start, the timing budget's
keys, and one trial's comparison result.

Plain constants and pure functions only: the parent imports this module, so it loads neither torch
nor anything a worker runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# Backends: where an evaluation runs. "auto" resolves to one of the other two (`resolve_backend`).
BACKEND_AUTO = "auto"
BACKEND_CUDA = "cuda"
BACKEND_INTERPRET = "interpret"
BACKENDS = (BACKEND_AUTO, BACKEND_CUDA, BACKEND_INTERPRET)

# Modes: "strict" (every compute op in Triton) or "lenient" (torch may do part; some Triton launch
# must do real work).
MODE_STRICT = "strict"
MODE_LENIENT = "lenient"
MODES = (MODE_STRICT, MODE_LENIENT)

# Trial seeds: 63-bit, derived from the evaluation seed so that both workers draw the same inputs.
SEED_MASK = (1 << 63) - 1


def trial_seed(seed: int, t: int) -> int:
    """Seed of trial `t` derived from the evaluation seed (stable across versions)."""
    return (seed * 6364136223846793005 + 1442695040888963407 * (t + 1)) & SEED_MASK


# How a GPU worker's host threads wait for the GPU, read from the environment at the worker's
# start: CU_CTX_SCHED_* of the CUDA driver API per schedule name (see worker.set_sync_schedule).
SYNC_ENV = "KERNELGYM_CUDA_SYNC"
# "1": the worker does not load torch._dynamo at start (interpreter-backend workers: nothing there
# compiles with torch.compile, and its import is half of a worker's start; see guards.runtime.lazy_dynamo).
LAZY_DYNAMO_ENV = "KERNELGYM_LAZY_DYNAMO"
SYNC_SCHEDULES = {"auto": 0, "spin": 1, "yield": 2, "block": 4}

# The timing budget (`Evaluator(bench=...)`, checked in the parent, used by the timing worker).
# warmup_ms: 1 ms of replays after the uploading one (and the measure's settling replay). 10 ms read
# the same medians alone and in a busy pool, and cost the pool a fifth of its throughput in GPU time
# that correctness runs and timings waited behind (benchmarks/NOTES.md, session 8).
DEFAULT_BENCH: dict[str, float] = {"warmup_ms": 1.0, "rep_ms": 20.0, "min_reps": 30, "max_reps": 300,
                                   "replay_ms": 1.0}


def bench_budget(opts: dict[str, Any]) -> dict[str, float]:
    """`DEFAULT_BENCH` updated with `opts`, checked: a ValueError names an unknown key or a bad value."""
    unknown = set(opts) - set(DEFAULT_BENCH)
    if unknown:
        raise ValueError(f"unknown timing option(s) {sorted(unknown)}; known: {sorted(DEFAULT_BENCH)}")
    b = {**DEFAULT_BENCH, **opts}
    for k, v in b.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"timing option {k} must be a finite number, got {v!r}")
    b["min_reps"], b["max_reps"] = int(b["min_reps"]), int(b["max_reps"])
    problems = [f"{k} must be > 0, got {b[k]}" for k in ("rep_ms", "replay_ms") if b[k] <= 0]
    problems += [f"warmup_ms must be >= 0, got {b['warmup_ms']}"] if b["warmup_ms"] < 0 else []
    problems += [f"min_reps must be >= 1, got {b['min_reps']}"] if b["min_reps"] < 1 else []
    problems += [f"max_reps ({b['max_reps']}) must be >= min_reps ({b['min_reps']})"] \
        if b["max_reps"] < b["min_reps"] else []
    if problems:
        raise ValueError("bad timing budget: " + "; ".join(problems))
    return b


@dataclass
class TrialResult:
    """One trial's comparison (made in the reference worker, read by the parent): `reason` is empty
    when it passed."""

    trial: int
    seed: int
    ok: bool
    reason: str = ""
    message: str = ""
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    mismatched: int = 0
    outputs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial": self.trial, "seed": self.seed, "ok": self.ok, "reason": self.reason,
            "message": self.message, "max_abs_err": self.max_abs_err, "max_rel_err": self.max_rel_err,
            "mismatched": self.mismatched, "outputs": self.outputs,
        }
