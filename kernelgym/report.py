"""Reports of a main-job run: summary statistics, a terminal table, a PNG plot and an HTML page.

Everything here works from plain rows (one JSON object per task: the verdict's fields plus
``task_id``, ``difficulty`` and ``ops``), so a report can be rebuilt from ``verdicts.jsonl``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Statuses that are neither a pass, a wrong answer nor a caught hack: the candidate never ran to
# a comparison (or the task itself was broken).
ERROR_STATUSES = ("format_error", "compile_error", "runtime_error", "timeout", "crash", "invalid_task")
STATUS_ORDER = ("ok", "incorrect", "hack_detected", *ERROR_STATUSES)
STATUS_COLOURS = {"ok": "#2e7d32", "incorrect": "#f9a825", "hack_detected": "#c62828"}
FILES = ("verdicts.jsonl", "summary.json", "report.png", "report.html")


def _group_stats(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r.get("status", "?")] = statuses.get(r.get("status", "?"), 0) + 1
    ok_rows = [r for r in rows if r.get("status") == "ok"]
    speedups = [float(r["speedup"]) for r in ok_rows if r.get("speedup") is not None]
    vs_compile = [float(r["speedup_vs_compile"]) for r in ok_rows if r.get("speedup_vs_compile") is not None]
    timed = len(speedups)
    out: dict[str, Any] = {
        "tasks": n,
        "ok": len(ok_rows),
        "correct": sum(bool(r.get("correct")) for r in rows),
        "incorrect": statuses.get("incorrect", 0),
        "hacks": statuses.get("hack_detected", 0),
        "errors": sum(statuses.get(s, 0) for s in ERROR_STATUSES),
        "ok_share": len(ok_rows) / n if n else None,
        "statuses": dict(sorted(statuses.items())),
        "timed": timed,
        "mean_speedup": statistics.fmean(speedups) if speedups else None,
        "median_speedup": statistics.median(speedups) if speedups else None,
        "geomean_speedup": math.exp(statistics.fmean(math.log(s) for s in speedups)) if speedups else None,
        "median_speedup_vs_compile": statistics.median(vs_compile) if vs_compile else None,
        # KernelBench's fast_1: share of all tasks that are correct and faster than the baseline.
        "faster_than_eager": sum(s > 1 for s in speedups) / n if timed and n else None,
        "faster_than_compile": sum(s > 1 for s in vs_compile) / n if vs_compile and n else None,
    }
    return out


def _difficulty_key(row: Mapping[str, Any]) -> str:
    d = row.get("difficulty")
    return str(d) if d is not None else "unknown"


def summarize(rows: Sequence[Mapping[str, Any]], run: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Overall and per-difficulty statistics of `rows` (keys: tasks, ok, by_difficulty, ...)."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(_difficulty_key(r), []).append(r)
    order = sorted(groups, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))
    summary = _group_stats(rows)
    summary["by_difficulty"] = {k: _group_stats(groups[k]) for k in order}
    summary["run"] = dict(run or {})
    return summary


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None:
        return "-"
    if pct:
        return f"{100 * x:.0f}%"
    if isinstance(x, float):
        return f"{x:.2f}"
    return str(x)


def table_rows(summary: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-difficulty table (plus an 'all' row)."""
    header = ["difficulty", "tasks", "ok", "ok %", "incorrect", "hacks", "errors", "mean speedup",
              "median speedup", "faster than eager", "faster than compile"]
    rows = []
    for name, g in [*summary["by_difficulty"].items(), ("all", summary)]:
        rows.append([name, str(g["tasks"]), str(g["ok"]), _fmt(g["ok_share"], pct=True), str(g["incorrect"]),
                     str(g["hacks"]), str(g["errors"]), _fmt(g["mean_speedup"]), _fmt(g["median_speedup"]),
                     _fmt(g["faster_than_eager"], pct=True), _fmt(g["faster_than_compile"], pct=True)])
    return header, rows


def rich_table(summary: Mapping[str, Any], title: str = "KernelGym run") -> Any:
    """The per-difficulty table as a `rich.table.Table`."""
    from rich.table import Table

    header, rows = table_rows(summary)
    table = Table(title=title)
    for h in header:
        table.add_column(h, justify="left" if h == "difficulty" else "right")
    for i, r in enumerate(rows):
        table.add_row(*r, end_section=(i == len(rows) - 2))
    return table


