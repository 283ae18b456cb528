"""Writing a benchmark's JSON report."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_json(path: str | Path, report: Any, default: Callable[[Any], Any] | None = None) -> Path:
    """Write `report` as indented JSON (its folder made first) and say so: ``wrote PATH``."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=default) + "\n")
    print(f"wrote {out}")
    return out
