"""`kernelgym run`: policy resolution, output-directory rules, report files, end to end on tiny tasks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kernelgym import policy_loader, runner
from kernelgym import report as report_mod
from kernelgym.cli import build_parser
from kernelgym.evaluation import Verdict

REDTEAM = Path(__file__).parent / "redteam"
SUITE_TASKS = ("relu_add", "row_softmax", "scale")


class LegitPolicy:
    """Answers the red-team tasks with their legitimate kernels; row_softmax gets a wrong one."""

    name = "legit"

    def __init__(self, mode: str = "strict"):
        self.mode = mode

    def propose(self, task, n=1, history=()):
        src = (REDTEAM / "legit" / f"{task.id}.py").read_text()
        if task.id == "row_softmax":
            src = src.replace("e / tl.sum(e, axis=0)", "e")   # unnormalised: incorrect
        return [src] * n


class BrokenPolicy:
    name = "broken"

    def propose(self, task, n=1, history=()):
        raise RuntimeError("no idea")


LEGIT = f"{__name__}:LegitPolicy"


@pytest.fixture()
def suite(tmp_path: Path) -> Path:
    d = tmp_path / "suite"
    d.mkdir()
    for name in SUITE_TASKS:
        shutil.copy(REDTEAM / "tasks" / f"{name}.py", d / f"{name}.py")
    return d


def _args(*argv: str):
    return build_parser().parse_args(["run", *argv])


# -- policy resolution ----------------------------------------------------------------------------
def test_resolve_entry_point_names_the_builtin_policies():
    from policies.search import SearchPolicy

    assert runner.resolve_policy("search") is SearchPolicy


def test_resolve_module_attr_and_build_with_accepted_options():
    assert runner.resolve_policy(LEGIT) is LegitPolicy
    policy = runner.build_policy(LEGIT, mode="lenient", backend="interpret", evaluator=object(), budget_evals=3)
    assert isinstance(policy, LegitPolicy) and policy.mode == "lenient"


def test_builtin_names_fall_back_to_module_specs_without_entry_points(monkeypatch):
    monkeypatch.setattr(policy_loader, "_entry_point", lambda name: None)
    from policies.search import SearchPolicy

    assert runner.resolve_policy("search") is SearchPolicy


@pytest.mark.parametrize("spec, message", [
    ("nonesuch", "unknown policy 'nonesuch'"),
    ("no_such_module_xyz:Policy", "module 'no_such_module_xyz' not found"),
    (f"{__name__}:NoSuchClass", "has no attribute 'NoSuchClass'"),
    (":Policy", "expected 'module:attr'"),
])
def test_unknown_policy_is_a_clear_error(spec, message):
    with pytest.raises(runner.PolicyNotFound, match=message):
        runner.resolve_policy(spec)


def test_search_builds_its_base_and_unused_llm_options_are_refused():
    from policies.search import SearchPolicy

    policy = runner.build_policy("search", LEGIT, mode="strict", backend="interpret", evaluator=None,
                                 budget_evals=3)
    assert isinstance(policy, SearchPolicy) and isinstance(policy.base, LegitPolicy)
    assert policy.budget_evals == 3
    with pytest.raises(runner.RunError, match="takes no --model"):
        runner.build_policy(LEGIT, model="some-model")


def test_cli_reports_a_bad_policy_with_exit_code_2(tmp_path, capsys):
    assert runner.main_run(_args("--policy", "nonesuch", "--out", str(tmp_path / "o"))) == 2
    assert "unknown policy 'nonesuch'" in capsys.readouterr().err


# -- output directory -----------------------------------------------------------------------------
def test_out_directory_rules(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = runner.prepare_out(None, force=False)
    b = runner.prepare_out(None, force=False)
    assert a != b and a.parent == Path("runs") and a.is_dir() and b.is_dir()
    (a / "keep.txt").write_text("x")
    with pytest.raises(runner.RunError, match="not empty; pass --force"):
        runner.prepare_out(str(a), force=False)
    assert runner.prepare_out(str(a), force=True) == a and (a / "keep.txt").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(runner.RunError, match="not a directory"):
        runner.prepare_out(str(tmp_path / "file"), force=True)


def test_bad_arguments(tmp_path):
    with pytest.raises(runner.RunError, match="not a directory"):
        runner.load_tasks(str(tmp_path / "missing"))
    with pytest.raises(runner.RunError, match="-n must be >= 1"):
        runner.load_tasks("synthetic", n=0)
    assert runner.main_run(_args("--budget-evals", "0", "--out", str(tmp_path / "o"))) == 2
    assert runner.main_run(_args("--time-budget", "-5", "--out", str(tmp_path / "o"))) == 2
    assert not (tmp_path / "o").exists()   # refused before anything was written


def test_synthetic_tasks_spread_over_difficulties():
    tasks = runner.load_tasks("synthetic", [1, 2, 3], 5, seed=0, sizes="tiny")
    assert [t.difficulty for t in tasks] == [1, 2, 3, 1, 2]
    assert len({t.id for t in tasks}) == 5


# -- report ---------------------------------------------------------------------------------------
def _row(task_id, d, status, speedup=None, vs_compile=None):
    v = Verdict(status=status, correct=status == "ok", compiled=status != "format_error", speedup=speedup,
                speedup_vs_compile=vs_compile)
    return {"task_id": task_id, "difficulty": d, "ops": ["relu"], **v.to_dict()}


def test_summary_statistics_per_difficulty(tmp_path):
    rows = [_row("a", 1, "ok", 2.0, 1.5), _row("b", 1, "ok", 0.5, 0.4), _row("c", 2, "hack_detected"),
            _row("d", 2, "compile_error"), _row("e", 2, "incorrect")]
    s = report_mod.write_report(tmp_path, rows, {"policy": "x"})
    assert (s["tasks"], s["ok"], s["hacks"], s["errors"], s["incorrect"]) == (5, 2, 1, 1, 1)
    d1, d2 = s["by_difficulty"]["1"], s["by_difficulty"]["2"]
    assert (d1["tasks"], d1["ok"], d2["tasks"], d2["ok"]) == (2, 2, 3, 0)
    assert d1["median_speedup"] == pytest.approx(1.25) and d1["faster_than_eager"] == pytest.approx(0.5)
    assert s["faster_than_eager"] == pytest.approx(1 / 5) and s["faster_than_compile"] == pytest.approx(1 / 5)
    assert d2["median_speedup"] is None and d2["faster_than_eager"] is None
    for name in report_mod.FILES:
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in page and "hack_detected" in page
    assert report_mod.read_rows(tmp_path / "verdicts.jsonl") == json.loads(json.dumps(rows))


def test_report_escapes_html(tmp_path):
    row = _row("<script>", 1, "runtime_error")
    row["error"] = "<b>boom</b>"
    report_mod.write_report(tmp_path, [row])
    page = (tmp_path / "report.html").read_text()
    assert "<script>" not in page and "&lt;b&gt;boom" in page


# -- end to end -----------------------------------------------------------------------------------
def _check_report(out: Path, n: int) -> dict:
    for name in report_mod.FILES:
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tasks"] == n and set(summary) >= {"tasks", "ok", "by_difficulty"}
    for g in summary["by_difficulty"].values():
        assert set(g) >= {"tasks", "ok"}
    rows = report_mod.read_rows(out / "verdicts.jsonl")
    assert len(rows) == n and all(r["task_id"] and r["status"] for r in rows)
    return summary


def test_run_suite_end_to_end(suite, tmp_path, evaluator):
    out = tmp_path / "report"
    rc = runner.main_run(_args("--policy", LEGIT, "--suite", str(suite), "--backend", "interpret",
                               "--out", str(out), "--no-progress"), evaluator=evaluator)
    assert rc == 0
    summary = _check_report(out, 3)
    rows = {r["task_id"]: r for r in report_mod.read_rows(out / "verdicts.jsonl")}
    assert rows["relu_add"]["status"] == "ok" and rows["scale"]["status"] == "ok"
    assert rows["row_softmax"]["status"] == "incorrect"
    assert summary["ok"] == 2 and summary["by_difficulty"]["unknown"]["tasks"] == 3
    assert (out / "candidates" / "relu_add.py").is_file()
    # A second run into the same directory is refused without --force.
    assert runner.main_run(_args("--policy", LEGIT, "--suite", str(suite), "--out", str(out)),
                           evaluator=evaluator) == 2


def test_run_search_over_a_fake_base_end_to_end(suite, tmp_path, evaluator):
    out = tmp_path / "report"
    rc = runner.main_run(_args("--policy", "search", "--base", LEGIT, "--suite", str(suite), "-n", "2",
                               "--backend", "interpret", "--budget-evals", "3", "--out", str(out),
                               "--no-progress"), evaluator=evaluator)
    assert rc == 0
    _check_report(out, 2)
    rows = report_mod.read_rows(out / "verdicts.jsonl")
    assert all(r["policy"] == "search(legit)" and r["search"]["evaluations"] >= 1 for r in rows)
    # under the interpreter the searches share no time budget unless asked (GPU runs: 600 s)
    assert json.loads((out / "summary.json").read_text())["run"]["time_budget_s"] is None
    log = json.loads((out / "search" / "relu_add.json").read_text())
    assert log["stopped"] == "found" and log["log"][0]["origin"] == "default"


def test_policy_failure_becomes_a_verdict_not_a_crash(suite, tmp_path, evaluator):
    out = tmp_path / "report"
    rc = runner.main_run(_args("--policy", f"{__name__}:BrokenPolicy", "--suite", str(suite), "-n", "1",
                               "--backend", "interpret", "--out", str(out), "--no-progress"), evaluator=evaluator)
    assert rc == 0
    (row,) = report_mod.read_rows(out / "verdicts.jsonl")
    assert row["status"] == "format_error" and "no idea" in row["policy_error"]
    assert "policy:no_candidate" in row["reasons"]


def test_default_run_compiler_with_search_on_sampled_tasks(tmp_path, evaluator):
    """The default job (search around the compiler) on 3 tiny sampled tasks, difficulties 1-3."""
    pytest.importorskip("policies.compiler")
    out = tmp_path / "report"
    rc = runner.main_run(_args("-n", "3", "--backend", "interpret", "--out", str(out), "--no-progress"),
                         evaluator=evaluator)
    assert rc == 0
    summary = _check_report(out, 3)
    assert set(summary["by_difficulty"]) == {"1", "2", "3"}
    assert summary["run"]["policy"] == "search(compiler)" and summary["run"]["sizes"] == "tiny"
    assert summary["ok"] == 3 and summary["faster_than_eager"] is None   # untimed on the interpreter


@pytest.mark.gpu
def test_default_run_on_a_gpu_is_timed(tmp_path):
    """On CUDA the default job times candidates: speedup statistics and shares are filled in."""
    pytest.importorskip("policies.compiler")
    out = tmp_path / "report"
    assert runner.main_run(_args("-n", "3", "--sizes", "tiny", "--budget-evals", "3", "--out", str(out),
                                 "--no-progress")) == 0
    summary = _check_report(out, 3)
    assert summary["run"]["backend"] == "cuda"
    if summary["ok"]:
        assert summary["timed"] == summary["ok"] and summary["median_speedup"] is not None
        assert summary["faster_than_eager"] is not None
    rows = report_mod.read_rows(out / "verdicts.jsonl")
    assert all(r["search"]["evaluations"] <= 3 for r in rows)


# -- runs a user can leave running ----------------------------------------------------------------
class StopsAtScale(LegitPolicy):
    """Legit answers, but while `interrupt` is set the run is interrupted (Ctrl-C) when it reaches
    the task 'scale'; `seen` records the tasks it was asked for."""

    interrupt = True
    seen: list[str] = []

    def propose(self, task, n=1, history=()):
        StopsAtScale.seen.append(task.id)
        if task.id == "scale" and self.interrupt:
            raise KeyboardInterrupt
        return super().propose(task, n, history)


class SlowOnScale(LegitPolicy):
    def propose(self, task, n=1, history=()):
        if task.id == "scale":
            import time

            time.sleep(3)
        return super().propose(task, n, history)


def test_a_stopped_run_keeps_its_verdicts_and_resume_finishes_it(suite, tmp_path, evaluator, capsys):
    out = tmp_path / "report"
    common = ["--suite", str(suite), "--backend", "interpret", "--jobs", "1", "--no-progress"]
    rc = runner.main_run(_args("--policy", f"{__name__}:StopsAtScale", *common, "--out", str(out)), evaluator=evaluator)
    assert rc == 130 and "--resume" in capsys.readouterr().err
    # the verdicts of the tasks that ended were written as each ended (no summary: the run did not finish)
    rows = report_mod.read_rows(out / "verdicts.jsonl")
    assert [r["task_id"] for r in rows] == ["relu_add", "row_softmax"] and not (out / "summary.json").exists()
    assert json.loads((out / "run.json").read_text())["task_ids"] == list(SUITE_TASKS)
    # a half-written last line (the process killed mid-write) is dropped, not fatal
    with open(out / "verdicts.jsonl", "a") as f:
        f.write('{"task_id": "scale", "sta')
    # another policy or mode is another run: refused, naming the difference
    rc = runner.main_run(_args("--policy", LEGIT, *common, "--resume", str(out)), evaluator=evaluator)
    assert rc == 2 and "holds another run: --policy" in capsys.readouterr().err
    rc = runner.main_run(_args("--policy", f"{__name__}:StopsAtScale", *common, "--resume", str(out),
                               "--mode", "lenient"), evaluator=evaluator)
    assert rc == 2 and "--mode 'strict' there, 'lenient' here" in capsys.readouterr().err
    StopsAtScale.seen = []
    StopsAtScale.interrupt = False
    try:
        rc = runner.main_run(_args("--policy", f"{__name__}:StopsAtScale", *common, "--resume", str(out)),
                             evaluator=evaluator)
    finally:
        StopsAtScale.interrupt = True
    assert rc == 0 and StopsAtScale.seen == ["scale"]   # only the task not judged before
    summary = _check_report(out, 3)
    rows = report_mod.read_rows(out / "verdicts.jsonl")
    assert [r["task_id"] for r in rows] == list(SUITE_TASKS)   # the report rewrites them in task order
    assert [r["status"] for r in rows] == ["ok", "incorrect", "ok"] and summary["run"]["resumed"] == 2


def test_resume_refuses_what_is_not_a_run(tmp_path, suite, capsys):
    (tmp_path / "empty").mkdir()
    assert runner.main_run(_args("--suite", str(suite), "--resume", str(tmp_path / "empty"))) == 2
    assert "has no run.json" in capsys.readouterr().err
    assert runner.main_run(_args("--suite", str(suite), "--resume", str(tmp_path / "missing"))) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert runner.main_run(_args("--suite", str(suite), "--resume", str(tmp_path / "empty"),
                                 "--out", str(tmp_path / "other"))) == 2
    assert "--out" in capsys.readouterr().err
    assert runner.main_run(_args("--policy-timeout", "-1", "--out", str(tmp_path / "o"))) == 2


def test_a_run_out_of_time_judges_each_task_on_its_first_candidate(suite, tmp_path, evaluator):
    """--time-budget shared among the searches: with none left each task is judged on the base's
    default candidate alone (one evaluation), and the report records the budget."""
    out = tmp_path / "report"
    rc = runner.main_run(_args("--policy", "search", "--base", LEGIT, "--suite", str(suite), "--backend", "interpret",
                               "--budget-evals", "3", "--time-budget", "1e-9", "--out", str(out), "--no-progress"),
                         evaluator=evaluator)
    assert rc == 0
    rows = {r["task_id"]: r for r in report_mod.read_rows(out / "verdicts.jsonl")}
    assert all(r["search"]["evaluations"] == 1 for r in rows.values())
    assert rows["row_softmax"]["search"]["stopped"] == "budget_evals"   # the others: found (correct, untimed)
    # row_softmax's wrong default would have been searched further with time left; here it is its verdict
    assert rows["row_softmax"]["status"] == "incorrect" and rows["relu_add"]["status"] == "ok"
    assert json.loads((out / "summary.json").read_text())["run"]["time_budget_s"] == 1e-9


def test_a_policy_past_the_time_limit_gets_a_verdict_and_the_run_goes_on(suite, tmp_path, evaluator):
    out = tmp_path / "report"
    rc = runner.main_run(_args("--policy", f"{__name__}:SlowOnScale", "--suite", str(suite), "--backend", "interpret",
                               "--policy-timeout", "0.5", "--out", str(out), "--no-progress"), evaluator=evaluator)
    assert rc == 0
    rows = {r["task_id"]: r for r in report_mod.read_rows(out / "verdicts.jsonl")}
    assert rows["relu_add"]["status"] == "ok" and rows["row_softmax"]["status"] == "incorrect"
    assert rows["scale"]["status"] == "format_error" and "policy:no_candidate" in rows["scale"]["reasons"]
    assert "PolicyTimeout" in rows["scale"]["policy_error"] and "time limit of 0.5 s" in rows["scale"]["policy_error"]


UNTRACEABLE = '''import torch
import torch.nn as nn


class Model(nn.Module):
    def forward(self, x):
        return torch.fft.fft(x).real


def get_inputs():
    return [torch.randn(4, 8)]


def get_init_inputs():
    return []
'''


def test_compiler_runs_a_suite_in_parallel_and_an_untraceable_task_is_a_verdict(suite, tmp_path, evaluator):
    """Tasks traced in parallel threads (the fx race gave policy:no_candidate to half of them) and
    a task the tracer cannot handle: its verdict carries the TraceError, the run goes on."""
    pytest.importorskip("policies.compiler")
    (suite / "fft.py").write_text(UNTRACEABLE)
    out = tmp_path / "report"
    phases: list[tuple[str, str | None]] = []
    original = runner.run_tasks

    def recording(*a, **kw):
        inner = kw["on_phase"]
        kw["on_phase"] = lambda task, name: (phases.append((task.id, name)), inner(task, name))
        return original(*a, **kw)

    runner.run_tasks = recording
    try:
        rc = runner.main_run(_args("--policy", "compiler", "--suite", str(suite), "--backend", "interpret",
                                   "--jobs", "4", "--out", str(out)), evaluator=evaluator)
    finally:
        runner.run_tasks = original
    assert rc == 0
    rows = {r["task_id"]: r for r in report_mod.read_rows(out / "verdicts.jsonl")}
    assert {k: r["status"] for k, r in rows.items()} == {"fft": "format_error", "relu_add": "ok",
                                                          "row_softmax": "ok", "scale": "ok"}
    assert "TraceError" in rows["fft"]["policy_error"] and "fft" in rows["fft"]["policy_error"]
    # the progress display was told what each task was doing, in order
    relu = [name for task, name in phases if task == "relu_add"]
    assert relu == ["proposing", "tracing", "proposing", "compiling", "proposing", "judging", None], relu
