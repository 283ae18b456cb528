"""A KernelBench checkout the user has: its levels' problem folders, its published baseline times,
a level's problems in KernelBench's order (the project ships none of its files)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TIMING_FILES = {"eager": "baseline_time_torch.json", "compile": "baseline_time_torch_compile_inductor_default.json"}


def parse_levels(text: str) -> list[int]:
    """An argparse type: levels like ``1,2,3`` (sorted, each once)."""
    import argparse

    try:
        out = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--levels takes numbers like 1,2,3, got {text!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"--levels takes numbers >= 1 like 1,2,3, got {text!r}")
    return out


def level_dirs(path: Path, levels: Sequence[int]) -> dict[int, Path]:
    """The problem folder of each level: PATH/levelN or PATH/KernelBench/levelN."""
    out = {}
    for lv in levels:
        for cand in (path / f"level{lv}", path / "KernelBench" / f"level{lv}"):
            if cand.is_dir():
                out[lv] = cand
                break
        else:
            raise SystemExit(f"kernelbench: no level{lv} folder in {path} (nor in {path / 'KernelBench'})")
    return out


def published_timings(path: Path, hardware: str) -> dict[str, dict[tuple[int, str], float]]:
    """KernelBench's published baseline times (ms, the mean of its trials) per (level, file name):
    ``{"eager": {...}, "compile": {...}}`` from PATH/results/timing/<hardware>/ (empty when absent)."""
    out: dict[str, dict[tuple[int, str], float]] = {}
    folder = path / "results" / "timing" / hardware
    for kind, name in TIMING_FILES.items():
        table: dict[tuple[int, str], float] = {}
        f = folder / name
        if f.is_file():
            try:
                data = json.loads(f.read_text())
            except ValueError as exc:
                raise SystemExit(f"kernelbench: {f} is not JSON: {exc}") from None
            for level, problems in data.items():
                m = re.fullmatch(r"level(\d+)", str(level))
                if not m or not isinstance(problems, dict):
                    continue
                for fname, rec in problems.items():
                    if isinstance(rec, dict) and isinstance(rec.get("mean"), (int, float)):
                        table[(int(m[1]), str(fname))] = float(rec["mean"])
        out[kind] = table
    return out


def load_level(folder: Path, filt: str | None, limit: int | None) -> list[Any]:
    """The level's problems in KernelBench's numeric order, filtered by a substring or regex of the
    file name, the first `limit` of them."""
    from kernelgym.task import load_suite

    suite = load_suite(folder)
    for err in suite.errors:
        print(f"kernelbench: skipping {err}", file=sys.stderr)
    tasks = sorted(suite, key=lambda t: (int(m[1]) if (m := re.match(r"(\d+)_", t.id)) else 1 << 30, t.id))
    if filt:
        rx = re.compile(filt)
        tasks = [t for t in tasks if rx.search(t.id)]
    return tasks[:limit] if limit else tasks
