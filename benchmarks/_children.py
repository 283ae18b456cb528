"""Jobs in forked child processes with a time limit: a slow or crashing job (tracing a problem at
KernelBench's sizes on a CPU can take minutes) costs its limit, not the run."""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait as wait_for
from typing import Any


def _child(conn: Any, job: Callable[[], dict[str, Any]]) -> None:
    # A forked child has none of the parent's OpenMP threads: once the parent ran a parallel torch
    # op, the child's first one waits for them forever (kb_shrink's checks under pytest did), so
    # torch runs single-threaded here.
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)
    try:
        out = job()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        out = {"error": f"{type(exc).__name__}: {exc}"[:500], "trace": traceback.format_exc(limit=3)[-800:]}
    try:
        conn.send(out)
    finally:
        conn.close()
        os._exit(0)


def in_children(jobs: Sequence[Callable[[], dict[str, Any]]], timeout: float, parallel: int) -> list[dict[str, Any]]:
    """Run each job in a forked child, `parallel` at a time; a child past `timeout` seconds is
    killed (its result: ``{"timed_out": True}``). Each result gains ``seconds``."""
    ctx = multiprocessing.get_context("fork")
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    running: dict[Any, tuple[int, Any, float]] = {}
    todo = list(range(len(jobs)))
    while todo or running:
        while todo and len(running) < max(1, parallel):
            i = todo.pop(0)
            rd, wr = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_child, args=(wr, jobs[i]), daemon=True)
            p.start()
            wr.close()
            running[rd] = (i, p, time.monotonic())
        ready = wait_for(list(running), timeout=0.2)
        now = time.monotonic()
        for rd in list(running):
            i, p, t0 = running[rd]
            if rd in ready:
                try:
                    res = rd.recv()
                except EOFError:
                    res = {"error": f"child died (exit code {p.exitcode})"}
            elif now - t0 > timeout:
                p.kill()
                res = {"timed_out": True, "error": f"over the {timeout:g} s limit"}
            else:
                continue
            p.join(5)
            rd.close()
            del running[rd]
            results[i] = {**res, "seconds": round(now - t0, 2)}
    return [r or {} for r in results]
