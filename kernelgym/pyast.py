"""`parse`: ``ast.parse`` that is safe to call from several threads on CPython 3.11.

CPython 3.11 tracks the AST constructor's recursion depth in shared state, so threads that build
ASTs at once can fail with a spurious ``SystemError: AST constructor recursion depth mismatch``
(gh-106905, fixed in 3.12). The evaluator parses candidates on many threads (static guards, code
extraction) beside policies that parse too; a spurious failure there became an ``internal:error``
verdict. Our own parses take one lock, and a mismatch caused by someone else's parse is retried.
"""

from __future__ import annotations

import ast
import threading

_LOCK = threading.Lock()
_ATTEMPTS = 5


def parse(source: str, filename: str = "<unknown>") -> ast.Module:
    """``ast.parse(source, filename)``, serialised and retried on the spurious 3.11 error."""
    for attempt in range(_ATTEMPTS):
        try:
            with _LOCK:
                return ast.parse(source, filename=filename)
        except SystemError as exc:
            if "recursion depth mismatch" not in str(exc) or attempt == _ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def syntax_problem(exc: SyntaxError, source: str) -> str:
    """A one-line description of `exc` raised by parsing `source`, always with a line number
    (Python reports a null byte with none)."""
    if exc.lineno is None and "\0" in source:
        before = source[:source.index("\0")]
        line, col = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
        return f"null byte at line {line}, column {col}: Python source cannot contain null bytes"
    if exc.lineno is None:
        return f"syntax error: {exc.msg}"
    return f"syntax error at line {exc.lineno}: {exc.msg}"


def dotted(node: ast.AST) -> str:
    """The dotted name an attribute chain spells: ``tl.dot`` for ``tl.dot``; for a chain on
    something else (a call's result, a subscript) only its attributes, "" for no attribute."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def decorator_names(fn: ast.FunctionDef) -> list[str]:
    """The last name of each decorator of `fn`, called or not: ``jit`` for ``@triton.jit`` and
    ``@jit(...)``, ``autotune`` for ``@triton.autotune(...)``."""
    return [dotted(d.func if isinstance(d, ast.Call) else d).split(".")[-1] for d in fn.decorator_list]
