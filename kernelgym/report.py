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


def _task_seconds(row: Mapping[str, Any]) -> float | None:
    """Wall seconds a task took: the policy and its evaluations (`elapsed_s`), else the verdict's."""
    for key in ("elapsed_s", "duration_s"):
        if isinstance(row.get(key), (int, float)) and row[key] >= 0:
            return float(row[key])
    return None


def _box(ax: Any, groups: list[str], data: list[list[float]], offset: float, colour: str, label: str,
         width: float) -> None:
    """Boxes of `data` per difficulty at x = i + offset, every point drawn over its box."""
    kept = [(i + offset, d) for i, d in enumerate(data) if d]
    if not kept:
        return
    parts = ax.boxplot([d for _, d in kept], positions=[p for p, _ in kept], widths=width, showfliers=False,
                       patch_artist=True, manage_ticks=False)
    for box in parts["boxes"]:
        box.set(facecolor=colour, alpha=0.25, edgecolor=colour)
    for p, d in kept:
        ax.scatter([p] * len(d), d, s=10, alpha=0.7, color=colour, zorder=3)
    ax.scatter([], [], color=colour, label=label)   # one legend entry per series
    ax.set_xticks(range(len(groups)), groups)


def plot_png(summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> bytes | None:
    """PNG bytes of what a reader wants first. Timed runs (GPU): the speedup distribution per
    difficulty against eager and against torch.compile; untimed runs (CPU): the time per task per
    difficulty. Beside it in both: the status mix per difficulty. Legends sit outside the axes.

    None when matplotlib is not installed (the rest of the report does not need it).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")   # no display on servers; must precede pyplot
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from matplotlib.ticker import FormatStrFormatter

    groups = list(summary["by_difficulty"])
    by_group = {g: [r for r in rows if _difficulty_key(r) == g] for g in groups}
    timed = summary.get("timed", 0) > 0
    fig, (ax, axs) = plt.subplots(1, 2, figsize=(12, 4.4), gridspec_kw={"width_ratios": [3, 2]})
    if timed:
        def speedups(g: str, key: str) -> list[float]:
            return [float(r[key]) for r in by_group[g] if r.get("status") == "ok" and r.get(key) is not None]

        _box(ax, groups, [speedups(g, "speedup") for g in groups], -0.18, "#1565c0", "vs eager", 0.3)
        _box(ax, groups, [speedups(g, "speedup_vs_compile") for g in groups], 0.18, "#ef6c00", "vs torch.compile",
             0.3)
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%.3g"))
        ax.set_ylabel("speedup (correct tasks; > 1 is faster)")
        ax.set_title("speedup per difficulty")
    else:
        times = [[t for r in by_group[g] if (t := _task_seconds(r)) is not None] for g in groups]
        _box(ax, groups, times, 0.0, "#1565c0", "one task", 0.5)
        ax.set_ylim(bottom=0)
        ax.set_ylabel("seconds per task (policy + evaluation)")
        ax.set_title("time per task (not timed: no GPU)")
    ax.set_xlabel("difficulty")
    ax.set_xlim(-0.6, len(groups) - 0.4)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    bottom = [0.0] * len(groups)
    present = [st for st in STATUS_ORDER if any(summary["by_difficulty"][g]["statuses"].get(st) for g in groups)]
    present += sorted({st for g in groups for st in summary["by_difficulty"][g]["statuses"]} - set(present))
    error_colours = iter(["#6d4c41", "#8e24aa", "#546e7a", "#1565c0", "#00838f", "#9e9d24", "#ad1457"])
    for status in present:
        counts = [summary["by_difficulty"][g]["statuses"].get(status, 0) for g in groups]
        shares = [c / max(1, summary["by_difficulty"][g]["tasks"]) for c, g in zip(counts, groups)]
        axs.bar(groups, shares, bottom=bottom, label=f"{status} ({sum(counts)})",
                color=STATUS_COLOURS.get(status) or next(error_colours, None))
        bottom = [b + x for b, x in zip(bottom, shares)]
    axs.set_ylim(0, 1)
    axs.set_xlabel("difficulty")
    axs.set_ylabel("share of tasks")
    axs.set_title("status mix")
    axs.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")   # keeps the outside legends
    plt.close(fig)
    return buf.getvalue()


def candidate_file(task_id: Any) -> str:
    """Where `kernelgym run` writes a task's judged source, relative to the report folder."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(task_id))
    return f"candidates/{safe}.py"


def render_html(summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], png: bytes | None,
                title: str = "KernelGym run", links: Mapping[str, str] | None = None) -> str:
    """A self-contained HTML page: run settings, the summary table, the plot (inline), every task
    with its time and, where `links` has one (task id -> relative path), a link to its candidate."""
    esc = html.escape
    links = links or {}

    def task_cell(r: Mapping[str, Any]) -> str:
        tid = str(r.get("task_id"))
        href = links.get(tid)
        return f'<a href="{esc(href)}">{esc(tid)}</a>' if href else esc(tid)

    def program(r: Mapping[str, Any]) -> str:
        return str(r.get("dag") or " → ".join(r.get("ops") or []))
    header, trows = table_rows(summary)
    run = summary.get("run", {})
    settings = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(json.dumps(v) if not isinstance(v, str) else v)}</td></tr>"
                       for k, v in run.items())
    table = ("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"
             + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in trows) + "</table>")
    img = (f'<img alt="verdicts and speedups per difficulty" src="data:image/png;base64,'
           f'{base64.b64encode(png).decode()}">' if png else "<p>(no plot: matplotlib is not installed)</p>")
    task_rows = "".join(
        f"<tr class=\"{esc(str(r.get('status')))}\"><td>{task_cell(r)}</td>"
        f"<td>{esc(_difficulty_key(r))}</td><td>{esc(program(r))}</td>"
        f"<td>{esc(str(r.get('status')))}</td><td>{esc(_fmt(_task_seconds(r)))}</td><td>{esc(_fmt(r.get('speedup')))}</td>"
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
<table><tr><th>task</th><th>difficulty</th><th>program</th><th>status</th><th>seconds</th><th>speedup</th>
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
    links = {str(r.get("task_id")): candidate_file(r.get("task_id")) for r in rows
             if (out / candidate_file(r.get("task_id"))).is_file()}
    (out / "report.html").write_text(render_html(summary, rows, png, title, links), encoding="utf-8")
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
