"""Launch-parameter rewriting for any Triton source (compiler output or an LLM's reply).

`find_knobs(source)` locates, with the AST, the tunable launch parameters of every ``@triton.jit``
kernel launched as ``kernel[grid](...)``:

- block sizes: ``tl.constexpr`` parameters named like a block or tile (``BLOCK``, ``BLOCK_M``,
  ``XBLOCK``, ``TILE_N``, ``BM``...) whose value is a power-of-two integer literal, given at the
  launch (by keyword or position), through a name bound once to a literal (a local, a module
  constant, ``self.attr``), or taken from the parameter's default;
- ``num_warps`` and ``num_stages`` launch keywords (added to the launch when absent).

A block size often also appears in the grid (``triton.cdiv(n, 64)``, ``(n + 63) // 64``): those
literals are tied to the parameter they divide by, using the kernel's own ``tl.program_id(axis) *
BLOCK`` products to tell which grid axis belongs to which parameter; parameters that still cannot
be told apart (two of them with the same value dividing the same grid) become one joint knob, so
every rewrite keeps grid and block consistent. Grids written as ``lambda meta: ...`` need nothing.

`rewrite(source, {knob: value})` splices the new values into the original text (comments and
layout survive, unlike ``ast.unparse``); `variants(source, limit)` lists neighbouring configs.
Autotuned kernels (``@triton.autotune``) only expose knobs passed literally at their launches:
their configs already do the search, and num_warps at the launch would clash with them.
"""

from __future__ import annotations

import ast
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from kernelgym.pyast import decorator_names, dotted, parse
from policies.smem import SMEM_BUDGET, over_budget

_BLOCK_NAME = re.compile(r"(?i)block|tile|^b_?[mnk]$")
KINDS = ("block", "num_warps", "num_stages")
WARPS = (1, 2, 4, 8, 16)
STAGES = (1, 2, 3, 4, 5)
# Triton's defaults when a launch does not pass them (CUDA backend).
LAUNCH_DEFAULTS = {"num_warps": 4, "num_stages": 3}
BLOCK_MIN, BLOCK_MAX = 16, 4096


class LaunchError(ValueError):
    """The source cannot be analysed or the requested rewrite is invalid."""


@dataclass(frozen=True)
class Knob:
    """One tunable launch parameter (or several tied ones that must change together)."""

    name: str                    # e.g. "add_kernel.BLOCK", "mm_kernel.BM+BN", "add_kernel.num_warps"
    kind: str                    # block | num_warps | num_stages
    value: int                   # current value
    choices: tuple[int, ...]     # values worth trying, current included
    params: tuple[str, ...]      # "kernel.PARAM" entries this knob sets


@dataclass(frozen=True)
class Variant:
    """A rewritten source and the knob changes that made it."""

    changes: dict[str, int]
    source: str


@dataclass
class _Site:
    start: int
    end: int
    kind: str          # "value" (the literal), "minus1" (value - 1), "insert" (", NAME=value")
    param: str = ""
    lead: str = ", "


@dataclass
class _Occ:
    """One (kernel, parameter) at one launch: its value and the text sites holding it."""

    kernel: str
    param: str
    kind: str
    value: int
    launch: int
    sites: list[_Site] = field(default_factory=list)


@dataclass
class _Kernel:
    name: str
    params: list[str]
    constexpr: set[str]
    defaults: dict[str, ast.expr]
    autotuned: bool
    heuristic: set[str]       # parameters `@triton.heuristics` computes (launch values are overridden)
    axis_params: dict[int, set[str]]


@dataclass
class _Launch:
    kernel: str
    call: ast.Call
    grid: ast.expr
    func: ast.FunctionDef | ast.AsyncFunctionDef | None
    cls: ast.ClassDef | None


# -- public API ----------------------------------------------------------------------------------
def find_knobs(source: str) -> list[Knob]:
    """The tunable launch parameters of `source` (bare code or a reply with a fenced block)."""
    return [k for k, _ in _analyse(_code(source))[1]]


