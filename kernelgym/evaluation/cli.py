"""`kernelgym eval REFERENCE CANDIDATE`: judge one candidate and print the verdict."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _read(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise SystemExit(f"kernelgym eval: cannot read {what} {path!r}: {exc}") from None


def main_eval(args: argparse.Namespace) -> int:
    """Exit 0 whenever a verdict was produced; with --json the last stdout line is the verdict."""
    from kernelgym.evaluation import Evaluator
    from kernelgym.task import Task, TaskFormatError

    ref_text = _read(args.reference, "reference")
    cand_text = _read(args.candidate, "candidate")
    try:
        reference: Task | str = Task.from_file(args.reference)
    except TaskFormatError:
        reference = ref_text  # evaluate() turns this into an invalid_task verdict
    if args.trials < 3:
        print("kernelgym eval: --trials below 3 raised to 3", file=sys.stderr)
    with Evaluator(workers=1, reference_workers=1, ptx_workers=1) as ev:
        verdict = ev.evaluate(reference, cand_text, backend=args.backend, mode=args.mode, seed=args.seed,
                              trials=args.trials, timeout=args.timeout)
    d = verdict.to_dict()
    if args.json:
        sys.stdout.write(json.dumps(d, default=str) + "\n")
        return 0
    print(f"status:  {verdict.status}")
    print(f"correct: {verdict.correct}   compiled: {verdict.compiled}")
    if verdict.speedup is not None:
        sc = f"{verdict.speedup_vs_compile:.3f}x" if verdict.speedup_vs_compile is not None else "n/a"
        print(f"speedup: {verdict.speedup:.3f}x vs eager, {sc} vs torch.compile")
    if verdict.reasons:
        print(f"reasons: {', '.join(verdict.reasons)}")
    if verdict.error:
        print(f"error:   {verdict.error}")
    for note in verdict.notes:
        print(f"note:    {note}")
    print(f"backend: {verdict.backend} on {verdict.device or '?'}; seeds {verdict.seeds[:1]}; "
          f"{verdict.duration_s:.2f} s")
    return 0
