"""Timing reproducibility: one kernel (and the eager baseline) timed in 5 separate evaluations.

Each evaluation is a full `Evaluator.evaluate` on the cuda backend with a new seed (new inputs,
a new CUDA graph); the evaluator's caches are cleared before each, so the eager (and
torch.compile) baseline is timed afresh too. Prints each run's median, and per series the spread
max/min - 1 (target <= 2 %). Several sizes can be given (comma list). Writes JSON.
GPU only: on a machine without CUDA it says so and exits 0. Usage:
    python benchmarks/timing_spread.py [--runs 5] [--numel 16777216,1048576]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REFERENCE = '''
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x, y):
        return torch.relu(x) * y + x


def get_inputs():
    return [torch.randn(NUMEL), torch.randn(NUMEL)]


def get_init_inputs():
    return []
'''

CANDIDATE = '''
import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def fused_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    y = tl.load(y_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, tl.maximum(x, 0.0) * y + x, mask=mask)


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x, y):
        out = torch.empty_like(x)
        n = out.numel()
        fused_kernel[(triton.cdiv(n, 1024),)](x, y, out, n, BLOCK=1024)
        return out
'''


def spread(values: list[float]) -> float:
    return max(values) / min(values) - 1.0 if values and min(values) > 0 else float("nan")


def one_size(ev, numel: int, runs: int) -> dict | None:
    """`runs` separate evaluations of the kernel at `numel` elements; the spread of their medians."""
    ref = REFERENCE.replace("NUMEL", str(numel))
    series: dict[str, list[float]] = {"candidate": [], "eager": [], "compile": []}
    rows = []
    for r in range(runs):
        ev.clear_caches()  # the baseline is timed again in every evaluation
        v = ev.evaluate(ref, CANDIDATE, backend="cuda", seed=100 + r)
        if v.status != "ok":
            print(f"run {r}: verdict {v.status}: {v.error}")
            return None
        row = {"run": r, "device": v.device, "speedup": v.speedup}
        for k, xs in series.items():
            if k in v.timings:
                xs.append(v.timings[k]["median_ms"])
                row[k] = v.timings[k]
        rows.append(row)
        c = v.timings["candidate"]
        print(f"{numel}: run {r}: candidate {c['median_ms'] * 1e3:9.2f} us  eager "
              f"{v.timings.get('eager', {}).get('median_ms', float('nan')) * 1e3:9.2f} us  compile "
              f"{v.timings.get('compile', {}).get('median_ms', float('nan')) * 1e3:9.2f} us  speedup {v.speedup:.3f}"
              f"  (method {c['method']}, n={c['n']}, {c.get('forwards_per_replay', '-')} per replay)")
    report = {"benchmark": "timing_spread", "device": rows[0]["device"], "numel": numel, "runs": rows,
              "spread": {k: spread(x) for k, x in series.items() if x}, "target": 0.02}
    print(f"{'series':<12}{'min us':>10}{'median us':>11}{'max us':>10}{'spread':>9}   ({numel} elements)")
    for k, xs in series.items():
        if xs:
            med = sorted(xs)[len(xs) // 2]
            ok = "ok" if spread(xs) <= 0.02 else "OVER 2%"
            print(f"{k:<12}{min(xs) * 1e3:>10.2f}{med * 1e3:>11.2f}{max(xs) * 1e3:>10.2f}"
                  f"{spread(xs) * 100:>8.2f}%  {ok}")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--numel", default=str(1 << 24), help="elements per input, comma list (default 16M)")
    ap.add_argument("--rep-ms", type=float, default=None, help="timing budget (default timing.DEFAULT_BENCH)")
    ap.add_argument("--max-reps", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "timing_spread.json"))
    args = ap.parse_args(argv)

    from kernelgym.evaluation import Evaluator
    from kernelgym.evaluation.evaluator import cuda_available

    if not cuda_available():
        print("timing_spread needs a CUDA GPU (timing only happens on a GPU); nothing to do here.")
        return 0
    reports = []
    bench = {k: v for k, v in (("rep_ms", args.rep_ms), ("max_reps", args.max_reps)) if v is not None}
    with Evaluator(workers=1, reference_workers=1, bench=bench) as ev:
        ev.warm("cuda")
        for numel in [int(x) for x in str(args.numel).split(",") if x]:
            rep = one_size(ev, numel, args.runs)
            if rep is None:
                return 1
            reports.append(rep)
    report = reports[0] if len(reports) == 1 else {"benchmark": "timing_spread", "sizes": reports}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