def rewrite(source: str, changes: Mapping[str, int]) -> str:
    """Return the code of `source` with each knob in `changes` set to its value.

    Raises `LaunchError` for an unknown knob (the message lists the known ones), a value that is
    not a positive int, a block size that is not a power of two, or a num_warps that is not one.
    """
    text, knobs = _analyse(_code(source))
    by_name = {k.name: (k, sites) for k, sites in knobs}
    edits: list[tuple[int, int, int, str]] = []   # (start, end, sequence, new text)
    seen: set[tuple[int, int, str]] = set()
    for name, value in changes.items():
        if name not in by_name:
            known = ", ".join(sorted(by_name)) or "none"
            raise LaunchError(f"unknown launch knob {name!r}; this source has: {known}")
        knob, sites = by_name[name]
        _check_value(knob, value)
        if value == knob.value:
            continue
        for s in sites:
            key = (s.start, s.end, s.kind + s.param)
            if key in seen:
                continue
            seen.add(key)
            new = {"insert": f"{s.lead}{s.param}={value}", "minus1": str(value - 1)}.get(s.kind, str(value))
            edits.append((s.start, s.end, len(edits), new))
    # Right to left, so earlier offsets stay valid; two inserts at one spot keep their order.
    for start, end, _, new in sorted(edits, key=lambda e: (e[0], e[2]), reverse=True):
        text = text[:start] + new + text[end:]
    try:
        parse(text)   # kernelgym.pyast: safe beside the evaluator's parsing threads (gh-106905)
    except SyntaxError as exc:  # a bug here, not in the input: say so plainly
        raise LaunchError(f"rewrite produced invalid Python (line {exc.lineno}: {exc.msg})") from None
    return text


def kernel_weights(source: str) -> dict[str, int]:
    """A static guess of which ``@triton.jit`` kernels do the most work: 2 for a kernel calling
    ``tl.dot`` (matmuls, convolutions: compute-bound, sensitive to tiles and stages), 1 for one
    with a loop (reductions, rows), 0 for the rest (one pass over memory). Search orders launch
    moves by it: on an H200 a budget of 8 evaluations went to the knobs of a gelu and an rsqrt
    kernel (source order) while the task's matmul, the one slower than eager, kept its tiles."""
    out: dict[str, int] = {}
    for fn in ast.walk(parse(_code(source))):
        if isinstance(fn, ast.FunctionDef) and _kernel_info(fn) is not None:
            calls = {dotted(n.func).split(".")[-1] for n in ast.walk(fn) if isinstance(n, ast.Call)}
            loops = any(isinstance(n, (ast.For, ast.While)) for n in ast.walk(fn))
            out[fn.name] = 2 if "dot" in calls else 1 if loops else 0
    return out


def neighbours(knob: Knob) -> list[int]:
    """The knob's other choices, nearest first (in log2 steps; larger first on ties)."""
    import math

    others = [c for c in knob.choices if c != knob.value]
    return sorted(others, key=lambda c: (abs(math.log2(c) - math.log2(knob.value)), -c))


