"""Anti-hacking guards: static (AST, before anything runs) and runtime (while the candidate runs).

Every failure is a `Finding`; its `reason` (``guard:<name>``) goes into `Verdict.reasons` and the
verdict's status becomes ``hack_detected``. The names form a fixed vocabulary (`GUARD_NAMES`) shared
by the static and the runtime layer where they mean the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass

GUARD_NAMES = (
    "no_triton_kernel", "no_triton_launch", "output_not_from_triton", "torch_compute",
    "reference_ops_in_torch", "try_except", "output_reused", "output_aliases_input", "input_mutated",
    "side_stream", "thread_started", "process_started", "patching", "code_generation", "file_access",
    "network", "subprocess", "introspection", "forbidden_import", "forbidden_call", "early_exit", "numpy",
    "timing_inconsistent", "timing_probe",
)


@dataclass(frozen=True)
class Finding:
    """One guard that fired: `name` from `GUARD_NAMES`, a human `detail`, the source `line` if static."""

    name: str
    detail: str = ""
    line: int | None = None

    @property
    def reason(self) -> str:
        return f"guard:{self.name}"


def check_source(source: str, mode: str = "strict") -> list[Finding]:
    """Static checks (see `guards.static.check_source`)."""
    from kernelgym.evaluation.guards.static import check_source as _check

    return _check(source, mode)


__all__ = ["GUARD_NAMES", "Finding", "check_source"]
