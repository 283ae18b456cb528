"""The report page and plot: time per task, links to candidates, the DAG, both plot layouts."""

from __future__ import annotations

from kernelgym import report


def _rows(timed: bool) -> list[dict]:
    rows = []
    for d, status in [(1, "ok"), (1, "incorrect"), (2, "ok"), (2, "compile_error")]:
        r = {"task_id": f"d{d}/{status}", "difficulty": d, "ops": ["var", "cos", "conv2d"],
             "dag": "cos(var(x0)), conv2d(x1)", "status": status, "elapsed_s": 1.25 * d, "reasons": []}
        if timed and status == "ok":
            r.update(speedup=1.5 * d, speedup_vs_compile=0.8 * d)
        rows.append(r)
    return rows


def test_html_has_time_dag_and_candidate_links(tmp_path):
    rows = _rows(timed=False)
    (tmp_path / "candidates").mkdir()
    (tmp_path / report.candidate_file("d1/ok")).write_text("# judged source\n")
    assert report.candidate_file("d1/ok") == "candidates/d1_ok.py"
    report.write_report(tmp_path, rows)
    page = (tmp_path / "report.html").read_text()
    assert '<a href="candidates/d1_ok.py">d1/ok</a>' in page
    assert page.count('href="candidates/') == 1           # only files that exist are linked
    assert "<th>seconds</th>" in page and "<td>2.50</td>" in page
    assert "cos(var(x0)), conv2d(x1)" in page and "var → cos → conv2d" not in page


def test_plot_for_timed_and_untimed_runs():
    for timed in (False, True):
        rows = _rows(timed)
        png = report.plot_png(report.summarize(rows), rows)
        assert png is not None and png[:8] == b"\x89PNG\r\n\x1a\n"