def variants(source: str, limit: int = 8, kinds: Iterable[str] = KINDS,
             exclude: Iterable[str] = (), weights: Mapping[str, float] | None = None,
             smem_budget: int | None = SMEM_BUDGET, element_bytes: int = 4) -> list[Variant]:
    """Up to `limit` distinct rewrites of `source`: single-knob moves to the nearest choices first
    (round-robin over knobs, the heaviest kernels' first), then pairs of single moves. `kinds`
    restricts the knob kinds (e.g. ``("block",)`` where num_warps cannot matter); sources in
    `exclude` are skipped. `weights`: kernel name -> cost, from a policy that knows its kernels
    (`CompilerPolicy.kernel_costs`); kernels it does not name rank below those it does, in
    `kernel_weights` order. Rewrites with a tl.dot launch whose shared memory estimate
    (`policies.smem`, loads of `element_bytes`-byte elements: 4 for fp32 tasks, 2 for fp16 /
    bf16) exceeds `smem_budget` bytes are skipped: the GPU would refuse them (None: no check)."""
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise LaunchError(f"unknown knob kind(s) {bad}; expected some of {KINDS}")
    if limit <= 0:
        return []
    code = _code(source)
    static = kernel_weights(code)
    given = dict(weights or {})

    def weight(kernel: str) -> tuple[int, float, int]:
        return (kernel in given, given.get(kernel, 0.0), static.get(kernel, 0))

    # Heaviest kernels' knobs first (stable): with a small budget, the moves that can matter most.
    knobs = sorted((k for k in find_knobs(code) if k.kind in kinds),
                   key=lambda k: max(weight(p.split(".")[0]) for p in k.params), reverse=True)
    seen = {code, *exclude}
    out: list[Variant] = []

    def add(changes: dict[str, int]) -> bool:
        new = rewrite(code, changes)
        if new not in seen:
            seen.add(new)
            if smem_budget is None or not over_budget(new, smem_budget, element_bytes):
                out.append(Variant(dict(changes), new))
        return len(out) >= limit

    moves = [[(k.name, v) for v in neighbours(k)] for k in knobs]
    singles = [m for m in itertools.chain.from_iterable(itertools.zip_longest(*moves)) if m is not None]
    for name, v in singles:
        if add({name: v}):
            return out
    firsts = [m[0] for m in moves if m]
    for (a, va), (b, vb) in itertools.combinations(firsts, 2):
        if add({a: va, b: vb}):
            return out
    return out


# -- analysis ------------------------------------------------------------------------------------
def _code(source: str) -> str:
    if not isinstance(source, str):
        raise LaunchError(f"source must be a str, got {type(source).__name__}")
    if "```" in source or "~~~" in source:
        from kernelgym.evaluation.extract import FormatError, extract_code

        try:
            return extract_code(source).code
        except FormatError as exc:
            raise LaunchError(str(exc)) from None
    return source


def _check_value(knob: Knob, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise LaunchError(f"{knob.name}: value must be a positive int, got {value!r}")
    if knob.kind in ("block", "num_warps") and value & (value - 1):
        raise LaunchError(f"{knob.name}: {knob.kind} must be a power of two, got {value}")


def _int(node: ast.AST | None) -> int | None:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    return None


class _Text:
    """Maps AST (line, UTF-8 byte column) positions to offsets in the source string."""

    def __init__(self, text: str):
        self.text = text
        self.lines = text.splitlines(keepends=True)
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))

    def off(self, lineno: int, col: int) -> int:
        line = self.lines[lineno - 1] if lineno - 1 < len(self.lines) else ""
        return self.starts[lineno - 1] + len(line.encode()[:col].decode(errors="replace"))

    def span(self, node: ast.AST) -> tuple[int, int]:
        return self.off(node.lineno, node.col_offset), self.off(node.end_lineno, node.end_col_offset)


def _kernel_info(fn: ast.FunctionDef) -> _Kernel | None:
    names = decorator_names(fn)
    if "jit" not in names:
        return None
    a = fn.args
    params = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    constexpr = {p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)
                 if p.annotation is not None and dotted(p.annotation).split(".")[-1] == "constexpr"}
    positional = [*a.posonlyargs, *a.args]
    defaults = {p.arg: d for p, d in zip(positional[len(positional) - len(a.defaults):], a.defaults)}
    defaults.update({p.arg: d for p, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None})
    return _Kernel(fn.name, params, constexpr, defaults,
                   autotuned="autotune" in names,
                   heuristic=_heuristic_params(fn),
                   axis_params=_axis_params(fn, constexpr))


