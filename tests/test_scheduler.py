"""`kernelgym.scheduler`: a run's time budget shared among its searches, and when a search's
winner is judged again."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from kernelgym import scheduler
from kernelgym.evaluation import Verdict
from kernelgym.scheduler import TimeShares, run_tasks


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_time_shares_keep_a_part_for_the_tasks_still_to_come(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(scheduler.time, "perf_counter", clock)
    shares = TimeShares(100.0, jobs=2, tasks=4)
    assert shares.take() == pytest.approx(100 * 2 / 4)     # 4 to start, 2 at a time
    clock.now += 10
    assert shares.take() == pytest.approx(90 * 2 / 3)
    clock.now += 50
    assert shares.take() == pytest.approx(40)               # 2 left: each may use what is left
    clock.now += 60
    assert shares.take() < 0                                 # past the budget: one evaluation
    assert shares.take() < 0                                 # more takes than tasks: still a number
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="time budget must be > 0"):
            TimeShares(bad, 2, 3)


class FakeSearch:
    """A search policy recording the budgets each task was given; its verdicts are timed, one or
    two timed candidates a search (`timed`)."""

    name = "search"

    def __init__(self, timed: int = 2):
        self.calls: dict[str, dict] = {}
        self.timed = timed
        self.lock = threading.Lock()

    def search(self, task, history=(), *, budget_evals=None, budget_s=None):
        with self.lock:
            self.calls[task.id] = {"budget_evals": budget_evals, "budget_s": budget_s}
        log = [{"speedup": 1.5}] * self.timed + [{"speedup": None}]
        speedup = 1.5 if self.timed else None   # untimed (the interpreter): no speedup anywhere
        return SimpleNamespace(best_source="src", best_verdict=Verdict(status="ok", correct=True, speedup=speedup),
                               log=log, best_index=0, evaluations=len(log), stopped="budget_evals")


class PlainSearch(FakeSearch):
    def search(self, task, history=()):   # another project's search: no budget keywords
        return super().search(task)


class Judge:
    def __init__(self):
        self.judged: list[str] = []

    def evaluate(self, task, source, backend, mode, seed=None, task_id=None):
        self.judged.append(task.id)
        return Verdict(status="ok", correct=True, speedup=1.2)


TASKS = [SimpleNamespace(id=f"t{i}", difficulty=1, ops=(), meta={}) for i in range(5)]


def test_a_run_without_time_left_judges_each_task_on_one_evaluation():
    policy, judge = FakeSearch(), Judge()
    results = run_tasks(TASKS, policy, judge, "cuda", "strict", jobs=2, time_budget=1e-9)
    assert [r.verdict.status for r in results] == ["ok"] * 5
    assert all(c == {"budget_evals": 1, "budget_s": None} for c in policy.calls.values())


def test_a_run_with_time_gives_each_search_its_share_and_none_without_a_budget():
    policy = FakeSearch()
    run_tasks(TASKS, policy, Judge(), "cuda", "strict", jobs=2, time_budget=500.0)
    shares = sorted(c["budget_s"] for c in policy.calls.values())
    assert all(c["budget_evals"] is None for c in policy.calls.values())
    assert 0 < shares[0] and shares[-1] <= 500.0 and max(shares[:1]) <= 500 * 2 / 5 + 1e-6
    policy = FakeSearch()
    run_tasks(TASKS, policy, Judge(), "cuda", "strict", jobs=2)
    assert all(c == {"budget_evals": None, "budget_s": None} for c in policy.calls.values())
    plain = PlainSearch()
    assert len(run_tasks(TASKS, plain, Judge(), "cuda", "strict", jobs=2, time_budget=1e-9)) == 5
    assert all(c == {"budget_evals": None, "budget_s": None} for c in plain.calls.values())


@pytest.mark.parametrize("timed, rejudged", [(2, True), (1, False), (0, False)])
def test_the_winner_is_judged_again_only_when_chosen_among_timed_candidates(timed, rejudged):
    policy, judge = FakeSearch(timed=timed), Judge()
    (r,) = run_tasks(TASKS[:1], policy, judge, "cuda", "strict", jobs=1)
    assert (judge.judged == ["t0"]) == rejudged
    assert r.verdict.speedup == (1.2 if rejudged else 1.5 if timed else None)
