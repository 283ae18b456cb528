"""The layer rule of docs/ARCHITECTURE.md, checked from the source: no module imports a higher
layer (lazy imports inside functions count), and no import cycle exists between modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (prefix, layer): the longest matching prefix of a dotted module name decides its layer.
LAYERS: tuple[tuple[str, int], ...] = (
    ("kernelgym.version", 0),
    ("kernelgym.pyast", 0),
    ("kernelgym.examples", 0),
    ("kernelgym.ops", 0),
    ("kernelgym.graph", 0),  # the task graph: catalog ops over inputs, below Task
    ("kernelgym.task", 1),
    ("kernelgym.sampler", 2),
    ("kernelgym.evaluation", 3),
    ("kernelgym.cluster", 4),
    ("kernelgym.rewards", 5),
    ("kernelgym.envs", 6),
    ("kernelgym.report", 7),
    ("kernelgym.runner", 7),
    ("kernelgym.cli", 7),
    ("kernelgym.ops.cli", 7),  # each room's subcommand belongs to the command line
    ("kernelgym.sampler.cli", 7),
    ("kernelgym.evaluation.cli", 7),
    ("kernelgym.benchmarks_cli", 7),
    ("kernelgym.__main__", 7),
    ("kernelgym", 7),  # the package's face
    ("envs_registry", 7),
    ("policies", 8),
    ("train", 9),
    ("benchmarks", 9),
)
PACKAGES = ("kernelgym", "policies", "train", "benchmarks")


def layer(module: str) -> int | None:
    best = None
    for prefix, n in LAYERS:
        if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, n)
    return None if best is None else best[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    mods = {"envs_registry": ROOT / "envs_registry.py"}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            mods[module_name(path)] = path
    return mods


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that `name` imports anywhere in its file (lazy imports included)."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            # ``from a.b import c``: the module a.b.c when there is one, else a.b (c is a name in it)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for t in targets:
            # the longest known module the import names (``from a.b import c``: a.b.c if a module, else a.b)
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = project_modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def test_every_module_has_a_layer(graph):
    assert [m for m in graph if layer(m) is None] == []


def test_no_module_imports_a_higher_layer(graph):
    upward = sorted(f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
                    for m, targets in graph.items() for t in targets
                    # a package's __init__ re-exporting its own modules is not upward
                    if layer(t) > layer(m) and not t.startswith(m + "."))
    assert upward == []


def test_no_import_cycles(graph):
    # Tarjan's strongly connected components; a package importing its own submodules is not a cycle.
    edges = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """The rule would pass vacuously if imports inside functions or relative imports were missed."""
    pkg = tmp_path / "kernelgym" / "ops"
    pkg.mkdir(parents=True)
    src = pkg / "x.py"
    src.write_text("from . import spec\n\ndef f():\n    from kernelgym.envs import single\n")
    known = {"kernelgym.ops.spec", "kernelgym.envs.single", "kernelgym.envs", "kernelgym.ops.x"}
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert imports_of(module_name(src), src, known) == {"kernelgym.ops.spec", "kernelgym.envs.single"}
    finally:
        ROOT = saved
