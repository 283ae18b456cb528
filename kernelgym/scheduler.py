"""Running a policy over tasks: ask it for a candidate (or let it search), judge the candidate, one
task or many at once, with a per-task time limit on the policy, a time budget for the whole run
shared among the searches (`TimeShares`) and what each task is doing for a progress display
(`task_phase`)."""

from __future__ import annotations

import contextlib
import inspect
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any


class PolicyTimeout(RuntimeError):
    """A policy call that ran past the run's per-task time limit (`--policy-timeout`)."""


# -- what each task is doing, for the progress display --------------------------------------------
_phase = threading.local()


@contextlib.contextmanager
def task_phase(name: str) -> Iterator[None]:
    """Show `name` ("tracing", "compiling", ...) as what the current thread's task is doing while
    the block runs, then the phase before it again. Policies call it around their slow steps; it
    does nothing outside `kernelgym run` (no display listens)."""
    report = getattr(_phase, "report", None)
    if report is None:
        yield
        return
    before = getattr(_phase, "name", None)
    _phase.name = name
    report(name)
    try:
        yield
    finally:
        _phase.name = before
        if before is not None:
            report(before)


def _listen(report: Callable[[str], None] | None) -> None:
    _phase.report, _phase.name = report, None


def _call_with_limit(fn: Callable[[], Any], limit: float | None, report: Callable[[str], None] | None) -> Any:
    """fn() in this thread, or -- with a limit -- in a helper thread that is waited for at most
    `limit` seconds; past it `PolicyTimeout` is raised and the call is abandoned (Python cannot stop
    a thread: it finishes in the background and its result is dropped)."""
    if not limit:
        _listen(report)
        return fn()
    box: dict[str, Any] = {}

    def target() -> None:
        _listen(report)
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the waiting thread
            box["error"] = exc

    worker = threading.Thread(target=target, name="kernelgym-policy", daemon=True)
    worker.start()
    worker.join(limit)
    if worker.is_alive():
        raise PolicyTimeout(f"the policy ran past the per-task time limit of {limit:g} s (--policy-timeout); "
                            "its call was abandoned")
    if "error" in box:
        raise box["error"]
    return box["value"]


class TimeShares:
    """A run's time budget, shared among its tasks as each starts: with `jobs` tasks at a time and
    R tasks not yet started (this one included), a task may search for (time left) x min(jobs, R) / R
    seconds, so the tasks still to come keep their part however long the earlier ones took. A task
    that starts with nothing left gets one evaluation (the base's default candidate): every task
    is still judged, and the run ends about one evaluation per slot after its budget."""

    def __init__(self, budget_s: float, jobs: int, tasks: int):
        if not budget_s > 0:
            raise ValueError(f"a time budget must be > 0 seconds, got {budget_s}")
        self.deadline = time.perf_counter() + budget_s
        self.jobs = max(1, int(jobs))
        self.left = max(0, int(tasks))
        self._lock = threading.Lock()

    def take(self) -> float:
        """Seconds the task starting now may search (<= 0: none; judge its first candidate only)."""
        with self._lock:
            r = max(1, self.left)
            self.left = max(0, self.left - 1)
            return (self.deadline - time.perf_counter()) * min(self.jobs, r) / r


def _search_call(policy: Any, task: Any, share: float | None) -> Any:
    """policy.search(task) within `share` seconds (None: the policy's own budgets; <= 0: one
    evaluation). A search without budget keywords (another project's policy) gets a plain call."""
    if share is None:
        return policy.search(task)
    try:
        params = inspect.signature(policy.search).parameters
    except (TypeError, ValueError):
        params = {}
    if "budget_s" not in params or "budget_evals" not in params:
        return policy.search(task)
    return policy.search(task, budget_evals=1) if share <= 0 else policy.search(task, budget_s=share)


@dataclass
class TaskResult:
    """One task's outcome: the candidate judged and its verdict (plus the search, if any)."""

    task: Any
    source: str | None
    verdict: Any
    search: Any | None = None
    policy_error: str | None = None
    elapsed_s: float = 0.0

    def row(self, policy: str) -> dict[str, Any]:
        """The verdicts.jsonl row: the verdict's fields plus task id, difficulty, ops, policy."""
        row = {"task_id": self.task.id, "difficulty": self.task.difficulty, "ops": list(self.task.ops),
               "policy": policy, **self.verdict.to_dict(), "elapsed_s": round(self.elapsed_s, 3)}
        row["task_id"] = self.task.id   # the verdict's own task_id may be None
        if (getattr(self.task, "meta", None) or {}).get("dag"):
            row["dag"] = self.task.meta["dag"]   # the program's DAG, for the report
        if self.policy_error:
            row["policy_error"] = self.policy_error
        if self.search is not None:
            s = self.search
            best = s.log[s.best_index] if s.best_index is not None else {}
            row["search"] = {"evaluations": s.evaluations, "stopped": s.stopped, "best_index": s.best_index,
                             "best_origin": best.get("origin"), "best_changes": best.get("changes"),
                             "search_speedup": best.get("speedup")}
        return row


