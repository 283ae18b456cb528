"""Evaluation throughput: the worker pool vs a serial in-process harness (the KernelBench way).

An RL-shaped batch -- T tasks x C candidates each (default 8 x 8 for --n 64), every candidate a
distinct source (as with LLM samples), a mix of correct, incorrect (wrong math) and crashing (an
exception in forward; a hard crash would kill the serial harness's own process) -- is judged by:

* serial: one process, one candidate after another, as KernelBench's harness does: exec the
  reference and the candidate in this process, run the trials (fresh seeded inputs), compare
  with allclose, and on a GPU time the correct candidate with `timing.naive_bench` (the
  `triton.testing.do_bench` method: L2 flush, events around each call, one sync at the end) and
  the eager reference once per task (cached, as KernelBench's precomputed baseline times). No
  guards, no separate processes, no torch.compile baseline.
* pool: `Evaluator.evaluate_batch` over the warm worker pool (candidates and references in
  separate processes, static + runtime guards, comparison in a reference worker, sm_90 ptx check on
  the interpreter, on a GPU CUDA-graph timing, the post-timing trial and graph replay check, eager
  and torch.compile baselines). It runs the batch twice with different seeds: "first" computes
  each task's baselines (torch.compile included), "steady" is an RL step once they are cached (a
  new set of distinct candidates for the same tasks, new seeds).

Both harnesses use the same timing budget (`--rep-ms`, `--warmup-ms`, `--max-reps`): samples =
clamp(rep_ms / (forward + flush), min_reps, max_reps) in both.

Prints a table (evals/s, ratio, CPU seconds an evaluation) and the pool's mean per-phase seconds, and
writes JSON. Usage:
    python -m benchmarks.eval_throughput [--backend auto|interpret|cuda] [--n 64] [--workers W]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks._output import write_json
from kernelgym.examples import binary_candidate, relu_mul_add_reference

ROOT = Path(__file__).resolve().parents[1]

KINDS = ("correct", "correct", "incorrect", "crashing")


def make_batch(n: int, numel: int, tasks: int, offset: int = 0) -> list[tuple[int, str, str, str]]:
    """(task index, kind, reference source, candidate source) for n candidates over `tasks` tasks."""
    refs = [relu_mul_add_reference(numel, 1.0 + 0.25 * t) for t in range(tasks)]
    out = []
    for i in range(n):
        t = i % tasks
        j = i // tasks  # candidate index within its task's group
        kind = KINDS[j % len(KINDS)]
        block = (128, 256, 512, 1024)[(j // len(KINDS)) % 4]
        expr = f"tl.maximum(x, 0.0) * y {'+' if kind != 'incorrect' else '-'} x * {1.0 + 0.25 * t}"
        pre = "        raise RuntimeError('launch configuration invalid')\n" if kind == "crashing" else ""
        cand = binary_candidate(expr, name=f"fused_kernel_{i + offset}", block=block, pre=pre)
        out.append((t, kind, refs[t], cand))
    return out


SERIAL = r'''
import importlib.util, json, os, resource, sys, tempfile, time
import torch
import triton

data = json.loads(sys.stdin.read())
device = data["device"]
tmp = tempfile.mkdtemp()
if device == "cuda":
    from kernelgym.evaluation.timing import naive_bench

def load(src, name):
    path = os.path.join(tmp, name + ".py")
    with open(path, "w") as fh:
        fh.write(src)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

def cpu():
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

results = []
eager = {}
c0 = cpu()
t0 = time.perf_counter()
for i, (ref_src, cand) in enumerate(data["pairs"]):
    status = "ok"
    try:
        ref = load(ref_src, f"ref_{i}")
        torch.manual_seed(i)
        init = ref.get_init_inputs()
        model = ref.Model(*init).to(device)
        mod = load(cand, f"cand_{i}")
        new = mod.ModelNew(*init).to(device)
        new.load_state_dict(model.state_dict())
        sets = []
        for t in range(data["trials"]):
            torch.manual_seed(1000 * i + t)
            inputs = [x.to(device) for x in ref.get_inputs()]
            sets.append(inputs)
            with torch.no_grad():
                expected = model(*inputs)
                got = new(*inputs)
            if device == "cuda":
                torch.cuda.synchronize()
            if not torch.allclose(got, expected, atol=1e-2, rtol=1e-2):
                status = "incorrect"
                break
        if status == "ok" and device == "cuda":
            with torch.no_grad():
                naive_bench(lambda ins: new(*ins), sets, **data["bench"])
                if ref_src not in eager:  # the eager baseline once per task
                    eager[ref_src] = naive_bench(lambda ins: model(*ins), sets, **data["bench"])
    except Exception as exc:
        status = "runtime_error"
    results.append(status)
print(json.dumps({"seconds": time.perf_counter() - t0, "statuses": results, "cpu_s": cpu() - c0}))
'''


def run_serial(pairs: list[tuple[str, str]], backend: str, trials: int, bench: dict) -> dict:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    if backend == "interpret":
        env["TRITON_INTERPRET"] = "1"
        env["CUDA_VISIBLE_DEVICES"] = ""
    payload = json.dumps({"pairs": pairs, "trials": trials, "bench": bench,
                          "device": "cuda" if backend == "cuda" else "cpu"})
    out = subprocess.run([sys.executable, "-c", SERIAL], input=payload, capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])   # cpu_s: its loop's, compiler subprocesses included


def phase_means(verdicts: list) -> dict[str, float]:
    """Mean seconds per evaluation of each phase (phases of concurrent evaluations overlap)."""
    tot: dict[str, float] = {}
    for v in verdicts:
        for k, x in (v.timings or {}).get("phases_s", {}).items():
            tot[k] = tot.get(k, 0.0) + x
    return {k: x / max(1, len(verdicts)) for k, x in sorted(tot.items(), key=lambda kv: -kv[1])}


def timeline(spans_by_gpu: dict[int, list[tuple[float, float]]], start: float, end: float) -> dict[str, float] | None:
    """Where a batch's timings fell (`Evaluator.gpu_exclusive_spans`): seconds from the batch's start
    to its first timing (the ramp: nothing was ready to time), from its last timing's end to the
    batch's end (the tail), and the gaps between one GPU's consecutive timings (summed over GPUs,
    and the longest): no timing ready, or one waiting for shared holders to leave. None without
    timings."""
    spans = {d: sorted(s for s in per if s[1] >= start) for d, per in spans_by_gpu.items()}
    spans = {d: per for d, per in spans.items() if per}
    if not spans:
        return None
    gaps = [b[0] - a[1] for per in spans.values() for a, b in zip(per, per[1:])]
    return {"first_timing_s": min(per[0][0] for per in spans.values()) - start,
            "after_last_timing_s": end - max(per[-1][1] for per in spans.values()),
            "gaps_s": sum(gaps), "longest_gap_s": max(gaps, default=0.0)}


def gap_free_ceiling(n: int, seconds: float, tl: dict[str, float] | None, gpus: int, serial_eps: float
                     ) -> dict[str, float] | None:
    """What the batch would reach on one GPU if nothing but its timings' gaps went (no timing waiting
    for shared holders, none missing): its first timing and its tail as they were, the timings back
    to back. A ceiling for any schedule that keeps this ramp and these timings. None without a
    timeline or with several GPUs (their gaps overlap in time)."""
    if tl is None or gpus != 1:
        return None
    s = seconds - tl["gaps_s"]
    return {"seconds": s, "evals_per_s": n / s, "vs_serial": n / s / serial_eps}


def pool_batch(ev, pairs: list[tuple[str, str]], kinds: list[str], backend: str, seed: int,
               trials: int) -> tuple[dict, list]:
    """One batch through the pool: throughput, verdict kinds, phase means, and the CPU seconds each
    role's workers (and this parent process) spent on it: the host cost of an evaluation; and the
    verdicts."""
    cpu0, parent0, occ0 = ev.cpu_seconds(), time.process_time(), ev.gpu_occupancy()
    t = time.perf_counter()
    verdicts = ev.evaluate_batch(pairs, backend=backend, seed=seed, trials=trials)
    secs = time.perf_counter() - t
    spans = timeline(ev.gpu_exclusive_spans(t), t, t + secs)
    cpu1, occ1 = ev.cpu_seconds(), ev.gpu_occupancy()
    # Where the GPU lock's time went during the batch (summed over GPUs): exclusive (timing), draining
    # (a timing waits for shared holders to leave), shared only, idle.
    lock_s: dict[str, float] = {}
    for d, after in occ1.items():
        for k, x in after.items():
            lock_s[k] = lock_s.get(k, 0.0) + x - occ0.get(d, {}).get(k, 0.0)
    cpu = {role: max(0.0, cpu1.get(role, 0.0) - cpu0.get(role, 0.0)) for role in cpu1}
    cpu["parent"] = time.process_time() - parent0
    # host wall time of each timing's measured replays (the exclusive part of a timing)
    measured = [v.timings["candidate"]["measure_ms"] for v in verdicts
                if "measure_ms" in ((v.timings or {}).get("candidate") or {})]
    statuses: dict[str, dict[str, int]] = {}
    for kind, v in zip(kinds, verdicts):
        statuses.setdefault(kind, {}).setdefault(v.status, 0)
        statuses[kind][v.status] += 1
    return {"n": len(pairs), "seconds": secs, "evals_per_s": len(pairs) / secs, "statuses_by_kind": statuses,
            "phases_mean_s": phase_means(verdicts), "device": verdicts[0].device if verdicts else "",
            "cpu_s": cpu, "cpu_s_per_eval": sum(cpu.values()) / max(1, len(pairs)), "gpu_lock_s": lock_s,
            "timed": len(measured), "measure_ms_mean": sum(measured) / len(measured) if measured else None,
            "timeline": spans}, verdicts


def load_check(ev, pairs: list[tuple[str, str]], verdicts: list, backend: str, seed: int, trials: int,
               k: int) -> list[dict]:
    """Timing under load vs alone: the first k timed candidates of a batch evaluated again one at a
    time (same seeds, idle pool). Exclusive timing should make the two medians agree."""
    from kernelgym.evaluation.reference import trial_seed

    rows = []
    for i in [i for i, v in enumerate(verdicts) if v.ok and v.timings and "candidate" in v.timings][:k]:
        alone = ev.evaluate(*pairs[i], backend, seed=trial_seed(seed, 1000 + i), trials=trials)
        if not (alone.ok and "candidate" in (alone.timings or {})):
            rows.append({"index": i, "error": f"alone: {alone.status} {alone.error[:200]}"})
            continue
        batch_ms, alone_ms = verdicts[i].timings["candidate"]["median_ms"], alone.timings["candidate"]["median_ms"]
        rows.append({"index": i, "batch_ms": batch_ms, "alone_ms": alone_ms, "ratio": batch_ms / alone_ms})
    return rows


def profile_summary(directory: Path, evals: int, top: int = 25) -> str:
    """Each worker role's profiled CPU seconds per evaluation, by function (own time, then time
    including callees), from the `<role>-<pid>.prof` files the workers wrote."""
    import io
    import pstats

    by_role: dict[str, list[str]] = {}
    for f in sorted(directory.glob("*.prof")):
        by_role.setdefault(f.name.split("-")[0], []).append(str(f))
    if not by_role:
        return f"no worker profiles in {directory}"
    parts = [f"worker CPU profiles of the steady batch ({evals} evaluations; cProfile, process CPU time)"]
    for role, files in sorted(by_role.items()):
        stats = pstats.Stats(*files, stream=io.StringIO())
        parts.append(f"\n== {role}: {len(files)} workers, {stats.total_tt / max(1, evals):.4f} CPU s an evaluation")
        for key in ("tottime", "cumulative"):
            buf = io.StringIO()
            stats.stream = buf
            stats.sort_stats(key).print_stats(top)
            body = buf.getvalue()
            parts.append(f"-- by {key}:\n" + body[body.find("   ncalls"):].rstrip())
    return "\n".join(parts) + "\n"


@contextlib.contextmanager
def fresh_dir_env(var: str, prefix: str) -> Iterator[str]:
    """Environment variable `var` set to a new empty folder (the workers started meanwhile inherit
    it), restored and the folder removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix) as d, set_env(var, d):
        yield d


