"""What an LLM policy says to a model and how its reply becomes a candidate source.

Messages: the task instruction is `kernelgym.envs.prompts.build_prompt` (the text the environments
show as `obs["prompt"]`) and each earlier attempt becomes an assistant turn (its source) followed by
a user turn with `kernelgym.envs.prompts.feedback` on its verdict (status, failed checks, error,
speedup): the same template serves a first attempt and multi-turn refinement, and a model trained
in `KernelGym/MultiTurn-v0` sees the same wording here.

Replies: `extract_source` turns whatever a model says (markdown fences, chatter, several blocks,
`<think>` sections, a reply cut off at the token limit) into one source string and never raises;
a reply without usable code still yields a string, which the evaluator judges `format_error`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kernelgym.envs.prompts import build_prompt, feedback
from kernelgym.evaluation.extract import PY_LANGS, FormatError, check_format, code_blocks, extract_code
from kernelgym.evaluation.protocol import BACKENDS, MODES
from kernelgym.pyast import parse
from kernelgym.task import Task
from policies.base import Attempt

Message = dict[str, str]

MAX_SOURCE_CHARS = 16_000   # of one earlier attempt shown back to the model (a 1 MB candidate would fill its context)
PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}

_THINK_TAGS = "think|thinking|reasoning"
_THINK_BLOCK = re.compile(rf"<({_THINK_TAGS})>(.*?)</\1>", re.DOTALL | re.IGNORECASE)
_THINK_CLOSE = re.compile(rf"</({_THINK_TAGS})>", re.IGNORECASE)
_THINK_OPEN = re.compile(rf"<({_THINK_TAGS})>", re.IGNORECASE)
_CODE_START = re.compile(r"^(import |from \S+ import |@triton|class |def |# ?[-\w])")


@dataclass(frozen=True)
class PromptOptions:
    """How the conversation for a task is built.

    system: optional system message (build_prompt's user message already says who the model is).
    backend / mode: as for the environments; backend only names the target GPU in the text.
    max_history: earlier attempts shown in full (the newest ones); older ones are only counted.
    target_speedup: named in the feedback on a correct attempt.
    """

    system: str | None = None
    backend: str = "auto"
    mode: str = "strict"
    max_history: int = 3
    target_speedup: float = 1.0

    def __post_init__(self) -> None:
        if self.system is not None and not isinstance(self.system, str):
            raise TypeError(f"system must be a str or None, got {type(self.system).__name__}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be 'auto', 'cuda' or 'interpret', got {self.backend!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be 'strict' or 'lenient', got {self.mode!r}")
        if isinstance(self.max_history, bool) or not isinstance(self.max_history, int) or self.max_history < 0:
            raise ValueError(f"max_history must be an int >= 0, got {self.max_history!r}")
        if isinstance(self.target_speedup, bool) or not isinstance(self.target_speedup, (int, float)) \
                or not self.target_speedup > 0:
            raise ValueError(f"target_speedup must be a positive number, got {self.target_speedup!r}")


def as_attempt(item: Any) -> Attempt:
    """An `Attempt` from an Attempt, a (source, verdict) pair or a {"source", "verdict"} mapping.

    The verdict may be a `Verdict` (anything with `to_dict()`) or its dict form.
    """
    if isinstance(item, Attempt):
        source, verdict = item.source, item.verdict
    elif isinstance(item, Mapping) and "source" in item:
        source, verdict = item["source"], item.get("verdict") or {}
    elif isinstance(item, tuple) and len(item) == 2:
        source, verdict = item
    else:
        raise TypeError(f"history items must be Attempt(source, verdict) or (source, verdict) pairs, "
                        f"got {type(item).__name__}")
    if hasattr(verdict, "to_dict"):
        verdict = verdict.to_dict()
    if not isinstance(source, str):
        raise TypeError(f"an attempt's source must be a str, got {type(source).__name__}")
    if not isinstance(verdict, Mapping):
        raise TypeError(f"an attempt's verdict must be a dict or a Verdict, got {type(verdict).__name__}")
    return Attempt(source, dict(verdict))


def attempt_message(source: str, limit: int = MAX_SOURCE_CHARS) -> str:
    """An earlier candidate as the assistant turn that produced it (one python block)."""
    code = source.strip("\n")
    if len(code) > limit:
        code = code[:limit] + "\n# ... [truncated]"
    return f"```python\n{code}\n```"


def refinement_message(attempt: Attempt, turn: int, total: int, target_speedup: float = 1.0) -> str:
    """The user turn after attempt number `turn` (1-based) of `total` turns: feedback on its verdict."""
    return feedback(attempt.verdict, turn, total, target_speedup)


def build_messages(task: Task, history: Sequence[Any] = (), options: PromptOptions | None = None) -> list[Message]:
    """The chat messages for `task`, with one assistant + feedback pair per (recent) earlier attempt."""
    if not isinstance(task, Task):
        raise TypeError(f"task must be a kernelgym.task.Task, got {type(task).__name__}")
    if isinstance(history, (str, bytes)) or not isinstance(history, Sequence):
        raise TypeError(f"history must be a sequence of attempts, got {type(history).__name__}")
    opts = options or PromptOptions()
    attempts = [as_attempt(h) for h in history]
    messages: list[Message] = []
    if opts.system:
        messages.append({"role": "system", "content": opts.system})
    messages.append({"role": "user", "content": build_prompt(task, opts.backend, opts.mode)})
    kept = attempts[max(0, len(attempts) - opts.max_history):] if opts.max_history else []
    omitted = len(attempts) - len(kept)
    total = len(attempts) + 1   # the reply being asked for is the next turn
    for turn, attempt in enumerate(kept, start=omitted + 1):
        messages.append({"role": "assistant", "content": attempt_message(attempt.source)})
        text = refinement_message(attempt, turn, total, opts.target_speedup)
        if omitted and turn == omitted + 1:
            text = f"({omitted} earlier attempt(s) not shown.)\n" + text
        messages.append({"role": "user", "content": text})
    if omitted and not kept:
        messages[-1] = {"role": "user", "content": messages[-1]["content"]
                        + f"\n({omitted} earlier attempt(s) on this task did not succeed.)"}
    return messages


def render_plain(messages: Sequence[Message]) -> str:
    """One prompt string for models without a chat template, ending where the assistant speaks."""
    parts = []
    for m in messages:
        role = m.get("role")
        if role not in PLAIN_ROLES:
            raise ValueError(f"unknown message role {role!r}")
        parts.append(f"### {PLAIN_ROLES[role]}:\n{m.get('content', '').strip()}\n")
    return "\n".join(parts) + "\n### Assistant:\n"


def split_reasoning(reply: str) -> tuple[str, str]:
    """(answer, reasoning): `<think>` sections (closed, opened in the prompt, or cut off) moved aside."""
    reasoning = [m.group(2) for m in _THINK_BLOCK.finditer(reply)]
    answer = _THINK_BLOCK.sub("", reply)
    # A lone closing tag: the chat template opened the section in the prompt (Qwen3, DeepSeek-R1).
    closes = list(_THINK_CLOSE.finditer(answer))
    if closes:
        reasoning.insert(0, answer[: closes[-1].start()])
        answer = answer[closes[-1].end():]
    # A lone opening tag: the reply hit the token limit while still reasoning.
    opened = _THINK_OPEN.search(answer)
    if opened:
        reasoning.append(answer[opened.end():])
        answer = answer[: opened.start()]
    return answer, "\n".join(reasoning)


def _valid(code: str) -> bool:
    try:
        check_format(code)
    except FormatError:
        return False
    return True


def _bare_code(text: str) -> str | None:
    """Unfenced code among chatter: from a code-looking line to just before the prose that follows.

    Each try cuts the text where the parser stopped, so a long reply costs a few parses, not one per line.
    """
    if "ModelNew" not in text:
        return None
    lines = text.splitlines()
    starts = [i for i, ln in enumerate(lines) if _CODE_START.match(ln)][:8]   # a markdown '# Title' may come first
    for start in starts:
        end = len(lines)
        for _ in range(8):
            code = "\n".join(lines[start:end]) + "\n"
            try:
                parse(code)
            except SyntaxError as exc:
                bad = (exc.lineno or 1) - 1   # the offending line, counted from `start`
                if bad <= 0:
                    break
                end = start + bad
                continue
            except (ValueError, MemoryError, RecursionError):
                break
            if _valid(code):
                return code
            break
    return None


def _code_in(text: str) -> tuple[str | None, str | None]:
    """(a complete module defining ModelNew, else a block that at least names ModelNew) in `text`."""
    if not text.strip():
        return None, None
    if _valid(text):
        return text, None
    blocks = [b for b in code_blocks(text) if b.closed or b.code]
    if not blocks:
        return _bare_code(text), None
    py = [b for b in blocks if b.lang in PY_LANGS] or blocks
    # The last complete module wins: models revise a first draft, and a cut-off final block does not parse.
    for b in reversed(py):
        if _valid(b.code):
            return b.code, None
    mentions = [b for b in py if re.search(r"\bModelNew\b", b.code)]
    return None, (mentions[-1].code if mentions else None)


def extract_source(reply: Any) -> str:
    """The candidate source in a model reply; never raises (no code -> the reply text, for format_error).

    Preference: a complete module in the answer, then one in the reasoning, then a broken block
    naming ModelNew (answer first), then the evaluator's own extraction of the answer.
    """
    if reply is None:
        return ""
    text = reply if isinstance(reply, str) else str(reply)
    answer, reasoning = split_reasoning(text)
    (ans_ok, ans_part), (rsn_ok, rsn_part) = _code_in(answer), _code_in(reasoning)
    for code in (ans_ok, rsn_ok, ans_part, rsn_part):
        if code is not None:
            return code
    fallback = answer if answer.strip() else text
    try:   # what the evaluator would judge anyway, minus the fences
        return extract_code(fallback).code
    except FormatError:
        return fallback
