"""Faults: a batch of good candidates mixed with illegal-memory-access, infinite-loop and GPU-OOM
candidates. Every good candidate must get the same verdict as when it is judged alone.

Each good candidate (distinct source, same task) is first judged alone, one at a time, with a fixed
seed; then the whole mixed batch runs concurrently over the pool with the same seeds. Compared per
good candidate: status, correct, reasons (and the speedups, which are measurements, side by side).
The bad ones must end as crash (illegal address, OOM) or timeout (infinite loop). GPU only.
Usage: python -m benchmarks.eval_faults [--good 16] [--bad-each 2] [--timeout 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks._output import write_json
from kernelgym.examples import RELU_MUL_ADD, binary_candidate, relu_mul_add_reference, store

ROOT = Path(__file__).resolve().parents[1]

REFERENCE = relu_mul_add_reference("1 << 22")

GOOD = store(RELU_MUL_ADD)
BAD = {
    # 1 TB past the input: an illegal address, a sticky error in that worker's CUDA context.
    "illegal_address": (("    z = tl.load(x_ptr + offs + 1099511627776)\n"
                        "    tl.store(out_ptr + offs, tl.maximum(x, 0.0) * y + z, mask=mask)"), ""),
    # The store keeps the loop alive (a side-effect-free loop may be deleted by the compiler).
    "infinite_loop": (("    i = 0\n    while i < n:\n        tl.store(out_ptr + offs, x + y, mask=mask)\n"
                      "        i = i * 1"), ""),
    # 4 TB on the GPU: over the worker's memory fraction, CUDA out of memory.
    "gpu_oom": (GOOD, "        big = torch.empty(1 << 40, device=x.device)\n"),
}
EXPECT = {"illegal_address": {"crash"}, "infinite_loop": {"timeout"}, "gpu_oom": {"crash", "runtime_error"}}


def candidate(name: str, body: str, pre: str = "", block: int = 1024) -> str:
    return binary_candidate(name=f"k_{name}", body=body, pre=pre, block=block)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--good", type=int, default=16)
    ap.add_argument("--bad-each", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "eval_faults.json"))
    args = ap.parse_args(argv)

    from kernelgym.evaluation import Evaluator
    from kernelgym.evaluation.evaluator import cuda_available

    if not cuda_available():
        print("eval_faults needs a CUDA GPU; nothing to do here.")
        return 0
    good = [(f"good_{i}", candidate(f"good_{i}", GOOD, block=(256, 512, 1024, 2048)[i % 4]), 1000 + i)
            for i in range(args.good)]
    bad = [(f"{kind}_{j}", candidate(f"{kind}_{j}", *BAD[kind]), 5000 + 10 * j + k)
           for k, kind in enumerate(BAD) for j in range(args.bad_each)]
    # Interleave: faults spread through the batch, not bunched at one end.
    step = max(1, len(good) // max(1, len(bad)))
    batch: list[tuple[str, str, int]] = []
    gi = iter(good)
    for b in bad:
        batch += [g for _, g in zip(range(step), gi)]
        batch.append(b)
    batch += list(gi)
    with Evaluator(workers=args.workers, timeout=args.timeout) as ev:
        ev.warm("cuda")
        t = time.perf_counter()
        alone = {name: ev.evaluate(REFERENCE, src, backend="cuda", seed=seed) for name, src, seed in good}
        alone_s = time.perf_counter() - t
        t = time.perf_counter()
        with ThreadPoolExecutor(ev.workers + ev.reference_workers) as ex:
            mixed = dict(zip([n for n, _, _ in batch],
                             ex.map(lambda b: ev.evaluate(REFERENCE, b[1], backend="cuda", seed=b[2]), batch)))
        mixed_s = time.perf_counter() - t
        workers = ev.workers
    rows, same = [], 0
    for name, _, _ in good:
        a, m = alone[name], mixed[name]
        key_a = (a.status, a.correct, tuple(a.reasons))
        key_m = (m.status, m.correct, tuple(m.reasons))
        same += key_a == key_m
        rows.append({"candidate": name, "alone": a.status, "mixed": m.status, "same": key_a == key_m,
                     "reasons_alone": a.reasons, "reasons_mixed": m.reasons,
                     "speedup_alone": a.speedup, "speedup_mixed": m.speedup, "error_mixed": m.error[:300]})
    bad_rows = [{"candidate": name, "status": mixed[name].status, "reasons": mixed[name].reasons,
                 "expected": sorted(EXPECT[name.rsplit("_", 1)[0]]),
                 "ok": mixed[name].status in EXPECT[name.rsplit("_", 1)[0]], "error": mixed[name].error[:300]}
                for name, _, _ in bad]
    device = next(iter(alone.values())).device
    print(f"eval faults on {device}: {len(good)} good + {len(bad)} faulty candidates, {workers} workers, "
          f"timeout {args.timeout:g} s")
    print(f"{'candidate':<20}{'alone':>10}{'mixed':>10}{'same':>6}{'speedup alone':>15}{'mixed':>8}")
    for r in rows:
        sa = f"{r['speedup_alone']:.3f}" if r["speedup_alone"] else "-"
        sm = f"{r['speedup_mixed']:.3f}" if r["speedup_mixed"] else "-"
        print(f"{r['candidate']:<20}{r['alone']:>10}{r['mixed']:>10}{'yes' if r['same'] else 'NO':>6}{sa:>15}{sm:>8}")
    for r in bad_rows:
        print(f"{r['candidate']:<20}{'':>10}{r['status']:>10}  expected {'/'.join(r['expected'])}"
              f"{'' if r['ok'] else '  UNEXPECTED: ' + r['error'][:80]}")
    print(f"{same}/{len(good)} good candidates got the same verdict as alone; "
          f"{sum(r['ok'] for r in bad_rows)}/{len(bad_rows)} faults got the expected status; "
          f"alone {alone_s:.1f} s, mixed batch {mixed_s:.1f} s")
    write_json(args.out, {"benchmark": "eval_faults", "device": device, "good": rows, "bad": bad_rows, "same": same,
                          "alone_s": alone_s, "mixed_s": mixed_s, "timeout": args.timeout})
    return 0 if same == len(good) and all(r["ok"] for r in bad_rows) else 1


if __name__ == "__main__":
    sys.exit(main())