def _heuristic_params(fn: ast.FunctionDef) -> set[str]:
    out: set[str] = set()
    for d in fn.decorator_list:
        if isinstance(d, ast.Call) and dotted(d.func).split(".")[-1] == "heuristics" and d.args \
                and isinstance(d.args[0], ast.Dict):
            out.update(k.value for k in d.args[0].keys if isinstance(k, ast.Constant) and isinstance(k.value, str))
    return out


def _axis_params(fn: ast.FunctionDef, constexpr: set[str]) -> dict[int, set[str]]:
    """Which constexprs multiply `tl.program_id(axis)` (directly or through a name bound to it)."""

    def axis_of(node: ast.AST) -> int | None:
        if isinstance(node, ast.Call) and dotted(node.func).split(".")[-1] == "program_id":
            arg = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "axis"), None)
            return _int(arg)
        if isinstance(node, ast.Name):
            return pid_names.get(node.id)
        return None

    pid_names: dict[str, int] = {}
    for node in ast.walk(fn):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            ax = axis_of(node.value)
            if ax is not None:
                pid_names[node.targets[0].id] = ax
    out: dict[int, set[str]] = {}
    for node in ast.walk(fn):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            for a, b in ((node.left, node.right), (node.right, node.left)):
                ax = axis_of(a)
                if ax is not None and isinstance(b, ast.Name) and b.id in constexpr:
                    out.setdefault(ax, set()).add(b.id)
    return out


class _Collector(ast.NodeVisitor):
    def __init__(self, kernels: dict[str, _Kernel]):
        self.kernels = kernels
        self.launches: list[_Launch] = []
        self.func: list[ast.FunctionDef | ast.AsyncFunctionDef] = []
        self.cls: list[ast.ClassDef] = []

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.cls.append(node)
        self.generic_visit(node)
        self.cls.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.func.append(node)
        self.generic_visit(node)
        self.func.pop()

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Call(self, node: ast.Call) -> None:
        f = node.func
        if isinstance(f, ast.Subscript):
            name = dotted(f.value).split(".")[-1]
            if name in self.kernels:
                self.launches.append(_Launch(name, node, f.slice, self.func[-1] if self.func else None,
                                             self.cls[-1] if self.cls else None))
        self.generic_visit(node)


def _single_assign(scope: ast.AST, match) -> ast.expr | None:
    """The value of the one assignment in `scope` whose target satisfies `match` (else None)."""
    values = []
    for node in ast.walk(scope):
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for leaf in ast.walk(t):
                    if match(leaf):
                        values.append(None if isinstance(node, ast.AugAssign) or len(targets) > 1
                                      or leaf is not t else node.value)
        elif isinstance(node, (ast.For, ast.comprehension)) and any(match(x) for x in ast.walk(node.target)):
            values.append(None)
    return values[0] if len(values) == 1 else None


def _resolve(node: ast.expr, launch: _Launch, tree: ast.Module) -> ast.expr | None:
    """Follow a Name / self.attr to the single literal-or-expression it is bound to."""
    if isinstance(node, ast.Name):
        if launch.func is not None and node.id in {a.arg for a in ast.walk(launch.func.args)
                                                   if isinstance(a, ast.arg)}:
            return None   # a parameter of the launching function: its value is the caller's
        if launch.func is not None and any(
                isinstance(n, ast.Name) and n.id == node.id and isinstance(n.ctx, ast.Store)
                for n in ast.walk(launch.func)):
            return _single_assign(launch.func, lambda x: isinstance(x, ast.Name) and x.id == node.id)
        module_level = ast.Module(body=[s for s in tree.body if not isinstance(
            s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))], type_ignores=[])
        return _single_assign(module_level, lambda x: isinstance(x, ast.Name) and x.id == node.id)
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
            and launch.cls is not None):
        attr = node.attr

        def is_self_attr(x: ast.AST) -> bool:
            return (isinstance(x, ast.Attribute) and x.attr == attr and isinstance(x.value, ast.Name)
                    and x.value.id == "self")

        in_methods = _single_assign(launch.cls, is_self_attr)
        if in_methods is not None:
            return in_methods
        body = ast.Module(body=[s for s in launch.cls.body if isinstance(s, (ast.Assign, ast.AnnAssign))],
                          type_ignores=[])
        return _single_assign(body, lambda x: isinstance(x, ast.Name) and x.id == attr)
    return None


