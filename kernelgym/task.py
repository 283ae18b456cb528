"""Tasks in the KernelBench file format, and task suites loaded from directories.

A task file defines ``class Model(nn.Module)``, ``get_inputs()`` and ``get_init_inputs()``. Tasks
made by the sampler also carry their graph and metadata, written beside the file as
``<id>.json`` so that a directory written by ``kernelgym sample`` loads back whole.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import hashlib
import json
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernelgym.graph import Graph
from kernelgym.pyast import parse, syntax_problem

REQUIRED_NAMES = ("Model", "get_inputs", "get_init_inputs")
MAX_SOURCE_BYTES = 1_000_000


class TaskFormatError(ValueError):
    """A task source that is not valid KernelBench format; `where` names the file or task."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


def check_source(source: str, where: str = "<task>") -> None:
    """Raise `TaskFormatError` unless `source` parses and defines Model, get_inputs, get_init_inputs.

    The check is static (no code runs), so loading a suite never executes task code.
    """
    if not isinstance(source, str):
        raise TaskFormatError(where, f"source must be str, got {type(source).__name__}")
    if not source.strip():
        raise TaskFormatError(where, "file is empty")
    if len(source.encode()) > MAX_SOURCE_BYTES:
        raise TaskFormatError(where, f"source is larger than {MAX_SOURCE_BYTES} bytes")
    try:
        tree = parse(source, filename=where)
    except SyntaxError as exc:
        raise TaskFormatError(where, syntax_problem(exc, source)) from None
    defined: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            defined[node.name] = "class"
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            defined[node.name] = "function"
    missing = [n for n in REQUIRED_NAMES if n not in defined]
    if missing:
        raise TaskFormatError(where, f"missing top-level definition(s): {', '.join(missing)}")
    if defined["Model"] != "class":
        raise TaskFormatError(where, "Model must be a class")
    for fn in ("get_inputs", "get_init_inputs"):
        if defined[fn] != "function":
            raise TaskFormatError(where, f"{fn} must be a function")


def source_hash(source: str) -> str:
    """Stable short hash of a source text (used for task ids and caches)."""
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def exec_source(source: str, module_name: str = "kernelgym_task", filename: str | None = None) -> types.ModuleType:
    """Execute `source` in a fresh module namespace and return the module (runs the code!)."""
    module = types.ModuleType(module_name)
    module.__file__ = filename or f"<{module_name}>"
    code = compile(source, module.__file__, "exec")
    exec(code, module.__dict__)  # noqa: S102 - executing task code is the point
    return module


