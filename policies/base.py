"""The interfaces of policies: `Policy` (task + feedback on earlier attempts -> candidate sources),
which every policy implements, and `Compiler`, the levers of a policy that builds candidates from
explicit choices (fusion partitions, launch configs, vendor calls) for the search."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
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


# A fusion partition: groups of node indices of the task's graph, one kernel per group.
Partition = list[list[int]]


@runtime_checkable
class Compiler(Policy, Protocol):
    """A policy that builds a candidate from explicit choices: the levers `SearchPolicy` pulls.

    `compile(task, partition=, config=, extern=)` returns one action module: `partition` groups
    of node indices (None: the policy's default), `config` launch parameters merged over the
    policy's own, `extern` node indices run as vendor calls (None: the policy's choice).
    `candidate_partitions(task, limit, extern=)` lists valid partitions, the one ``compile(task)``
    uses first; `seed_configs(task)` configs worth one candidate each; `extern_choices(task)`
    extern-anchor sets worth judging (the policy's own first; [] when there is no choice);
    `kernel_costs(task, partition, extern=)` a cost per kernel name of that compilation, so launch
    moves go to the costliest kernels first ({} when unknown). `policies.compiler.CompilerPolicy`
    is the implementation.
    """

    def compile(self, task: Task, partition: Sequence[Iterable[int]] | None = None,
                config: Mapping[str, Any] | None = None, extern: Any = None) -> str: ...

    def candidate_partitions(self, task: Task, limit: int = 8, extern: Any = None) -> list[Partition]: ...

    def seed_configs(self, task: Task) -> list[dict[str, Any]]: ...

    def extern_choices(self, task: Task) -> list[list[int]]: ...

    def kernel_costs(self, task: Task, partition: Sequence[Iterable[int]] | None = None,
                     extern: Any = None) -> dict[str, float]: ...


COMPILER_METHODS = ("compile", "candidate_partitions", "seed_configs", "extern_choices", "kernel_costs")


def as_compiler(policy: Any) -> Compiler | None:
    """`policy` as a `Compiler`, or None when it offers none of the compiler's levers (an LLM).

    A policy with some of `COMPILER_METHODS` but not all is refused with a TypeError naming the
    missing ones: a half-implemented compiler would otherwise be searched as a plain policy.
    """
    if isinstance(policy, Compiler):
        return policy
    if not any(hasattr(policy, m) for m in COMPILER_METHODS):
        return None
    missing = [m for m in ("name", "propose", *COMPILER_METHODS) if not hasattr(policy, m)]
    raise TypeError(f"{type(policy).__name__} lacks {', '.join(missing)} of the Compiler protocol "
                    "(policies.base): a policy the search compiles with must implement all of it")
