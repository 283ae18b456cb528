"""What the OS sandbox costs: the median evaluation time of the red team's legit kernels with the
candidate workers confined (``os_sandbox="require"``) and not (``"off"``).

Two evaluators with the same small pools run side by side; each round judges every legit kernel
once on each, one evaluation at a time, in alternating order (so drift in the machine's load
falls on both alike), after a warm-up round that is not counted. Reported: the median and mean
`Verdict.duration_s` of each, the ratio of the medians, and the worker start time (a confined
worker sets its rules up once, at start).

Usage: python -m benchmarks.sandbox_overhead [--backend interpret] [--rounds 6] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def measure(backend: str = "interpret", rounds: int = 6, seed: int = 0) -> dict[str, Any]:
    from kernelgym.evaluation import Evaluator
    from tests.redteam.manifest import cases

    legit = [c for c in cases() if c.legit]
    times: dict[str, list[float]] = {"off": [], "require": []}
    statuses: dict[str, list[str]] = {"off": [], "require": []}
    starts: dict[str, float] = {}
    evs: dict[str, Any] = {}
    try:
        for mode in ("off", "require"):
            t = time.perf_counter()
            evs[mode] = Evaluator(workers=1, reference_workers=1, ptx_workers=1, timeout=120, os_sandbox=mode)
            evs[mode].warm(backend)
            starts[mode] = round(time.perf_counter() - t, 2)
        for r in range(rounds + 1):
            order = ("off", "require") if r % 2 == 0 else ("require", "off")
            for c in legit:
                for mode in order:
                    v = evs[mode].evaluate(c.task_source, c.source, backend, c.mode, seed=seed + r)
                    if r:   # round 0 warms caches (ptx, compiled kernels) on both
                        times[mode].append(v.duration_s)
                        statuses[mode].append(v.status)
        probe = {m: evs[m].evaluate(legit[0].task_source, legit[0].source, backend, legit[0].mode, seed=seed)
                 .versions.get("os_sandbox") for m in evs}
    finally:
        for ev in evs.values():
            ev.close()
    med = {m: statistics.median(x) for m, x in times.items()}
    return {
        "backend": backend, "rounds": rounds, "kernels": [c.id for c in legit],
        "median_s": {m: round(x, 4) for m, x in med.items()},
        "mean_s": {m: round(statistics.fmean(x), 4) for m, x in times.items()},
        "overhead": round(med["require"] / med["off"] - 1, 4),
        "statuses": {m: sorted(set(s)) for m, s in statuses.items()},
        "os_sandbox_label": probe, "warm_s": starts, "samples": {m: len(x) for m, x in times.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", default="interpret", choices=("interpret", "cuda"))
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    rep = measure(args.backend, args.rounds, args.seed)
    if args.json:
        Path(args.json).write_text(json.dumps(rep, indent=1))
    print(json.dumps(rep, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