@dataclass(frozen=True)
class Task:
    """One task: KernelBench-format source plus, for sampled tasks, its graph and metadata.

    `graph` is the program as a `kernelgym.graph.Graph` (None for hand-written tasks; its JSON
    form, `Graph.to_dict`, is accepted too and read into a Graph); `meta` holds estimates and
    provenance (flops, bytes, sizes profile, dtype, path, ...).
    """

    id: str
    source: str
    name: str = ""
    difficulty: int | None = None
    ops: tuple[str, ...] = ()
    seed: int | None = None
    graph: Graph | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_source(self.source, self.id or "<task>")
        if self.graph is not None and not isinstance(self.graph, Graph):
            # the one place the JSON form (task files, dataset rows) becomes a Graph
            object.__setattr__(self, "graph", _graph_of(self.graph, self.id or "<task>"))

    @property
    def hash(self) -> str:
        return source_hash(self.source)

    @classmethod
    def from_source(cls, source: str, id: str | None = None, **kw: Any) -> Task:
        """A task from KernelBench-format source text (validated statically)."""
        check_source(source, id or "<task>")
        return cls(id=id or f"task-{source_hash(source)}", source=source, **kw)

    @classmethod
    def from_file(cls, path: str | Path) -> Task:
        """Load one KernelBench-format file; a `<stem>.json` sidecar adds graph and metadata."""
        path = Path(path)
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TaskFormatError(str(path), f"cannot read file: {exc}") from None
        check_source(source, str(path))
        sidecar = path.with_suffix(".json")
        fields: dict[str, Any] = {"id": path.stem, "name": path.stem, "meta": {"path": str(path)}}
        if sidecar.exists():
            try:
                data = json.loads(sidecar.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise TaskFormatError(str(sidecar), f"unreadable metadata: {exc}") from None
            if not isinstance(data, dict):
                raise TaskFormatError(str(sidecar), "metadata must be a JSON object")
            fields.update(_fields_from_dict(data, str(sidecar)))
            fields["meta"] = {**fields.get("meta", {}), "path": str(path)}
        return cls(source=source, **fields)

    def to_dict(self, with_source: bool = True) -> dict[str, Any]:
        """The JSON-able form (`from_dict` reads it back); the graph as `Graph.to_dict`."""
        # Field by field rather than dataclasses.asdict, which would deep-copy the graph only to
        # have it replaced by its JSON form.
        d = {f.name: copy.deepcopy(getattr(self, f.name)) if f.name != "graph" else None
             for f in dataclasses.fields(self)}
        d["ops"] = list(self.ops)
        d["graph"] = self.graph.to_dict() if self.graph is not None else None
        d["meta"] = dict(d["meta"])
        if not with_source:
            d.pop("source")
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Task:
        if "source" not in data:
            raise TaskFormatError(str(data.get("id", "<task>")), "task dict has no 'source'")
        return cls(source=data["source"], **_fields_from_dict(data, str(data.get("id", "<task>"))))

    def write(self, directory: str | Path) -> Path:
        """Write `<id>.py` and, when there is a graph or metadata, `<id>.json`; return the .py path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.id}.py"
        path.write_text(self.source, encoding="utf-8")
        if self.graph is not None or self.meta or self.difficulty is not None:
            sidecar = self.to_dict(with_source=False)
            sidecar["meta"] = {k: v for k, v in sidecar["meta"].items() if k != "path"}
            path.with_suffix(".json").write_text(json.dumps(sidecar, indent=1, sort_keys=True) + "\n")
        return path

    def instantiate(self) -> types.ModuleType:
        """Execute the source in a fresh module (runs task code in this process)."""
        return exec_source(self.source, f"kernelgym_task_{self.hash}", filename=f"<task {self.id}>")


_TASK_FIELDS = {f.name for f in dataclasses.fields(Task)} - {"source"}


def _fields_from_dict(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    unknown = set(data) - _TASK_FIELDS - {"source"}
    if unknown:
        raise TaskFormatError(where, f"unknown task field(s): {', '.join(sorted(unknown))}")
    out = {k: v for k, v in data.items() if k in _TASK_FIELDS}
    if "ops" in out:
        out["ops"] = tuple(out["ops"])
    if out.get("graph") is not None:
        out["graph"] = _graph_of(out["graph"], where)
    return out


def _graph_of(value: Any, where: str) -> Graph:
    """A task's graph from its JSON form; `TaskFormatError` naming `where` when it is not one."""
    if isinstance(value, Graph):
        return value
    if not isinstance(value, Mapping):
        raise TaskFormatError(where, f"graph must be a Graph or its JSON form, got {type(value).__name__}")
    try:
        return Graph.from_dict(value)
    except ValueError as exc:
        raise TaskFormatError(where, f"graph: {exc}") from None


@dataclass
class Suite:
    """Tasks loaded from a directory; files that failed to load are in `errors`, not lost."""

    path: Path
    tasks: list[Task]
    errors: list[TaskFormatError]

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i: int) -> Task:
        return self.tasks[i]


def load_suite(path: str | Path, strict: bool = False, recursive: bool = False) -> Suite:
    """Load every ``*.py`` task under `path` (sorted by name).

    A malformed file is reported in `Suite.errors` with its path and problem and the rest still
    load; with `strict=True` the first problem raises instead.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"task suite directory does not exist: {root}")
    if root.is_file():
        files = [root]
    else:
        pattern = "**/*.py" if recursive else "*.py"
        files = sorted(p for p in root.glob(pattern) if p.name != "__init__.py")
    tasks: list[Task] = []
    errors: list[TaskFormatError] = []
    seen: dict[str, Path] = {}
    for file in files:
        try:
            task = Task.from_file(file)
            if task.id in seen:
                raise TaskFormatError(str(file), f"duplicate task id {task.id!r} (also {seen[task.id]})")
        except TaskFormatError as exc:
            if strict:
                raise
            errors.append(exc)
            continue
        seen[task.id] = file
        tasks.append(task)
    return Suite(path=root, tasks=tasks, errors=errors)
