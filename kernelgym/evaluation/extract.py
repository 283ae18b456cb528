"""Candidate code from an LLM reply: strip markdown fences, enforce a size limit, check the format.

An LLM often answers with prose and a fenced block. We take the fenced block that defines
`ModelNew` (else the longest Python-looking block) and say so in the verdict notes, so a policy
can learn that fences were removed rather than silently rewarded for them.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

from kernelgym.pyast import parse, syntax_problem

MAX_CANDIDATE_BYTES = 1_000_000

_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)^[ \t]*\1[ \t]*$", re.DOTALL | re.MULTILINE)
_PY_LANGS = {"", "python", "py", "python3", "triton"}


class FormatError(ValueError):
    """The candidate is not usable Python defining `ModelNew`."""


@dataclass
class Extracted:
    code: str
    notes: list[str] = field(default_factory=list)


def extract_code(text: str) -> Extracted:
    """Return the Python code in `text` (a bare source or an LLM reply with fenced blocks)."""
    if not isinstance(text, str):
        raise FormatError(f"candidate must be a str, got {type(text).__name__}")
    if len(text.encode("utf-8", "replace")) > MAX_CANDIDATE_BYTES:
        raise FormatError(f"candidate source is larger than {MAX_CANDIDATE_BYTES} bytes")
    if not text.strip():
        raise FormatError("candidate source is empty")
    blocks = [(m.group(2).lower(), m.group(3)) for m in _FENCE.finditer(text)]
    if not blocks:
        # An unterminated opening fence (a truncated reply) still carries code after it.
        m = re.match(r"\s*(`{3,}|~{3,})[ \t]*[A-Za-z0-9_+.-]*[^\n]*\n(.*)", text, re.DOTALL)
        if m is None:
            return Extracted(text)
        blocks = [("", m.group(2))]
    py = [code for lang, code in blocks if lang in _PY_LANGS] or [code for _, code in blocks]
    with_model = [code for code in py if re.search(r"\bclass\s+ModelNew\b|\bModelNew\s*=", code)]
    code = (with_model or sorted(py, key=len, reverse=True))[0]
    note = f"extracted code from a markdown fence ({len(blocks)} fenced block(s) in the reply)"
    return Extracted(code, [note])


def check_format(code: str) -> None:
    """Raise `FormatError` unless `code` parses and defines `ModelNew` at top level."""
    try:
        tree = parse(code, filename="<candidate>")
    except SyntaxError as exc:
        raise FormatError(f"not valid Python: {syntax_problem(exc, code)}") from None
    except (ValueError, MemoryError, RecursionError) as exc:
        raise FormatError(f"not valid Python: {type(exc).__name__}: {exc}") from None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "ModelNew":
            return
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "ModelNew" for t in targets):
                return
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
                (a.asname or a.name) == "ModelNew" for a in node.names):
            return
    raise FormatError("no top-level `ModelNew` defined (the candidate must define class ModelNew)")
