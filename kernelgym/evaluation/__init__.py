"""Evaluation: judge a candidate Triton program against a KernelBench-format reference.

`evaluate` and `evaluate_batch` run on a lazily created module-level `Evaluator` (worker pools);
create your own `Evaluator(...)` (settings: an `EvaluatorOptions` or its fields as keywords) for
other pool sizes, limits or timeouts and pass it as `evaluator=`, or call its methods directly.
"""

from __future__ import annotations

from collections.abc import Sequence

from kernelgym.evaluation.evaluator import Evaluator, Reference, default_evaluator, resolve_backend
from kernelgym.evaluation.options import EvaluatorOptions
from kernelgym.evaluation.protocol import BACKEND_AUTO, MODE_STRICT
from kernelgym.evaluation.verdict import STATUSES, Verdict


def evaluate(reference: Reference, candidate: str, backend: str = BACKEND_AUTO, mode: str = MODE_STRICT, *,
             seed: int | None = None, trials: int = 3, timeout: float | None = None,
             evaluator: Evaluator | None = None, task_id: str | None = None) -> Verdict:
    """Judge `candidate` (source or an LLM reply with a fenced block) against `reference`.

    reference: a `kernelgym.task.Task` or KernelBench-format source. backend: "auto" (cuda when a
    GPU is visible, else interpret), "cuda" or "interpret". mode: "strict" or "lenient".
    seed: evaluation seed (random when None); `verdict.seeds[0]` is it, `seeds[1:]` the trial seeds.
    trials: correctness trials (at least 3). timeout: wall seconds per phase (default: the
    evaluator's). Returns a Verdict; never raises for anything the candidate does.
    """
    ev = evaluator or default_evaluator()
    return ev.evaluate(reference, candidate, backend, mode, seed=seed, trials=trials, timeout=timeout,
                       task_id=task_id)


def evaluate_batch(pairs: Sequence[tuple[Reference, str]], backend: str = BACKEND_AUTO, mode: str = MODE_STRICT,
                   cluster: str | None = None, *, seed: int | None = None, trials: int = 3,
                   timeout: float | None = None, evaluator: Evaluator | None = None) -> list[Verdict]:
    """Evaluate (reference, candidate) pairs in parallel over the worker pool; same order as `pairs`.

    cluster: "local", "ray" or "ray://host:port" (`kernelgym.cluster`); None reads KERNELGYM_CLUSTER.
    """
    ev = evaluator or default_evaluator()
    return ev.evaluate_batch(pairs, backend, mode, cluster, seed=seed, trials=trials, timeout=timeout)


__all__ = [
    "STATUSES",
    "Evaluator",
    "EvaluatorOptions",
    "Verdict",
    "default_evaluator",
    "evaluate",
    "evaluate_batch",
    "resolve_backend",
]
