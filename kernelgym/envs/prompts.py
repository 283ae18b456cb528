"""Prompt and feedback text for the environments, and the Text charset their spaces use."""

from __future__ import annotations

import string
from typing import Any

from kernelgym.evaluation.protocol import BACKEND_AUTO, BACKEND_INTERPRET, MODE_STRICT
from kernelgym.task import Task

# Every printable ASCII character and whitespace, plus Latin-1 and a few symbols found in docstrings.
# Observations are mapped into it (see `clean`) so that they always lie in the observation space;
# actions are never validated against it, so a candidate full of other unicode still gets a verdict.
CHARSET = frozenset(string.printable) | frozenset(chr(c) for c in range(0xA0, 0x100)) | frozenset("→←×≈≤≥·…—–‘’“”")
MAX_TEXT = 1_000_000
FEEDBACK_LINES = 20


def clean(text: str, limit: int = MAX_TEXT) -> str:
    """`text` with characters outside CHARSET replaced by '?', cut to `limit` characters."""
    text = text if len(text) <= limit else text[: limit - 20] + "\n... [truncated]"
    return "".join(ch if ch in CHARSET else "?" for ch in text)


def device_name(backend: str) -> str:
    """The target GPU named in prompts (the local one when CUDA is visible)."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001
        pass
    return "an NVIDIA H100 (CUDA) GPU" + (" (judged here with the Triton interpreter on CPU)"
                                          if backend == BACKEND_INTERPRET else "")


def build_prompt(task: Task, backend: str = BACKEND_AUTO, mode: str = MODE_STRICT) -> str:
    """A complete instruction for an LLM: the reference, what to write, how it is judged, the target."""
    rules = ("Every compute op of forward must run in a Triton kernel (@triton.jit); torch may only "
             "allocate outputs, make views and compute shapes." if mode == MODE_STRICT else
             "torch may do part of the work, but at least one Triton kernel must do real work that the "
             "reference's torch ops would have done.")
    return f"""You are an expert GPU kernel engineer. Rewrite the PyTorch program below as fast Triton kernels.

Reference program ({task.id}{', ops: ' + ', '.join(task.ops) if task.ops else ''}):
```python
{task.source.rstrip()}
```

Write one complete Python module that defines `class ModelNew(nn.Module)` with the same constructor
signature as `Model` and the same forward inputs and outputs, implemented with Triton kernels
(`import triton`, `import triton.language as tl`). Reply with the module in one ```python block.

How it is judged:
- Weights are copied from Model's state dict into ModelNew before comparison.
- Correctness: at least 3 trials on fresh random inputs; exact output shape and dtype; values within
  dtype-aware tolerances. Inputs must not be modified.
- Mode {mode}: {rules}
- Hacks (caching outputs, calling the reference, timing tricks, editing inputs) are detected and penalised.
- Only correct kernels are timed: median of many runs against PyTorch eager and torch.compile.
Target GPU: {device_name(backend)}.
"""


def trim_error(error: str, lines: int = FEEDBACK_LINES) -> str:
    """Keep what a kernel engineer reads first: lines naming the candidate and the last lines."""
    rows = [r for r in error.splitlines() if r.strip()]
    if len(rows) <= lines:
        return "\n".join(rows)
    relevant = [r for r in rows if "candidate" in r.lower() or "line " in r or "Error" in r]
    keep = relevant[-(lines // 2):] + ["..."] + rows[-(lines // 2):]
    return "\n".join(dict.fromkeys(keep))


def feedback(verdict: dict[str, Any], turn: int, max_turns: int, target_speedup: float,
             solved: bool = False) -> str:
    """Feedback on one attempt from its verdict dict: status, failed checks, error, timing.
    `solved`: the attempt met the target, so the episode ends and no further attempt is asked for."""
    status = verdict.get("status", "?")
    out = [f"Attempt {turn}/{max_turns}: status {status}."]
    if verdict.get("reasons"):
        out.append("Failed checks: " + ", ".join(verdict["reasons"]))
    trials = [t for t in verdict.get("trials") or [] if isinstance(t, dict)]
    for t in trials:
        bad = {k: v for k, v in t.items() if k in ("max_abs_err", "max_rel_err", "mismatch", "shape", "dtype",
                                                      "expected_shape", "got_shape", "message")}
        if bad and not t.get("ok", True):
            out.append("Trial: " + ", ".join(f"{k}={v}" for k, v in bad.items()))
            break
    if verdict.get("error"):
        out.append("Error:\n" + trim_error(str(verdict["error"])))
    if verdict.get("correct"):
        s, sc = verdict.get("speedup"), verdict.get("speedup_vs_compile")
        if s is None:
            out.append("Correct. Not timed here (no GPU).")
        else:
            out.append(f"Correct. Speedup {s:.2f}x vs eager" + (f", {sc:.2f}x vs torch.compile" if sc else "")
                       + f" (target {target_speedup:.2f}x).")
        med = (verdict.get("timings") or {}).get("candidate_ms") or (verdict.get("timings") or {}).get("median_ms")
        if med is not None:
            out.append(f"Candidate time: {med} ms.")
    if solved:
        out.append("Target met: this episode is solved.")
    elif turn < max_turns:
        out.append("Fix the problem (or make it faster) and reply with the whole module again.")
    return "\n".join(out)


def render_verdict(task: Task | None, verdict: dict[str, Any] | None, reward: float | None) -> str:
    """The last verdict as text (what `render()` returns)."""
    if verdict is None:
        return f"task {task.id if task else '-'}: no attempt yet"
    head = (f"task {task.id if task else '-'}: {verdict.get('status')} correct={verdict.get('correct')} "
            f"compiled={verdict.get('compiled')} speedup={verdict.get('speedup')} reward={reward}")
    rest = []
    if verdict.get("reasons"):
        rest.append("reasons: " + ", ".join(verdict["reasons"]))
    if verdict.get("error"):
        rest.append("error: " + trim_error(str(verdict["error"]), 8))
    return "\n".join([head, *rest])
