"""Ray evaluation pool vs the local worker pool on the same batch (interpreter backend, CPU).

Both judge the same RL-shaped batch -- T tasks x C distinct candidates (correct, incorrect and
raising in forward, as in eval_throughput.py), interpreter-sized inputs -- with the same seed:

* local: `Evaluator(workers=W)`'s pools, warmed first;
* ray: a `RayPool` on a local Ray instance (`ray.init(num_cpus=W)`, or `--address`), A CPU
  actors (`--actors`, default W) of W/A CPUs, each wrapping its own `Evaluator(workers=W/A)`
  (so A reference and A ptx workers where the local pool has max(1, W/4) and max(1, W/2)), warmed first.

Each harness runs a "first" batch (references computed) and a "steady" batch (new candidates for
the same tasks, new seed). Start-up (Ray, actors, worker processes) is reported, not counted.
Verdicts are checked against each candidate's kind and against each other (same seed, same
verdict apart from wall times). Prints a table and writes JSON. Usage:
    python -m benchmarks.ray_pool [--n 16] [--tasks 4] [--workers 2] [--actors A] [--numel 4096] [--address ray://...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from benchmarks._output import write_json
from kernelgym.examples import binary_candidate, relu_mul_add_reference

ROOT = Path(__file__).resolve().parents[1]

KINDS = ("correct", "correct", "incorrect", "raising")
EXPECTED = {"correct": "ok", "incorrect": "incorrect", "raising": "runtime_error"}


def make_batch(n: int, tasks: int, numel: int, offset: int) -> list[tuple[str, str, str]]:
    """(kind, reference, candidate) for n distinct candidates over `tasks` tasks."""
    refs = [relu_mul_add_reference(numel, 1.0 + 0.25 * t) for t in range(tasks)]
    out = []
    for i in range(n):
        t, j = i % tasks, i // tasks
        kind = KINDS[j % len(KINDS)]
        scale = f"{1.0 + 0.25 * t}"
        expr = f"tl.maximum(x, 0.0) * y {'+' if kind != 'incorrect' else '-'} x * {scale}"
        pre = "        raise RuntimeError('bad launch configuration')\n" if kind == "raising" else ""
        cand = binary_candidate(expr, name=f"fused_kernel_{i + offset}", block=(64, 128, 256)[j % 3], pre=pre)
        out.append((kind, refs[t], cand))
    return out


def run(harness, batch: list[tuple[str, str, str]], seed: int) -> dict:
    t0 = time.perf_counter()
    verdicts = harness([(r, c) for _, r, c in batch], seed)
    secs = time.perf_counter() - t0
    wrong = [(k, v.status) for (k, _, _), v in zip(batch, verdicts) if v.status != EXPECTED[k]]
    return {"evals": len(batch), "seconds": round(secs, 3), "evals_per_s": round(len(batch) / secs, 3),
            "unexpected": wrong, "verdicts": verdicts}


def _comparable(v) -> dict:
    d = v.to_dict()
    for k in ("timings", "duration_s", "ptx", "versions"):
        d.pop(k, None)
    return d


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=16, help="candidates per batch")
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 16),
                    help="local pool candidate workers = Ray CPUs = Ray CPU actors")
    ap.add_argument("--numel", type=int, default=4096)
    ap.add_argument("--actors", type=int, default=None,
                    help="Ray CPU actors (default --workers, 1 CPU each); the workers are split among them")
    ap.add_argument("--address", default=None, help="an existing Ray cluster (default: a local instance)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "ray_pool.json"))
    args = ap.parse_args()

    import ray

    from kernelgym.cluster import RayPool
    from kernelgym.evaluation import Evaluator

    first = make_batch(args.n, args.tasks, args.numel, 0)
    steady = make_batch(args.n, args.tasks, args.numel, args.n)
    report: dict = {"config": vars(args), "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                                      "ray": ray.__version__}}
    rows = []

    t = time.perf_counter()
    with Evaluator(workers=args.workers) as ev:
        ev.warm("interpret")
        startup = time.perf_counter() - t
        f = run(lambda p, s: ev.evaluate_batch(p, "interpret", seed=s), first, args.seed)
        s = run(lambda p, s: ev.evaluate_batch(p, "interpret", seed=s), steady, args.seed + 1)
    local = {"startup_s": round(startup, 2), "first": f, "steady": s}
    rows.append(("local pool", args.workers, startup, f, s))

    t = time.perf_counter()
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    ray_up = time.perf_counter() - t
    actors = args.actors or args.workers
    if args.workers % actors:
        ap.error("--workers must be a multiple of --actors")
    with RayPool(cpu_actors=actors if not args.address else None, cpus_per_actor=args.workers // actors) as pool:
        pool.warm("interpret")
        startup = time.perf_counter() - t
        rf = run(lambda p, s: pool.evaluate_batch(p, "interpret", seed=s), first, args.seed)
        rs = run(lambda p, s: pool.evaluate_batch(p, "interpret", seed=s), steady, args.seed + 1)
        stats = dict(pool.stats)
        actors = len(pool.actors()["cpu"])
    ray.shutdown()
    rows.append((f"ray pool ({actors} actors)", actors, startup, rf, rs))
    agree = sum(_comparable(a) == _comparable(b) for a, b in zip(f["verdicts"] + s["verdicts"],
                                                                   rf["verdicts"] + rs["verdicts"]))
    total = len(first) + len(steady)

    print(f"{'harness':<24} {'procs':>5} {'startup s':>9} {'first evals/s':>13} {'steady evals/s':>14} {'vs local':>8}")
    for name, procs, up, fb, sb in rows:
        ratio = sb["evals_per_s"] / s["evals_per_s"]
        print(f"{name:<24} {procs:>5} {up:>9.1f} {fb['evals_per_s']:>13.2f} {sb['evals_per_s']:>14.2f} {ratio:>7.2f}x")
    print(f"ray init {ray_up:.1f} s; pool stats {json.dumps(stats)}")
    print(f"verdicts identical (same seed, wall times aside): {agree}/{total}")
    unexpected = f["unexpected"] + s["unexpected"] + rf["unexpected"] + rs["unexpected"]
    print(f"verdicts not matching their kind: {unexpected or 'none'}")
    for part in (f, s, rf, rs):
        part.pop("verdicts")
    report.update(local=local, ray={"init_s": round(ray_up, 2), "startup_s": round(startup, 2), "first": rf,
                                    "steady": rs, "stats": stats, "actors": actors},
                  identical_verdicts=agree, total=total)
    write_json(args.out, report)
    return 0 if not unexpected and agree == total else 1


if __name__ == "__main__":
    sys.exit(main())
