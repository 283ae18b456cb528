"""The one interface every policy implements: task (+ feedback on earlier attempts) -> candidate sources."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from kernelgym.task import Task


@dataclass
class Attempt:
    """An earlier candidate and the verdict it got (as `Verdict.to_dict()`), for refinement."""

    source: str
    verdict: dict[str, Any]


@dataclass
class Proposal:
    """A candidate source plus what the policy wants to say about it (kept in search logs)."""

    source: str
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Policy(Protocol):
    """Produces `ModelNew` sources for a task.

    `propose(task, n, history)` returns up to `n` candidate sources (strings, each a whole
    KernelBench-format action module). `history` holds earlier attempts on the same task, newest
    last, so multi-turn policies can refine; policies that cannot use it ignore it.
    """

    name: str

    def propose(self, task: Task, n: int = 1, history: Sequence[Attempt] = ()) -> list[str]: ...