def plot_png(summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> bytes | None:
    """PNG bytes: status shares per difficulty, plus speedups per difficulty when timed.

    None when matplotlib is not installed (the rest of the report does not need it).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")   # no display on servers; must precede pyplot
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    groups = list(summary["by_difficulty"])
    timed = summary.get("timed", 0) > 0
    fig, axes = plt.subplots(1, 2 if timed else 1, figsize=(11 if timed else 6.5, 4.2), squeeze=False)
    ax = axes[0][0]
    bottom = [0.0] * len(groups)
    present = [s for s in STATUS_ORDER if any(summary["by_difficulty"][g]["statuses"].get(s) for g in groups)]
    error_colours = iter(["#6d4c41", "#8e24aa", "#546e7a", "#1565c0", "#00838f", "#9e9d24"])
    for status in present:
        shares = [summary["by_difficulty"][g]["statuses"].get(status, 0) / max(1, summary["by_difficulty"][g]["tasks"])
                  for g in groups]
        ax.bar(groups, shares, bottom=bottom, label=status,
               color=STATUS_COLOURS.get(status) or next(error_colours, None))
        bottom = [b + s for b, s in zip(bottom, shares)]
    ax.set_ylim(0, 1)
    ax.set_xlabel("difficulty")
    ax.set_ylabel("share of tasks")
    ax.set_title("verdicts per difficulty")
    ax.legend(fontsize=8, loc="lower right")
    if timed:
        ax2 = axes[0][1]
        data = [[float(r["speedup"]) for r in rows if _difficulty_key(r) == g and r.get("status") == "ok"
                 and r.get("speedup") is not None] for g in groups]
        positions = list(range(1, len(groups) + 1))
        kept = [(p, d) for p, d in zip(positions, data) if d]
        if kept:
            ax2.boxplot([d for _, d in kept], positions=[p for p, _ in kept], widths=0.5, showfliers=False)
            for p, d in kept:
                ax2.scatter([p] * len(d), d, s=12, alpha=0.6, color="#1565c0")
        ax2.set_xticks(positions, groups)
        ax2.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        ax2.set_yscale("log")
        from matplotlib.ticker import FormatStrFormatter

        ax2.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
        ax2.yaxis.set_minor_formatter(FormatStrFormatter("%.3g"))
        ax2.set_xlabel("difficulty")
        ax2.set_ylabel("speedup vs eager (correct tasks)")
        ax2.set_title("speedup per difficulty")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def render_html(summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], png: bytes | None,
                title: str = "KernelGym run") -> str:
    """A self-contained HTML page: run settings, the summary table, the plot (inline), every task."""
    esc = html.escape
    header, trows = table_rows(summary)
    run = summary.get("run", {})
    settings = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(json.dumps(v) if not isinstance(v, str) else v)}</td></tr>"
                       for k, v in run.items())
    table = ("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"
             + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in trows) + "</table>")
    img = (f'<img alt="verdicts and speedups per difficulty" src="data:image/png;base64,'
           f'{base64.b64encode(png).decode()}">' if png else "<p>(no plot: matplotlib is not installed)</p>")
    task_rows = "".join(
        f"<tr class=\"{esc(str(r.get('status')))}\"><td>{esc(str(r.get('task_id')))}</td>"
        f"<td>{esc(_difficulty_key(r))}</td><td>{esc(' → '.join(r.get('ops') or []))}</td>"
        f"<td>{esc(str(r.get('status')))}</td><td>{esc(_fmt(r.get('speedup')))}</td>"
        f"<td>{esc(_fmt(r.get('speedup_vs_compile')))}</td><td>{esc(', '.join(r.get('reasons') or []))}</td>"
        f"<td>{esc((r.get('error') or '')[:200])}</td></tr>" for r in rows)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }}
th {{ background: #f3f3f3; }} td:first-child, th:first-child {{ text-align: left; }}
tr.ok td:nth-child(4) {{ color: #2e7d32; }} tr.hack_detected td:nth-child(4) {{ color: #c62828; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{esc(title)}</h1>
<h2>Settings</h2><table>{settings}</table>
<h2>Summary</h2>{table}
{img}
<h2>Tasks</h2>
<table><tr><th>task</th><th>difficulty</th><th>ops</th><th>status</th><th>speedup</th>
<th>vs compile</th><th>reasons</th><th>error</th></tr>{task_rows}</table>
</body></html>
"""


def write_report(out: str | Path, rows: Sequence[Mapping[str, Any]], run: Mapping[str, Any] | None = None,
                 title: str = "KernelGym run") -> dict[str, Any]:
    """Write verdicts.jsonl, summary.json, report.png (if matplotlib is there) and report.html into
    `out` (created if needed); returns the summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows, run)
    with open(out / "verdicts.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, default=str) + "\n" for r in rows)
    png = plot_png(summary, rows)
    summary["files"] = [n for n in FILES if n != "report.png" or png is not None]
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    if png is not None:
        (out / "report.png").write_bytes(png)
    (out / "report.html").write_text(render_html(summary, rows, png, title), encoding="utf-8")
    return summary


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows back from a verdicts.jsonl file."""
    rows: list[dict[str, Any]] = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{i}: not a JSON object: {exc.msg}") from None
    return rows