def _no_candidate_verdict(task: Any, backend: str, mode: str, why: str) -> Any:
    from kernelgym.evaluation import Verdict

    # No source to judge: the closest contract status is a format error (nothing usable was produced).
    return Verdict(status="format_error", error=why[:500], reasons=["policy:no_candidate"], backend=backend,
                   mode=mode, task_id=task.id)


def run_task(task: Any, policy: Any, evaluator: Any, backend: str, mode: str, seed: int | None = None,
             policy_timeout: float | None = None,
             on_phase: Callable[[Any, str | None], None] | None = None,
             share: float | None = None) -> TaskResult:
    """Ask `policy` for one candidate and judge it. A policy with ``search(task)`` (the search
    policy) brings its own verdict; when it chose among several timed candidates, the winner is
    timed once more with fresh inputs, since the best of several noisy timings overstates the
    speedup.

    policy_timeout: seconds the policy call may take (None or 0: no limit); past it the task gets
    a policy-error verdict. on_phase(task, phase): told what the task is doing ("proposing",
    "searching", the policy's own `task_phase` steps, "judging"; None when it is done).
    share: seconds this task's search may take (`TimeShares.take`; <= 0: one evaluation)."""
    t0 = time.perf_counter()
    search = None
    report = (lambda phase: on_phase(task, phase)) if on_phase is not None else None
    try:
        if callable(getattr(policy, "search", None)):
            def searched() -> Any:
                with task_phase("searching"):
                    return _search_call(policy, task, share)

            search = _call_with_limit(searched, policy_timeout, report)
            _listen(report)
            source, verdict = search.best_source, search.best_verdict
            timed = sum(1 for e in getattr(search, "log", []) if e.get("speedup") is not None)
            if source is not None and verdict is not None and verdict.speedup is not None and timed != 1:
                with task_phase("judging"):
                    verdict = evaluator.evaluate(task, source, backend, mode, seed=seed, task_id=task.id)
        else:
            def proposed() -> Any:
                with task_phase("proposing"):
                    return policy.propose(task, n=1)

            got = _call_with_limit(proposed, policy_timeout, report)
            _listen(report)
            source = got[0] if got else None
            verdict = None
            if source is not None:
                with task_phase("judging"):
                    verdict = evaluator.evaluate(task, source, backend, mode, seed=seed, task_id=task.id)
    except Exception as exc:  # noqa: BLE001 - one task's policy failure must not end the run
        why = f"policy error: {type(exc).__name__}: {exc}"
        return TaskResult(task, None, _no_candidate_verdict(task, backend, mode, why), search, why,
                          time.perf_counter() - t0)
    if source is None or verdict is None:
        errors = [e.get("error") for e in getattr(search, "log", []) if e.get("status") == "policy_error"]
        why = "policy produced no candidate" + (f": {errors[0]}" if errors else "")
        return TaskResult(task, None, _no_candidate_verdict(task, backend, mode, why), search, why,
                          time.perf_counter() - t0)
    verdict.task_id = verdict.task_id or task.id
    return TaskResult(task, source, verdict, search, None, time.perf_counter() - t0)


def run_tasks(tasks: Sequence[Any], policy: Any, evaluator: Any, backend: str, mode: str, jobs: int = 2,
              seed: int = 0, on_done: Callable[[TaskResult], None] | None = None,
              policy_timeout: float | None = None, skip: Collection[str] = (),
              on_phase: Callable[[Any, str | None], None] | None = None,
              time_budget: float | None = None) -> list[TaskResult]:
    """Run `policy` on every task not in `skip` (task ids), `jobs` tasks at a time; results in task
    order. Task i is judged with seed ``seed + i`` whatever is skipped, so a resumed run judges as
    the first would have. On KeyboardInterrupt the tasks not started are cancelled.

    time_budget: wall seconds for the searches of the whole run (None or 0: none), shared among
    the tasks as each starts (`TimeShares`); a policy without ``search`` is not affected."""
    results: list[TaskResult | None] = [None] * len(tasks)
    lock = threading.Lock()
    skip = set(skip)
    todo = [(i, t) for i, t in enumerate(tasks) if t.id not in skip]
    shares = TimeShares(time_budget, jobs, len(todo)) if time_budget else None

    def one(i: int, t: Any) -> TaskResult:
        share = shares.take() if shares is not None else None
        return run_task(t, policy, evaluator, backend, mode, seed + i, policy_timeout, on_phase, share)

    ex = ThreadPoolExecutor(max(1, jobs), thread_name_prefix="kernelgym-run")
    try:
        futures = {ex.submit(one, i, t): i for i, t in todo}
        for fut in as_completed(futures):
            r = fut.result()
            results[futures[fut]] = r
            if on_phase is not None:
                on_phase(r.task, None)
            if on_done is not None:
                with lock:
                    on_done(r)
    except BaseException:
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown(wait=True)
    return [r for r in results if r is not None]
