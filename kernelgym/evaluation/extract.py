"""Candidate code from an LLM reply: strip markdown fences, enforce a size limit, check the format.

An LLM often answers with prose and a fenced block. We take the fenced block that defines
`ModelNew` (else the longest Python-looking block) and say so in the verdict notes, so a policy
can learn that fences were removed rather than silently rewarded for them. `code_blocks` is the
one markdown fence scanner of the project (the LLM policies' reply parsing uses it too).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

from kernelgym.pyast import parse, syntax_problem

MAX_CANDIDATE_BYTES = 1_000_000

# An opening fence line: three or more backticks or tildes, then an info string whose first word is
# the language (a backtick fence's info string has no backticks, as in CommonMark).
_OPEN_FENCE = re.compile(r"[ \t]*(?:(`{3,})[ \t]*([A-Za-z0-9_+.-]*)[^`\n]*|(~{3,})[ \t]*([A-Za-z0-9_+.-]*)[^\n]*)")
PY_LANGS = frozenset({"", "python", "py", "python3", "triton"})


class FormatError(ValueError):
    """The candidate is not usable Python defining `ModelNew`."""


@dataclass
class Extracted:
    code: str
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Block:
    """One fenced block: its language (lower case, "" if none), its text exactly as in the reply,
    whether its closing fence came, and where its opening fence line starts in the reply."""

    lang: str
    code: str
    closed: bool
    start: int = 0


def code_blocks(text: str) -> list[Block]:
    """The fenced blocks of `text` in order; a fence still open at the end (a cut reply) counts too
    when its opening line ended (its code may be empty). A block closes at a line of only the same
    fence character, at least as many as opened it (CommonMark); its text is the reply's, byte for
    byte."""
    blocks: list[Block] = []
    fence, lang, start, body = "", "", 0, 0
    pos = 0
    for line in text.split("\n"):
        end = pos + len(line)
        if not fence:
            m = _OPEN_FENCE.fullmatch(line)
            if m:
                fence, lang = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
                lang, start, body = lang.lower(), pos, end + 1
        else:
            mark = line.strip()
            if len(mark) >= len(fence) and mark == fence[0] * len(mark):
                blocks.append(Block(lang, text[body:pos], True, start))
                fence = ""
        pos = end + 1
    if fence and body <= len(text):
        blocks.append(Block(lang, text[body:], False, start))
    return blocks


def extract_code(text: str) -> Extracted:
    """Return the Python code in `text` (a bare source or an LLM reply with fenced blocks)."""
    if not isinstance(text, str):
        raise FormatError(f"candidate must be a str, got {type(text).__name__}")
    if len(text.encode("utf-8", "replace")) > MAX_CANDIDATE_BYTES:
        raise FormatError(f"candidate source is larger than {MAX_CANDIDATE_BYTES} bytes")
    if not text.strip():
        raise FormatError("candidate source is empty")
    found = code_blocks(text)
    blocks = [(b.lang, b.code) for b in found if b.closed]
    if not blocks:
        # An unterminated opening fence first in the reply (a truncated reply) still carries code after it.
        cut = [b for b in found if not b.closed and not text[:b.start].strip()]
        if not cut:
            return Extracted(text)
        blocks = [("", cut[0].code)]
    py = [code for lang, code in blocks if lang in PY_LANGS] or [code for _, code in blocks]
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