def _literal_sites(node: ast.expr, launch: _Launch, tree: ast.Module, text: _Text,
                   depth: int = 0) -> tuple[int, list[_Site]] | None:
    """(value, sites) when `node` is an int literal or a name bound once to one."""
    v = _int(node)
    if v is not None:
        return v, [_Site(*text.span(node), "value")]
    if depth < 3:
        target = _resolve(node, launch, tree)
        if target is not None:
            return _literal_sites(target, launch, tree, text, depth + 1)
    return None


def _grid_divisors(grid: ast.expr, launch: _Launch, tree: ast.Module,
                   text: _Text) -> list[tuple[int | None, int, list[_Site]]]:
    """(axis or None, value, sites) for every int literal a grid divides by."""
    if isinstance(grid, ast.Name):
        grid = _resolve(grid, launch, tree) or grid
    if isinstance(grid, ast.Lambda):
        grid = grid.body
    elems: list[tuple[int | None, ast.expr]]
    if isinstance(grid, (ast.Tuple, ast.List)):
        elems = list(enumerate(grid.elts))
    else:
        elems = [(None, grid)]
    out = []
    for axis, elem in elems:
        for node in ast.walk(elem):
            div: ast.expr | None = None
            minus1: ast.expr | None = None
            if isinstance(node, ast.Call) and dotted(node.func).split(".")[-1] == "cdiv" and len(node.args) == 2:
                div = node.args[1]
            elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.FloorDiv):
                div = node.right
                v = _int(div)
                if v is not None and isinstance(node.left, ast.BinOp) and isinstance(node.left.op, ast.Add):
                    minus1 = next((x for x in (node.left.right, node.left.left) if _int(x) == v - 1), None)
            v = _int(div)
            if v is None or v <= 1:
                continue
            sites = [_Site(*text.span(div), "value")]
            if minus1 is not None:
                sites.append(_Site(*text.span(minus1), "minus1"))
            out.append((axis, v, sites))
    return out


def _insert_site(call: ast.Call, param: str, text: _Text) -> _Site:
    args = [*call.args, *(k.value for k in call.keywords)]
    if args:
        last = max(args, key=lambda n: (n.end_lineno, n.end_col_offset))
        pos = text.off(last.end_lineno, last.end_col_offset)
        return _Site(pos, pos, "insert", param, ", ")
    pos = text.off(call.end_lineno, call.end_col_offset) - 1   # just before ")"
    return _Site(pos, pos, "insert", param, "")


