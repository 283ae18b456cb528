"""The red-team files and what each expects, read from their docstrings.

Each file under hacks/ or legit/ starts with a docstring holding ``Task:``, ``Mode:``, ``Expect:``
(``ok`` or one or more ``guard:<name>``) and, for hacks, ``Layer:``: ``static`` (the AST layer must
catch it), ``runtime`` (written to slip past the AST layer; the runtime layer must catch it with
static checks off), ``both`` (each layer alone must catch it) or ``gpu`` (runtime, CUDA only).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parent


@dataclass(frozen=True)
class Case:
    id: str
    path: Path
    task: Path
    mode: str
    expect: tuple[str, ...]   # () = must be accepted
    layer: str

    @property
    def legit(self) -> bool:
        return not self.expect

    @property
    def source(self) -> str:
        return self.path.read_text()

    @property
    def task_source(self) -> str:
        return self.task.read_text()


def _parse(path: Path) -> Case:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    meta = {}
    for line in doc.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("Task", "Mode", "Expect", "Layer"):
            meta[key.strip()] = value.strip()
    expect = () if meta["Expect"] == "ok" else tuple(meta["Expect"].split())
    return Case(id=f"{path.parent.name}/{path.stem}", path=path, task=ROOT / "tasks" / f"{meta['Task']}.py",
                mode=meta.get("Mode", "strict"), expect=expect, layer=meta.get("Layer", "both"))


def cases() -> list[Case]:
    return [_parse(p) for d in ("legit", "hacks") for p in sorted((ROOT / d).glob("*.py"))]
