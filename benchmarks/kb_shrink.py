"""KernelBench problems at CPU sizes: copies of a checkout's problems with their size constants
shrunk, so that the whole judged path (trace, compile, evaluate under Triton's interpreter) runs on
a CPU. The GPU runs judge KernelBench at its own sizes; this is the CPU check of the same code
paths before device time is spent on them (benchmarks/NOTES.md cites its figures).

What shrinks: integer literals above a cap in a problem's module-level assignments (``batch_size =
128``, ``layer_sizes = [16384, 16384]``) and in the bodies of ``get_inputs`` / ``get_init_inputs``
(``torch.rand(batch_size, 3, 224, 224)``). Small literals (kernel sizes, strides, groups, dims)
are below every cap and stay. A value `v` above the cap becomes the smallest n >= cap with n = v
(mod 8) and the powers of two of `v` up to the cap, and on a second try v's factors 3, 5 and 7 too
(`shrink_int`): odd sizes stay odd, channel counts can keep dividing by their group counts. Last,
the literals inside the model's classes shrink too (a level-3 network's layer widths). Each
problem goes through `ATTEMPTS` in order and keeps the first copy that builds
``Model(*get_init_inputs())`` and runs its forward on the CPU within `--max-elements` elements of
inputs, weights and outputs; a problem nothing fits (sizes fixed inside the model, such as VGG's
classifier) is named with the last attempt's error, not written.

The copies go to OUT/levelN/ (outside the repository: KernelBench's files are not the project's),
and OUT/kb_shrink.json says what each copy changed and why a problem was not written;
judge them with ``python -m benchmarks.kernelbench OUT --backend interpret``. Usage:
    python -m benchmarks.kb_shrink KERNELBENCH OUT [--levels 1,2,3] [--filter REGEX]
        [--max-elements 1048576] [--timeout 120] [--jobs 2]
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path
from typing import Any

from benchmarks._children import in_children
from benchmarks._kb_checkout import level_dirs, parse_levels
from benchmarks._output import write_json
from benchmarks.dot_smem import problem_paths

# 8 after 16: a 3-D problem whose literals at or below 16 stay is still over the element limit
CAPS = (16, 8, 32, 64)
# (cap, factors, deep): each cap first without keeping factors 3, 5, 7 (smaller), then keeping them
# (a channel count that must divide by its groups); the literals inside the model's classes last
ATTEMPTS = tuple((cap, factors, deep) for deep in (False, True) for cap in CAPS for factors in (False, True))
# the interpreter runs a 3-D transposed convolution of 2M outputs in over 120 s
MAX_ELEMENTS = 1 << 20
_FACTORS = (3, 5, 7)
_SIZE_FUNCTIONS = ("get_inputs", "get_init_inputs")


def shrink_int(v: int, cap: int, factors: bool = False) -> int:
    """`v` shrunk to about `cap` (unchanged when not above it), keeping its residue mod 8, its
    powers of two up to `cap` and, with `factors`, its factors 3, 5 and 7."""
    if v <= cap:
        return v
    p2 = v & -v
    step = min(p2, cap) if p2 >= 8 else 1
    keep = [q for q in _FACTORS if factors and v % q == 0]
    n = cap
    while not (n % 8 == v % 8 and n % step == 0 and all(n % q == 0 for q in keep)):
        n += 1
    return n


def _int_literals(node: ast.AST) -> list[ast.Constant]:
    """The positive integer literals in `node` (no bools)."""
    return [c for c in ast.walk(node) if isinstance(c, ast.Constant) and type(c.value) is int and c.value > 0]


def size_literals(src: str, deep: bool = False) -> list[ast.Constant]:
    """The literals `shrink_source` may change: in module-level assignments and in the bodies of
    ``get_inputs`` / ``get_init_inputs``; with `deep`, every one in the file (the layer widths
    a level-3 network fixes inside its classes)."""
    tree = ast.parse(src)
    if deep:
        return _int_literals(tree)
    out: list[ast.Constant] = []
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            out += _int_literals(node.value)
        elif isinstance(node, ast.FunctionDef) and node.name in _SIZE_FUNCTIONS:
            for stmt in node.body:
                out += _int_literals(stmt)
    return out


def shrink_source(src: str, cap: int, factors: bool = False, deep: bool = False) -> tuple[str, list[tuple[int, int]]]:
    """`src` with its size literals (`size_literals`) above `cap` shrunk (`shrink_int`), and the
    (old, new) pairs changed, in source order. The rest of the text (comments included) is kept
    as it was."""
    lines = src.splitlines(keepends=True)
    edits = []
    for c in size_literals(src, deep):
        new = shrink_int(c.value, cap, factors)
        if new != c.value and c.lineno == c.end_lineno:
            edits.append((c.lineno - 1, c.col_offset, c.end_col_offset, c.value, new))
    # right to left within a line, so earlier offsets stay valid
    for row, start, end, _old, new in sorted(edits, key=lambda e: (e[0], -e[1])):
        text = lines[row].encode()   # ast offsets count UTF-8 bytes
        lines[row] = (text[:start] + str(new).encode() + text[end:]).decode()
    changes = [(old, new) for _r, _s, _e, old, new in sorted(edits)]
    return "".join(lines), changes


def _check_job(src: str, max_elements: int) -> Any:
    """A job for `in_children`: build and run the problem `src` on the CPU and count its elements."""
    def job() -> dict[str, Any]:
        import torch

        torch.manual_seed(0)
        ns: dict[str, Any] = {"__name__": "kb_shrink_problem"}
        exec(compile(src, "<problem>", "exec"), ns)   # noqa: S102 - the user's KernelBench checkout
        init = ns["get_init_inputs"]()
        inputs = ns["get_inputs"]()

        def count(xs: Any) -> int:
            xs = xs if isinstance(xs, (list, tuple)) else [xs]
            return sum(x.numel() if isinstance(x, torch.Tensor) else count(x) if isinstance(x, (list, tuple)) else 0
                       for x in xs)

        n_in = count(inputs)
        if n_in > max_elements:   # before building: a model at full size may not fit this machine
            return {"elements": n_in, "error": f"inputs hold {n_in} elements (limit {max_elements})"}
        model = ns["Model"](*init)
        n_w = sum(p.numel() for p in model.state_dict().values())
        if n_in + n_w > max_elements:
            return {"elements": n_in + n_w, "error": f"inputs and weights hold {n_in + n_w} elements (limit {max_elements})"}
        with torch.no_grad():
            out = model(*inputs)
        total = n_in + n_w + count(out)
        if total > max_elements:
            return {"elements": total, "error": f"inputs, weights and outputs hold {total} elements (limit {max_elements})"}
        return {"elements": total}
    return job


def shrink_problems(files: list[Path], out_dir: Path, max_elements: int = MAX_ELEMENTS,
                    timeout: float = 120.0, jobs: int = 2) -> list[dict[str, Any]]:
    """Write the shrunk copy of each problem file under `out_dir` (same file name) and return a row
    per problem: ``cap`` (the cap kept, None when none fitted), ``changes`` and ``error`` (why the
    last cap tried failed)."""
    rows: list[dict[str, Any]] = [{"problem": f.name, "cap": None, "changes": [], "error": None} for f in files]
    todo = list(range(len(files)))
    sources = {i: files[i].read_text() for i in todo}
    tried: dict[int, set[str]] = {i: set() for i in todo}
    for cap, factors, deep in ATTEMPTS:
        if not todo:
            break
        shrunk = {i: shrink_source(sources[i], cap, factors, deep) for i in todo}
        same = [i for i in todo if shrunk[i][0] in tried[i]]   # this copy failed already
        todo = [i for i in todo if i not in same]
        for i in todo:
            tried[i].add(shrunk[i][0])
        results = in_children([_check_job(shrunk[i][0], max_elements) for i in todo], timeout, jobs)
        left = []
        for i, res in zip(todo, results, strict=True):
            if res.get("error") or res.get("timed_out"):
                how = f"cap {cap}{' keeping factors' if factors else ''}{', inside the model too' if deep else ''}"
                rows[i]["error"] = f"{how}: {res.get('error') or 'timed out'}"
                left.append(i)
                continue
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / files[i].name).write_text(shrunk[i][0])
            rows[i].update(cap=cap, deep=deep, changes=shrunk[i][1], error=None, elements=res.get("elements"))
        todo = left + same
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.kb_shrink", description=__doc__.split("\n\n")[0])
    ap.add_argument("path", type=Path, help="a KernelBench checkout (levelN folders)")
    ap.add_argument("out", type=Path, help="where the shrunk copies go (OUT/levelN/); not inside the checkout")
    ap.add_argument("--levels", type=parse_levels, default=[1, 2, 3])
    ap.add_argument("--filter", default=None, help="only problems whose file name matches (regex)")
    ap.add_argument("--max-elements", type=int, default=MAX_ELEMENTS,
                    help="elements of inputs, weights and outputs a copy may hold (default 2**20)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to build and run one copy")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    for name in ("max_elements", "jobs"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.timeout > 0:
        ap.error(f"--timeout must be > 0, got {args.timeout}")
    dirs = level_dirs(args.path, args.levels)
    if any(args.out.resolve() == d.resolve() or d.resolve() in args.out.resolve().parents for d in dirs.values()):
        raise SystemExit(f"kb_shrink: OUT {args.out} is inside the checkout's level folders; give another folder")
    try:
        re.compile(args.filter or "")
    except re.error as exc:
        raise SystemExit(f"kb_shrink: --filter {args.filter!r} is not a regex: {exc}") from None
    print(f"{'level':>5} {'problems':>8} " + " ".join(f"{'cap ' + str(c):>7}" for c in CAPS)
          + f" {'inside model':>12} {'not fitted':>10}")
    report: dict[str, Any] = {"benchmark": "kb_shrink", "path": str(args.path), "max_elements": args.max_elements,
                              "levels": {}}
    for lv, folder in dirs.items():
        files = [Path(f) for f in problem_paths([str(folder)], args.filter, None)]
        rows = shrink_problems(files, args.out / f"level{lv}", args.max_elements, args.timeout, args.jobs)
        by_cap = [sum(1 for r in rows if r["cap"] == c) for c in CAPS]
        deep = sum(1 for r in rows if r.get("deep"))
        missed = [r for r in rows if r["cap"] is None]
        print(f"{lv:>5} {len(rows):>8} " + " ".join(f"{n:>7}" for n in by_cap) + f" {deep:>12} {len(missed):>10}")
        for r in missed:
            print(f"    level {lv} {r['problem']}: {r['error']}")
        report["levels"][str(lv)] = rows
    # what each copy changed (old, new literal pairs) and why a problem was not written
    write_json(args.out / "kb_shrink.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