def _choices(kind: str, value: int) -> tuple[int, ...]:
    if kind == "num_warps":
        return tuple(sorted({value, *WARPS}))
    if kind == "num_stages":
        return tuple(sorted({value, *STAGES}))
    around = {value * 2**k for k in (1, 2)} | {value // 2**k for k in (1, 2) if value % 2**k == 0}
    return tuple(sorted({value} | {c for c in around if BLOCK_MIN <= c <= BLOCK_MAX}))


def _analyse(code: str) -> tuple[str, list[tuple[Knob, list[_Site]]]]:
    try:
        tree = parse(code)
    except SyntaxError as exc:
        raise LaunchError(f"cannot parse source: syntax error at line {exc.lineno}: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise LaunchError(f"cannot parse source: {type(exc).__name__}: {exc}") from None
    text = _Text(code)
    kernels = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            k = _kernel_info(node)
            if k is not None:
                kernels[k.name] = k
    collector = _Collector(kernels)
    collector.visit(tree)
    occs: list[_Occ] = []
    for li, launch in enumerate(collector.launches):
        occs.extend(_launch_occurrences(li, launch, kernels[launch.kernel], tree, text))
    return code, _group(occs)


def _launch_occurrences(li: int, launch: _Launch, kernel: _Kernel, tree: ast.Module, text: _Text) -> list[_Occ]:
    call = launch.call
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        return []   # *args / **kwargs: what reaches which parameter is unknown
    given: dict[str, ast.expr] = dict(zip(kernel.params, call.args))
    given.update({k.arg: k.value for k in call.keywords if k.arg})
    out: list[_Occ] = []
    for p in kernel.params:
        if p not in kernel.constexpr or p in kernel.heuristic or not _BLOCK_NAME.search(p):
            continue
        if p in given:
            found = _literal_sites(given[p], launch, tree, text)
        elif not kernel.autotuned and _int(kernel.defaults.get(p)) is not None:
            found = (_int(kernel.defaults[p]), [_insert_site(call, p, text)])
        else:
            found = None   # derived (e.g. next_power_of_2(n)) or set by autotune: not ours to move
        if found is None or found[0] <= 0 or found[0] & (found[0] - 1):
            continue
        out.append(_Occ(kernel.name, p, "block", found[0], li, found[1]))
    blocks = {o.param: o for o in out}
    for axis, v, sites in _grid_divisors(launch.grid, launch, tree, text):
        same = [o for o in out if o.value == v]
        by_axis = [blocks[p] for p in kernel.axis_params.get(axis, set()) if p in blocks and blocks[p].value == v]             if axis is not None else []
        owners = by_axis if len(by_axis) == 1 else same
        for o in owners:
            o.sites.extend(sites)
    if not kernel.autotuned:
        for p in ("num_warps", "num_stages"):
            if p in given:
                found = _literal_sites(given[p], launch, tree, text)
                if found is None or found[0] <= 0:
                    continue
                out.append(_Occ(kernel.name, p, p, found[0], li, found[1]))
            else:
                out.append(_Occ(kernel.name, p, p, LAUNCH_DEFAULTS[p], li, [_insert_site(call, p, text)]))
    return out


def _group(occs: Sequence[_Occ]) -> list[tuple[Knob, list[_Site]]]:
    """Merge occurrences that share a text site or are the same kernel parameter with the same value."""
    parent = list(range(len(occs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        parent[find(i)] = find(j)

    owner: dict[tuple[int, int, str], int] = {}
    first: dict[tuple[str, str, int], int] = {}
    for i, o in enumerate(occs):
        for s in o.sites:
            key = (s.start, s.end, s.kind + s.param)
            if key in owner:
                union(i, owner[key])
            else:
                owner[key] = i
        same = (o.kernel, o.param, o.value)
        if same in first:
            union(i, first[same])
        else:
            first[same] = i
    groups: dict[int, list[_Occ]] = {}
    for i, o in enumerate(occs):
        groups.setdefault(find(i), []).append(o)
    out: list[tuple[Knob, list[_Site]]] = []
    names: dict[str, int] = {}
    for members in groups.values():
        values = {o.value for o in members}
        kinds = {o.kind for o in members}
        if len(values) != 1 or len(kinds) != 1:
            continue   # one text site feeding different values/kinds: not safely tunable
        value, kind = values.pop(), kinds.pop()
        params = tuple(dict.fromkeys(f"{o.kernel}.{o.param}" for o in members))
        kernels = tuple(dict.fromkeys(o.kernel for o in members))
        if len(kernels) == 1:
            name = f"{kernels[0]}." + "+".join(dict.fromkeys(o.param for o in members))
        else:
            name = "+".join(params)
        names[name] = names.get(name, 0) + 1
        if names[name] > 1:
            name = f"{name}#{names[name]}"
        sites = [s for o in members for s in o.sites]
        out.append((Knob(name, kind, value, _choices(kind, value), params), sites))
    return out