@contextlib.contextmanager
def set_env(var: str, value: str | None) -> Iterator[None]:
    """`var` = `value` inside the block (None: left as it is), then as it was."""
    before = os.environ.get(var)
    if value is not None:
        os.environ[var] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = before


@contextlib.contextmanager
def set_switch_interval(seconds: float | None) -> Iterator[None]:
    """`sys.setswitchinterval(seconds)` inside the block (None: left as it is), then as it was."""
    before = sys.getswitchinterval()
    if seconds is not None:
        sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.keep_triton_cache:
        return _main(args)
    # Both harnesses (and every worker) compile into an empty Triton cache, so a run never finds an
    # earlier run's kernels compiled (the batch's sources are the same each run).
    with fresh_dir_env("TRITON_CACHE_DIR", "kernelgym-bench-triton-"):
        return _main(args)


def _parser() -> argparse.ArgumentParser:
    from kernelgym.evaluation.worker import SYNC_SCHEDULES

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=["auto", "interpret", "cuda"], default="auto")
    ap.add_argument("--n", type=int, default=None, help="candidates (default 64 on a GPU, 16 on CPU)")
    ap.add_argument("--tasks", type=int, default=None, help="distinct tasks (default n // 8, 1..8)")
    ap.add_argument("--serial-n", type=int, default=None,
                    help="candidates for the serial baseline (default: same as --n)")
    ap.add_argument("--workers", type=int, default=None, help="pool size (default min(cpu_count, 16))")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--numel", type=int, default=None, help="elements per input (default 1M GPU, 4096 CPU)")
    ap.add_argument("--rep-ms", type=float, default=None, help="timing budget per bench (both harnesses; "
                    "default timing.DEFAULT_BENCH)")
    ap.add_argument("--warmup-ms", type=float, default=None)
    ap.add_argument("--max-reps", type=int, default=None)
    ap.add_argument("--reference-workers", type=int, default=None)
    ap.add_argument("--devices", default=None,
                    help="GPUs for the pool, e.g. 0 or 0,1 (default all visible); run once with each for "
                         "the multi-GPU scaling of the same batch (--serial-n 8 keeps the baseline short)")
    ap.add_argument("--profile-workers", metavar="DIR", default=None,
                    help="cProfile the workers' requests during the steady batch (CPU time) and print "
                         "each role's costliest functions (its CPU figures then include the profiler's cost)")
    ap.add_argument("--lock-policy", default="writers_first", choices=["writers_first", "phase_fair"],
                    help="how correctness runs and timings share a GPU (Evaluator(gpu_lock_policy=...))")
    ap.add_argument("--cuda-sync", choices=sorted(SYNC_SCHEDULES), default=None,
                    help="how the pool's GPU workers wait for the GPU (KERNELGYM_CUDA_SYNC; default: the "
                         "environment's, else the workers' default); the serial harness is left as it is")
    ap.add_argument("--precompile", type=int, default=0, metavar="P",
                    help="on a GPU, P CPU processes compile each candidate's kernels ahead while its reference "
                         "job runs (Evaluator(precompile_workers=P); default 0: off)")
    ap.add_argument("--switch-interval", type=float, default=None, metavar="S",
                    help="this process's sys.setswitchinterval while the pool runs (default Python's 0.005): "
                         "how long a thread woken by its worker's reply may wait for the GIL")
    ap.add_argument("--steady", type=int, default=3, metavar="K",
                    help="steady batches (each new candidates and seeds); the median one is reported")
    ap.add_argument("--load-check", type=int, default=4, metavar="K",
                    help="on a GPU, time the steady batch's first K timed candidates again alone and print "
                         "batch / alone medians (0: skip)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "eval_throughput.json"))
    ap.add_argument("--keep-triton-cache", action="store_true",
                    help="use the usual Triton cache (default: a fresh one, so that no run finds an earlier "
                         "run's kernels compiled)")
    return ap


def _main(args: argparse.Namespace) -> int:
    ap = _parser()
    devices = None
    if args.devices is not None:
        try:
            devices = [int(d) for d in args.devices.split(",") if d.strip()]
        except ValueError:
            ap.error(f"--devices must be comma-separated GPU indices, got {args.devices!r}")

    if args.steady < 1:
        ap.error("--steady must be >= 1")
    if args.switch_interval is not None and not args.switch_interval > 0:
        ap.error("--switch-interval must be > 0")

    from kernelgym.evaluation import Evaluator, resolve_backend

    backend = resolve_backend(args.backend)
    n = args.n or (64 if backend == "cuda" else 16)
    tasks = max(1, min(n, args.tasks or min(8, max(1, n // 8))))
    numel = args.numel or (1 << 20 if backend == "cuda" else 4096)
    from kernelgym.evaluation.timing import DEFAULT_BENCH

    bench = dict(DEFAULT_BENCH)
    for k, v in (("rep_ms", args.rep_ms), ("warmup_ms", args.warmup_ms), ("max_reps", args.max_reps)):
        if v is not None:
            bench[k] = v
    batch = make_batch(n, numel, tasks)
    pairs = [(r, c) for _, _, r, c in batch]
    kinds = [k for _, k, _, _ in batch]
    serial_n = min(args.serial_n or n, n)

    serial = run_serial(pairs[:serial_n], backend, args.trials, bench)
    serial_eps = serial_n / serial["seconds"]
    # Progress lines as each part ends, so a run cut by a time limit still says how far it got.
    print(f".. serial: {serial_eps:.2f} evals/s", flush=True)
    prof_dir = None
    if args.profile_workers:
        from kernelgym.evaluation.worker import PROFILE_ENV

        prof_dir = Path(args.profile_workers)
        prof_dir.mkdir(parents=True, exist_ok=True)
        for f in [*prof_dir.glob("*.prof"), prof_dir / "on"]:
            f.unlink(missing_ok=True)
        os.environ[PROFILE_ENV] = str(prof_dir)   # the workers inherit it
    from kernelgym.evaluation.worker import SYNC_ENV

    interval = args.switch_interval or sys.getswitchinterval()
    with set_switch_interval(args.switch_interval), set_env(SYNC_ENV, args.cuda_sync), \
            Evaluator(workers=args.workers, reference_workers=args.reference_workers, bench=bench, devices=devices,
                      gpu_lock_policy=args.lock_policy, precompile_workers=args.precompile) as ev:
        t = time.perf_counter()
        ev.warm(backend)
        startup = time.perf_counter() - t
        print(f".. pool started in {startup:.1f} s", flush=True)
        first, _ = pool_batch(ev, pairs, kinds, backend, 0, args.trials)
        print(f".. first batch: {first['evals_per_s']:.2f} evals/s; {json.dumps(ev.stats)}", flush=True)
        # New RL steps: same tasks, new candidates (distinct sources: no ptx-cache hits), new seeds.
        if prof_dir is not None:
            (prof_dir / "on").touch()
        runs = []
        for k in range(1, args.steady + 1):
            batch_k = [(r, c) for _, _, r, c in make_batch(n, numel, tasks, offset=n * k)]
            runs.append((*pool_batch(ev, batch_k, kinds, backend, k, args.trials), batch_k, k))
            print(f".. steady batch {k}: {runs[-1][0]['evals_per_s']:.2f} evals/s; {json.dumps(ev.stats)}",
                  flush=True)
        if prof_dir is not None:
            (prof_dir / "on").unlink()
        steady, steady_verdicts, pairs2, seed2 = sorted(runs, key=lambda r: r[0]["evals_per_s"])[len(runs) // 2]
        loaded = load_check(ev, pairs2, steady_verdicts, backend, seed2, args.trials, args.load_check) \
            if backend == "cuda" else []
        workers, ref_workers, stats = ev.workers, ev.reference_workers, dict(ev.stats)
        used_devices = ev.devices if backend == "cuda" else []
    report = {
        "benchmark": "eval_throughput", "backend": backend, "device": first["device"],
        "n": n, "tasks": tasks, "numel": numel, "trials": args.trials, "bench": bench, "workers": workers,
        "reference_workers": ref_workers, "cpu_count": os.cpu_count(), "devices": used_devices,
        "lock_policy": args.lock_policy, "cuda_sync": args.cuda_sync or os.environ.get(SYNC_ENV, "default"),
        "triton_cache": "kept" if args.keep_triton_cache else "fresh",
        "serial": {"n": serial_n, "seconds": serial["seconds"], "evals_per_s": serial_eps,
                   "cpu_s": serial["cpu_s"], "cpu_s_per_eval": serial["cpu_s"] / serial_n,
                   "statuses": {s: serial["statuses"].count(s) for s in set(serial["statuses"])}},
        "precompile_workers": args.precompile, "switch_interval_s": interval,
        "pool_first": first, "pool_steady": steady, "pool_startup_s": startup, "cache_stats": stats,
        "pool_steady_evals_per_s": [r[0]["evals_per_s"] for r in runs],
        "speedup_first": first["evals_per_s"] / serial_eps, "speedup_steady": steady["evals_per_s"] / serial_eps,
        "timing_under_load": loaded,
        "gap_free_ceiling": gap_free_ceiling(n, steady["seconds"], steady.get("timeline"), len(used_devices),
                                             serial_eps),
    }
    print(f"eval throughput on {report['device']} ({backend}), {n} candidates over {tasks} tasks, "
          f"{args.trials} trials, {os.cpu_count()} CPUs" + (f", GPUs {used_devices}" if used_devices else "")
          + (f", GPU lock {args.lock_policy}, CUDA sync {report['cuda_sync']}" if backend == "cuda" else ""))
    print(f"{'harness':<34}{'evals':>7}{'seconds':>10}{'evals/s':>10}{'vs serial':>11}{'CPU s/eval':>12}")
    print(f"{'serial in-process':<34}{serial_n:>7}{serial['seconds']:>10.2f}{serial_eps:>10.2f}{1.0:>10.2f}x"
          f"{report['serial']['cpu_s_per_eval']:>12.3f}")
    for name, r in ((f"pool first batch ({workers} workers)", first), (f"pool steady ({workers} workers)", steady)):
        print(f"{name:<34}{n:>7}{r['seconds']:>10.2f}{r['evals_per_s']:>10.2f}"
              f"{r['evals_per_s'] / serial_eps:>10.2f}x{r['cpu_s_per_eval']:>12.3f}")
    if len(runs) > 1:
        rates = ", ".join(f"{x:.1f}" for x in report["pool_steady_evals_per_s"])
        print(f"steady batches: {rates} evals/s (the median one is reported here)")
    print("CPU seconds per evaluation by process role (steady batch): "
          + ", ".join(f"{k} {v / n:.3f}" for k, v in sorted(steady["cpu_s"].items(), key=lambda kv: -kv[1]))
          + " (both harnesses count compiler subprocesses)")
    if steady["gpu_lock_s"]:
        print("GPU lock, steady batch: " + ", ".join(f"{k} {x:.2f} s ({x / steady['seconds']:.0%})"
                                                      for k, x in steady["gpu_lock_s"].items())
              + f" of {steady['seconds']:.2f} s")
    if steady["timed"]:
        print(f"timings in the steady batch: {steady['timed']}, measuring {steady['measure_ms_mean']:.1f} ms each "
              f"(exclusive lock held {1000 * steady['gpu_lock_s'].get('exclusive', 0.0) / steady['timed']:.1f} ms "
              "a timing, hand-offs included)")
    tl = steady.get("timeline")
    if tl:
        print(f"timings' timeline, steady batch: the first began {tl['first_timing_s']:.2f} s after the batch "
              f"started, the last ended {tl['after_last_timing_s']:.2f} s before it ended; gaps between "
              f"timings {tl['gaps_s']:.2f} s (longest {tl['longest_gap_s']:.3f} s)")
    ceiling = report["gap_free_ceiling"]
    if ceiling:
        print(f"with no gap between timings (same ramp, timings and tail) the batch would take "
              f"{ceiling['seconds']:.2f} s: {ceiling['evals_per_s']:.1f} evals/s, {ceiling['vs_serial']:.2f}x serial")
    print(f"pool startup {startup:.1f} s (not counted); caches: {json.dumps(stats)}")
    print("pool mean seconds per evaluation by phase (concurrent evaluations overlap):")
    print(f"  {'phase':<26}{'first':>9}{'steady':>9}")
    for k in dict.fromkeys([*first["phases_mean_s"], *steady["phases_mean_s"]]):
        print(f"  {k:<26}{first['phases_mean_s'].get(k, 0.0):>9.4f}{steady['phases_mean_s'].get(k, 0.0):>9.4f}")
    if loaded:
        print("candidate timing in the steady batch vs alone (same seed, idle pool):")
        for row in loaded:
            print(f"  #{row['index']}: " + (row["error"] if "error" in row else
                  f"batch {row['batch_ms'] * 1000:.2f} us, alone {row['alone_ms'] * 1000:.2f} us, "
                  f"ratio {row['ratio']:.3f}"))
    print(f"serial statuses: {json.dumps(report['serial']['statuses'])}")
    print(f"pool verdicts by kind: {json.dumps(steady['statuses_by_kind'])}")
    if prof_dir is not None:   # the workers wrote their profiles when the pool closed
        os.environ.pop(PROFILE_ENV, None)
        text = profile_summary(prof_dir, n)
        (prof_dir / "summary.txt").write_text(text)
        print(text)
    write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
