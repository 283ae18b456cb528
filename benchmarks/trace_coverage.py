"""Trace coverage of KernelBench-format directories: how many problems the compiler policy turns
into a module, how long tracing takes per problem, and the commonest reasons it does not.

Every file of each directory goes through ``CompilerPolicy().compile(task)`` (strict; the same code
as ``kernelbench --trace-only``, `benchmarks/_coverage.py`), timed in two parts: the trace
(``policy.program(task)``: load, run/trace the reference, map to catalog ops) and the rest of the
compilation. Problems run one after another, each in a forked child killed when it exceeds
`--limit` seconds (a reference that computes at full size on the CPU can take minutes), so a slow
problem is counted as a timeout instead of stalling the run.

Failure reasons are counted per problem: for a `TraceError` listing unsupported calls, each call's
reason (``module Conv3d has no catalog op``) counts once per problem that has it. Usage:
    python -m benchmarks.trace_coverage DIR [DIR ...] [--limit 20] [--top 25] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._children import in_children
from benchmarks._coverage import trace_and_compile


def _job(path: str) -> Callable[[], dict[str, Any]]:
    """One problem's result in a child: trace and compile in strict mode, the child's stdout discarded
    (task code that prints must not interleave with the report)."""
    def job() -> dict[str, Any]:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        r = trace_and_compile(path)
        out: dict[str, Any] = {"path": path, "trace_s": r["trace_s"]}
        if r["compiled"].get("strict"):
            out["ok"] = True
        elif not r["traced"]:
            out.update(ok=False, stage="trace", error=r["errors"]["trace"])
        else:
            out.update(ok=False, stage="compile", error=r["errors"]["strict"])
        out["total_s"] = r["total_s"]
        return out
    return job


def run(path: str, limit: float) -> dict[str, Any]:
    """One problem's result, from a forked child killed past `limit` seconds (stage ``timeout``)
    or that died (stage ``crash``)."""
    got = in_children([_job(path)], limit, 1)[0]
    if "ok" in got:
        return {k: v for k, v in got.items() if k != "seconds"}
    timed_out = bool(got.get("timed_out"))
    return {"path": path, "ok": False, "stage": "timeout" if timed_out else "crash",
            "error": f"no result in {limit:g} s" if timed_out else "worker died",
            "trace_s": got["seconds"], "total_s": got["seconds"]}


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
    import policies.compiler  # noqa: F401 - imported once here, not in every forked child

    everything: list[dict[str, Any]] = []
    for d in args.dirs:
        files = sorted(str(p) for p in Path(d).glob("*.py") if p.name != "__init__.py")
        t0 = time.perf_counter()
        results = [run(f, args.limit) for f in files]
        wall = time.perf_counter() - t0
        everything += results
        traced = [r for r in results if r.get("stage") != "trace" and r.get("stage") not in ("timeout", "crash")]
        ok = [r for r in results if r.get("ok")]
        times = sorted(r["trace_s"] for r in results if r.get("stage") not in ("timeout", "crash"))
        timeouts = sum(r.get("stage") == "timeout" for r in results)
        print(f"{d}: {len(results)} problems, traced {len(traced)}, compiled {len(ok)}, timeouts {timeouts}; "
              f"trace s median {statistics.median(times) if times else float('nan'):.3f} "
              f"max {max(times) if times else float('nan'):.3f}; wall {wall:.1f} s", flush=True)
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
    sys.exit(main())
