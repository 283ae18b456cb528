"""`kernelgym eval REFERENCE CANDIDATE`: judge one candidate and print the verdict."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import Any

# The evaluator's default wall-time limit per phase (Evaluator(timeout=...)), named in --help.
DEFAULT_TIMEOUT_S = 120.0
MIN_TRIALS = 3
INTERRUPTED = 130   # the shell's code for a command ended by Ctrl-C (128 + SIGINT)


def _read(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise SystemExit(f"kernelgym eval: cannot read {what} {path!r}: {exc}") from None


def check_eval_args(args: argparse.Namespace) -> str | None:
    """The first problem with the numeric options (a one-line message), or None."""
    if args.trials < MIN_TRIALS:
        return f"--trials {args.trials}: at least {MIN_TRIALS} correctness trials are run; pass 3 or more"
    if args.timeout is not None and not args.timeout > 0:
        return f"--timeout {args.timeout:g}: the wall-time limit per phase must be > 0 seconds " \
               f"(default {DEFAULT_TIMEOUT_S:g})"
    return None


def _judge(ev: Any, reference: Any, cand_text: str, args: argparse.Namespace, backend: str) -> Any:
    """Evaluate in a thread while the main thread shows the phase on stderr (a terminal only) and
    stays free to take Ctrl-C at once."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["verdict"] = ev.evaluate(reference, cand_text, backend=backend, mode=args.mode, seed=args.seed,
                                         trials=args.trials, timeout=args.timeout)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            box["error"] = exc

    t = threading.Thread(target=work, name="kernelgym-eval", daemon=True)
    t.start()
    if sys.stderr.isatty():
        from rich.console import Console

        with Console(stderr=True).status("evaluating") as status:
            while t.is_alive():
                t.join(0.2)
                running = ev.in_flight()
                if running:
                    phase, secs = running[0]
                    status.update(f"evaluating: {phase.replace('_', ' ')} ({secs:.0f} s; limit "
                                  f"{args.timeout or ev.timeout:g} s per phase)")
    else:
        while t.is_alive():
            t.join(0.2)   # a short join, not one long one: Ctrl-C is taken between them
    if "error" in box:
        raise box["error"]
    return box["verdict"]


def _exit_now(code: int) -> None:
    """Leave without the interpreter's shutdown, which would join the evaluation's threads still
    unwinding from their killed workers (seconds); the workers and the spill folder are gone."""
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main_eval(args: argparse.Namespace) -> int:
    """Exit 0 whenever a verdict was produced; with --json the last stdout line is the verdict.
    Ctrl-C stops the workers at once and exits 130 without a traceback."""
    try:
        return _main_eval(args)
    except KeyboardInterrupt:   # before the evaluator existed (imports, reading files)
        print("kernelgym eval: interrupted", file=sys.stderr)
        return INTERRUPTED


def _main_eval(args: argparse.Namespace) -> int:
    problem = check_eval_args(args)
    if problem:
        print(f"kernelgym eval: {problem}", file=sys.stderr)
        return 2
    from kernelgym.evaluation import Evaluator
    from kernelgym.evaluation.evaluator import resolve_backend
    from kernelgym.task import Task, TaskFormatError

    ref_text = _read(args.reference, "reference")
    cand_text = _read(args.candidate, "candidate")
    try:
        backend = resolve_backend(args.backend)
    except ValueError as exc:   # --backend cuda without a GPU
        print(f"kernelgym eval: {exc}", file=sys.stderr)
        return 2
    try:
        reference: Task | str = Task.from_file(args.reference)
    except TaskFormatError:
        reference = ref_text  # evaluate() turns this into an invalid_task verdict
    ev = Evaluator(workers=1, reference_workers=1, ptx_workers=1, timeout=DEFAULT_TIMEOUT_S)
    try:
        verdict = _judge(ev, reference, cand_text, args, backend)
    except KeyboardInterrupt:
        ev.abort()   # kill the workers now: a polite exit would wait for a busy worker
        print("kernelgym eval: interrupted", file=sys.stderr)
        _exit_now(INTERRUPTED)
    finally:
        ev.close()
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
    where = f"on {verdict.device}" if verdict.device else "(no worker ran: judged before anything was run)"
    print(f"backend: {verdict.backend} {where}; seeds {verdict.seeds[:1]}; {verdict.duration_s:.2f} s")
    return 0
