"""The verdict: everything the evaluator concluded about one candidate."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from kernelgym.evaluation.protocol import MODE_STRICT

STATUSES = (
    "ok",
    "format_error",
    "compile_error",
    "runtime_error",
    "timeout",
    "crash",
    "incorrect",
    "hack_detected",
    "invalid_task",
)

# Statuses at which the candidate's source at least parsed into a module defining ModelNew.
_FORMAT_OK = frozenset(STATUSES) - {"format_error", "invalid_task"}


@dataclass
class Verdict:
    """Result of judging one candidate against one reference.

    `status == "ok"` means compiled, passed every guard, correct on every trial. `reasons` holds
    machine-readable entries such as ``guard:input_mutated`` or ``check:mismatch``.
    """

    status: str
    correct: bool = False
    compiled: bool = False
    speedup: float | None = None
    speedup_vs_compile: float | None = None
    reasons: list[str] = field(default_factory=list)
    error: str = ""
    reward_components: dict[str, float] = field(default_factory=dict)
    backend: str = ""
    device: str = ""
    seeds: list[int] = field(default_factory=list)
    tolerances: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    # Fields beyond the contract.
    mode: str = MODE_STRICT
    task_id: str | None = None
    notes: list[str] = field(default_factory=list)
    trials: list[dict[str, Any]] = field(default_factory=list)
    kernels: list[str] = field(default_factory=list)
    ptx: dict[str, Any] | None = None
    duration_s: float = 0.0

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown verdict status {self.status!r}; expected one of {STATUSES}")
        if not self.reward_components:
            self.reward_components = components(self)

    def refresh_components(self) -> Verdict:
        """Recompute `reward_components` after fields changed; returns self."""
        self.reward_components = components(self)
        return self

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def format_ok(self) -> bool:
        return self.status in _FORMAT_OK

    @property
    def hacked(self) -> bool:
        return self.status == "hack_detected"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("speedup", "speedup_vs_compile"):
            if d[key] is not None and not math.isfinite(d[key]):
                d[key] = None
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def components(v: Verdict) -> dict[str, float]:
    """The decoupled reward components, always all present (rewards.py combines them).

    `speedup` is the log2 of the eager speedup (0 when untimed or incorrect) so that 1.0 means 2x;
    `hack` is 1 when a guard fired.
    """
    timed = v.correct and v.speedup is not None and v.speedup > 0
    timed_c = v.correct and v.speedup_vs_compile is not None and v.speedup_vs_compile > 0
    return {
        "format": float(v.format_ok),
        "compiled": float(v.compiled),
        "correct": float(v.correct and v.status == "ok"),
        "speedup": math.log2(v.speedup) if timed else 0.0,
        "speedup_vs_compile": math.log2(v.speedup_vs_compile) if timed_c else 0.0,
        "hack": float(v.hacked),
    }
