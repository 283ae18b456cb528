"""Trace coverage of KernelBench-format directories: how many problems the compiler policy turns
into a module, how long tracing takes per problem, and the commonest reasons it does not.

Every file of each directory goes through ``CompilerPolicy().compile(task)`` (strict), timed in two
parts: the trace (``policy.program(task)``: load, run/trace the reference, map to catalog ops) and
the rest of the compilation. Problems run one after another in a worker process that is killed
and restarted when one exceeds `--limit` seconds (a reference that computes at full size on the
CPU can take minutes), so a slow problem is counted as a timeout instead of stalling the run.

Failure reasons are counted per problem: for a `TraceError` listing unsupported calls, each call's
reason (``module Conv3d has no catalog op``) counts once per problem that has it. Usage:
    python benchmarks/trace_coverage.py DIR [DIR ...] [--limit 20] [--top 25] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _worker() -> None:
    """Read task paths on stdin; print one JSON line per path (result, trace and compile seconds)."""
    sys.path.insert(0, os.environ.get("TRACE_COVERAGE_ROOT", str(ROOT)))
    from kernelgym.task import Task
    from policies.compiler import CompilerPolicy

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        path = line.strip()
        policy = CompilerPolicy()
        out: dict[str, Any] = {"path": path}
        t0 = time.perf_counter()
        stage = "trace"
        try:
            task = Task.from_file(path)
            policy.program(task)
            out["trace_s"] = time.perf_counter() - t0
            stage = "compile"
            policy.compile(task)
            out["ok"] = True
        except Exception as exc:  # noqa: BLE001 - every failure is a result here
            out.setdefault("trace_s", time.perf_counter() - t0)
            out.update(ok=False, stage=stage, error=f"{type(exc).__name__}: {exc}")
        out["total_s"] = time.perf_counter() - t0
        print(json.dumps(out), flush=True)


class _Runner:
    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self._read(300)

    def _read(self, limit: float) -> dict[str, Any] | None:
        assert self.proc is not None and self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + limit
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return None
                line = self.proc.stdout.readline()
                if not line:
                    return {"ok": False, "stage": "crash", "error": "worker died"}
                try:
                    return json.loads(line)
                except ValueError:
                    continue   # task code printing to stdout
        finally:
            sel.close()

    def run(self, path: str, limit: float) -> dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        t0 = time.perf_counter()
        self.proc.stdin.write(path + "\n")
        self.proc.stdin.flush()
        got = self._read(limit)
        if got is None or got.get("error") == "worker died":
            self.stop()
            return {"path": path, "ok": False, "stage": "timeout" if got is None else "crash",
                    "error": f"no result in {limit:g} s" if got is None else "worker died",
                    "trace_s": time.perf_counter() - t0, "total_s": time.perf_counter() - t0}
        return got

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def reasons(error: str) -> list[str]:
    """The distinct reasons in one error text (each unsupported call of a TraceError), numbers dropped."""
    prefix = "unsupported calls in Model.forward (no catalog op): "
    if prefix in error:
        parts = error.split(prefix, 1)[1].split("; ")
        # "relu_1 (call_function relu, File ...): reason" -> "reason"
        parts = [p.split("): ", 1)[1] if "): " in p else p for p in parts]
    else:
        parts = [error]
    out = []
    for p in parts:
        p = re.sub(r"\b\d+(\.\d+)?\b", "N", p.strip())
        out.append(p[:150])
    return sorted(set(out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--limit", type=float, default=20.0, help="seconds per problem before it counts as a timeout")
    ap.add_argument("--top", type=int, default=25, help="failure reasons to list")
    ap.add_argument("--json", default=None, help="write every problem's result here")
    args = ap.parse_args()
    runner = _Runner()
    everything: list[dict[str, Any]] = []
    try:
        for d in args.dirs:
            files = sorted(str(p) for p in Path(d).glob("*.py") if p.name != "__init__.py")
            t0 = time.perf_counter()
            results = [runner.run(f, args.limit) for f in files]
            wall = time.perf_counter() - t0
            everything += results
            traced = [r for r in results if r.get("stage") != "trace" and r.get("stage") not in ("timeout", "crash")]
            ok = [r for r in results if r.get("ok")]
            times = sorted(r["trace_s"] for r in results if r.get("stage") not in ("timeout", "crash"))
            timeouts = sum(r.get("stage") == "timeout" for r in results)
            print(f"{d}: {len(results)} problems, traced {len(traced)}, compiled {len(ok)}, timeouts {timeouts}; "
                  f"trace s median {statistics.median(times) if times else float('nan'):.3f} "
                  f"max {max(times) if times else float('nan'):.3f}; wall {wall:.1f} s", flush=True)
    finally:
        runner.stop()
    counts: Counter[str] = Counter()
    for r in everything:
        if not r.get("ok"):
            for why in reasons(f"[{r.get('stage')}] " + r.get("error", "")):
                counts[why] += 1
    print(f"top failure reasons (problems with each, of {len(everything)}):")
    for why, c in counts.most_common(args.top):
        print(f"  {c:4d}  {why}")
    if args.json:
        Path(args.json).write_text(json.dumps(everything, indent=1))
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        _worker()
    else:
        sys.exit(main())
