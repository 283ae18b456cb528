"""Timing fidelity: the evaluator's eager timing of KernelBench-format tasks vs torch.profiler.

For each task (a few hand-written KernelBench-style problems and sampler tasks at bench sizes):

* ours: `timing.bench` on the eager model, exactly as the reference worker times the eager
  baseline (CUDA-graph replay, per-forward events inside the graph, L2 flushed before each
  forward), run twice to show the run-to-run spread;
* independent: `torch.profiler` (CUPTI kernel records) over N eager forwards, each preceded by an L2
  flush done by a Triton kernel of its own name (so flush kernels are told apart from the model's);
  a forward's time is the SUM of its kernels' durations; the median over the N forwards.

The two should agree within 5 % (ours also contains the short gaps between a forward's kernels
inside the graph, which the kernel sum does not; the profiler's span, first kernel start to last kernel
end, is printed too: it contains the gaps of eager launches). Prints a table, writes JSON. GPU only.
Usage: python -m benchmarks.timing_fidelity [--sampled 6] [--forwards 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from benchmarks._output import write_json
from kernelgym.examples import relu_mul_add_reference

ROOT = Path(__file__).resolve().parents[1]

HANDWRITTEN = {
    "matmul_relu_4096": '''
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, a, b):
        return torch.relu(a @ b)


def get_inputs():
    return [torch.randn(4096, 4096), torch.randn(4096, 4096)]


def get_init_inputs():
    return []
''',
    "softmax_rows": '''
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        return torch.softmax(x, dim=-1)


def get_inputs():
    return [torch.randn(8192, 4096)]


def get_init_inputs():
    return []
''',
    "layernorm_gelu": '''
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln = nn.LayerNorm(d)

    def forward(self, x):
        return torch.nn.functional.gelu(self.ln(x))


def get_inputs():
    return [torch.randn(16384, 1024)]


def get_init_inputs():
    return [1024]
''',
    "conv2d_bn_relu": '''
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(64, 128, 3, padding=1)
        self.bn = nn.BatchNorm2d(128)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


def get_inputs():
    return [torch.randn(32, 64, 56, 56)]


def get_init_inputs():
    return []
''',
    "elementwise_16M": relu_mul_add_reference("1 << 24"),
}


def _flush_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def kernelgym_l2_flush(buf, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(buf + offs, tl.zeros([BLOCK], dtype=tl.int32), mask=offs < n)

    return kernelgym_l2_flush


def profile_forwards(model, input_sets: list, forwards: int) -> list[list[tuple[float, float, str]]]:
    """CUPTI kernel records of `forwards` calls of `model`, each preceded by an L2 flush (a Triton
    kernel of its own name, which also splits the records): per forward, its kernels as (start us,
    duration us, name) in launch order (copies and memsets left out)."""
    import torch
    import triton
    from torch.profiler import ProfilerActivity, profile

    from kernelgym.evaluation.timing import flush_bytes

    n = flush_bytes() // 4
    buf = torch.empty(n, dtype=torch.int32, device="cuda")
    flush = _flush_kernel()
    grid = (triton.cdiv(n, 4096),)
    with torch.no_grad():
        for i in range(3):
            flush[grid](buf, n, BLOCK=4096)
            model(*input_sets[i % len(input_sets)])
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for i in range(forwards):
                flush[grid](buf, n, BLOCK=4096)
                model(*input_sets[i % len(input_sets)])
            flush[grid](buf, n, BLOCK=4096)
            torch.cuda.synchronize()
    kernels = []
    for e in prof.events():
        if str(getattr(e, "device_type", "")).endswith("CUDA") and e.time_range.elapsed_us() >= 0:
            kernels.append((e.time_range.start, e.time_range.elapsed_us(), e.name))
    kernels.sort()
    groups: list[list[tuple[float, float, str]]] = []
    current: list[tuple[float, float, str]] | None = None
    for start, dur, name in kernels:
        if "kernelgym_l2_flush" in name:
            if current is not None:
                groups.append(current)
            current = []
        elif current is not None and "Memcpy" not in name and "Memset" not in name:
            current.append((start, dur, name))
    groups = [g for g in groups if g]
    if not groups:
        raise RuntimeError("the profiler recorded no kernels between flushes")
    return groups


def profiler_ms(model, input_sets: list, forwards: int) -> tuple[float, float, float, int]:
    """Per forward, from CUPTI kernel records: (median sum of kernel durations ms, median span from the
    first kernel's start to the last kernel's end ms, median kernel count, forwards seen)."""
    groups = profile_forwards(model, input_sets, forwards)
    sums = [sum(d for _, d, _ in g) / 1000.0 for g in groups]
    spans = [(g[-1][0] + g[-1][1] - g[0][0]) / 1000.0 for g in groups]
    return (statistics.median(sums), statistics.median(spans), statistics.median(len(g) for g in groups),
            len(groups))


def measure(name: str, source: str, forwards: int) -> dict:
    import torch

    from kernelgym.evaluation.jobs import seeded_task, to_device, trial_inputs
    from kernelgym.evaluation.reference import trial_seed
    from kernelgym.evaluation.timing import bench

    module, _, model = seeded_task(source, 0, f"fidelity_{name}")
    model = model.cuda().eval()
    sets = [to_device(trial_inputs(module, trial_seed(0, t)), "cuda") for t in range(3)]
    stream = torch.cuda.Stream()
    with torch.no_grad():
        ours = [bench(lambda ins: model(*ins), sets, stream=stream) for _ in range(2)]
    prof_ms, span_ms, n_kernels, seen = profiler_ms(model, sets, forwards)
    med = statistics.median(o["median_ms"] for o in ours)
    return {"task": name, "ours_ms": [o["median_ms"] for o in ours], "ours_method": ours[0]["method"],
            "forwards_per_replay": ours[0].get("forwards_per_replay"), "profiler_ms": prof_ms,
            "profiler_span_ms": span_ms, "ratio_span": med / span_ms,
            "event_overhead_ms": ours[0].get("event_overhead_ms"),
            "kernels_per_forward": n_kernels, "profiled_forwards": seen, "ratio": med / prof_ms,
            "run_to_run": max(o["median_ms"] for o in ours) / min(o["median_ms"] for o in ours) - 1.0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sampled", type=int, default=6, help="sampler tasks (bench sizes, difficulties 1..4)")
    ap.add_argument("--forwards", type=int, default=50, help="profiled forwards per task")
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "timing_fidelity.json"))
    args = ap.parse_args(argv)

    from kernelgym.evaluation.evaluator import cuda_available

    if not cuda_available():
        print("timing_fidelity needs a CUDA GPU; nothing to do here.")
        return 0
    import torch

    tasks = dict(HANDWRITTEN)
    if args.sampled:
        from kernelgym.sampler import TaskSampler

        sampler = TaskSampler("bench")
        for i in range(args.sampled):
            t = sampler.sample(1 + i % 4, 100 + i)
            tasks[f"{t.id}:{'+'.join(t.ops)}"] = t.source
    rows = []
    for name, src in tasks.items():
        try:
            rows.append(measure(name.split(":")[0], src, args.forwards) | {"task": name})
        except Exception as exc:  # noqa: BLE001 - one broken task must not hide the others
            rows.append({"task": name, "error": f"{type(exc).__name__}: {exc}"[:300]})
        r = rows[-1]
        if "error" in r:
            print(f"{name}: ERROR {r['error']}")
        else:
            print(f"{name}: ours {r['ours_ms']} ms, profiler {r['profiler_ms']:.4f} ms, ratio {r['ratio']:.4f}")
    ok_rows = [r for r in rows if "error" not in r]
    within = [r for r in ok_rows if abs(r["ratio"] - 1) <= args.tolerance]
    print(f"\ntiming fidelity on {torch.cuda.get_device_name(0)}: eager timing vs torch.profiler kernel sums")
    print(f"{'task':<50}{'ours ms':>10}{'sum ms':>10}{'ratio':>8}{'span ms':>10}{'ratio':>8}{'kern':>6}"
          f"{'run2run':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['task'][:49]:<50}  ERROR {r['error'][:60]}")
            continue
        flag = "" if abs(r["ratio"] - 1) <= args.tolerance else "  OVER"
        print(f"{r['task'][:49]:<50}{statistics.median(r['ours_ms']):>10.4f}{r['profiler_ms']:>10.4f}"
              f"{r['ratio']:>8.3f}{r['profiler_span_ms']:>10.4f}{r['ratio_span']:>8.3f}{r['kernels_per_forward']:>6}"
              f"{r['run_to_run'] * 100:>8.2f}%{flag}")
    print(f"{len(within)}/{len(ok_rows)} tasks within {args.tolerance:.0%} of the kernel sum; "
          f"{sum(abs(r['ratio_span'] - 1) <= args.tolerance for r in ok_rows)}/{len(ok_rows)} of the span")
    write_json(args.out, {"benchmark": "timing_fidelity", "device": torch.cuda.get_device_name(0),
                          "versions": {"torch": torch.__version__}, "rows": rows,
                          "within": len(within), "tasks": len(ok_rows), "tolerance": args.tolerance})
    return 0


if __name__ == "__main__":
    sys.exit(main())
