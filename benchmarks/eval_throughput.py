"""Evaluation throughput: the worker pool vs a serial in-process harness (the KernelBench way).

A batch of distinct candidates for one elementwise task -- correct, incorrect (wrong math) and
crashing (an exception in forward; a hard crash would kill the serial harness's own process) --
is judged twice:

* serial: one process, one candidate after another: exec the reference and the candidate in this
  process, run the trials, compare with allclose (and, on a GPU, time correct ones with
  `triton.testing.do_bench`), as KernelBench's harness does;
* pool: `Evaluator.evaluate_batch` over the worker pool (candidates and references in separate
  processes, guards on, sm_90 ptx check on the interpreter, timing + baselines on a GPU).

Every candidate differs in source text, so Triton compiles each one (as with LLM samples).
Prints a table and writes JSON. Usage:
    python benchmarks/eval_throughput.py [--backend auto|interpret|cuda] [--n 64] [--workers W]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
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
    return [torch.randn(N), torch.randn(N)]


def get_init_inputs():
    return []
'''

CANDIDATE = '''
import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def fused_kernel_{i}(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    y = tl.load(y_ptr + offs, mask=mask)
    r = tl.maximum(x, 0.0)
    tl.store(out_ptr + offs, {expr}, mask=mask)


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x, y):
        out = torch.empty_like(x)
        n = out.numel()
{pre}        fused_kernel_{i}[(triton.cdiv(n, {block}),)](x, y, out, n, BLOCK={block})
        return out
'''

KINDS = ("correct", "correct", "incorrect", "crashing")


def make_batch(n: int, numel: int) -> tuple[str, list[tuple[str, str]]]:
    ref = REFERENCE.replace("N)", f"{numel})")
    cands = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        block = (128, 256, 512, 1024)[(i // len(KINDS)) % 4]
        expr = "r * y + x" if kind != "incorrect" else "r * y - x"
        pre = "        raise RuntimeError('launch configuration invalid')\n" if kind == "crashing" else ""
        cands.append((kind, CANDIDATE.format(i=i, expr=expr, pre=pre, block=block)))
    return ref, cands


SERIAL = r'''
import importlib.util, json, os, sys, tempfile, time
import torch
import triton, triton.testing

data = json.loads(sys.stdin.read())
device = data["device"]
tmp = tempfile.mkdtemp()

def load(src, name):
    path = os.path.join(tmp, name + ".py")
    with open(path, "w") as fh:
        fh.write(src)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

results = []
t0 = time.perf_counter()
for i, cand in enumerate(data["candidates"]):
    status = "ok"
    try:
        ref = load(data["reference"], f"ref_{i}")
        torch.manual_seed(i)
        init = ref.get_init_inputs()
        model = ref.Model(*init).to(device)
        mod = load(cand, f"cand_{i}")
        new = mod.ModelNew(*init).to(device)
        new.load_state_dict(model.state_dict())
        for t in range(data["trials"]):
            torch.manual_seed(1000 * i + t)
            inputs = [x.to(device) for x in ref.get_inputs()]
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
                triton.testing.do_bench(lambda: new(*inputs))
    except Exception as exc:
        status = "runtime_error"
    results.append(status)
print(json.dumps({"seconds": time.perf_counter() - t0, "statuses": results}))
'''


def run_serial(reference: str, candidates: list[str], backend: str, trials: int) -> dict:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    if backend == "interpret":
        env["TRITON_INTERPRET"] = "1"
        env["CUDA_VISIBLE_DEVICES"] = ""
    payload = json.dumps({"reference": reference, "candidates": candidates, "trials": trials,
                          "device": "cuda" if backend == "cuda" else "cpu"})
    out = subprocess.run([sys.executable, "-c", SERIAL], input=payload, capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=["auto", "interpret", "cuda"], default="auto")
    ap.add_argument("--n", type=int, default=None, help="candidates (default 64 on a GPU, 16 on CPU)")
    ap.add_argument("--serial-n", type=int, default=None,
                    help="candidates for the serial baseline (default: same as --n)")
    ap.add_argument("--workers", type=int, default=None, help="pool size (default min(cpu_count, 16))")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--numel", type=int, default=None, help="elements per input (default 1M GPU, 4096 CPU)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "eval_throughput.json"))
    args = ap.parse_args(argv)

    from kernelgym.evaluation import Evaluator, resolve_backend

    backend = resolve_backend(args.backend)
    n = args.n or (64 if backend == "cuda" else 16)
    numel = args.numel or (1 << 20 if backend == "cuda" else 4096)
    reference, batch = make_batch(n, numel)
    kinds = [k for k, _ in batch]
    serial_n = min(args.serial_n or n, n)

    serial = run_serial(reference, [c for _, c in batch[:serial_n]], backend, args.trials)
    serial_eps = serial_n / serial["seconds"]

    with Evaluator(workers=args.workers) as ev:
        t = time.perf_counter()
        ev.warm(backend)
        startup = time.perf_counter() - t
        t = time.perf_counter()
        verdicts = ev.evaluate_batch([(reference, c) for _, c in batch], backend=backend, seed=0,
                                     trials=args.trials)
        pool_s = time.perf_counter() - t
        workers = ev.workers
    pool_eps = n / pool_s
    statuses: dict[str, dict[str, int]] = {}
    for kind, v in zip(kinds, verdicts):
        statuses.setdefault(kind, {}).setdefault(v.status, 0)
        statuses[kind][v.status] += 1
    report = {
        "benchmark": "eval_throughput", "backend": backend, "device": verdicts[0].device if verdicts else "",
        "n": n, "numel": numel, "trials": args.trials, "workers": workers, "cpu_count": os.cpu_count(),
        "serial": {"n": serial_n, "seconds": serial["seconds"], "evals_per_s": serial_eps,
                   "statuses": {s: serial["statuses"].count(s) for s in set(serial["statuses"])}},
        "pool": {"n": n, "seconds": pool_s, "evals_per_s": pool_eps, "startup_s": startup,
                 "statuses_by_kind": statuses},
        "speedup": pool_eps / serial_eps,
    }
    print(f"eval throughput on {report['device']} ({backend}), {n} candidates, {args.trials} trials")
    print(f"{'harness':<22}{'evals':>7}{'seconds':>10}{'evals/s':>10}")
    print(f"{'serial in-process':<22}{serial_n:>7}{serial['seconds']:>10.2f}{serial_eps:>10.2f}")
    print(f"{f'pool ({workers} workers)':<22}{n:>7}{pool_s:>10.2f}{pool_eps:>10.2f}")
    print(f"pool / serial: {report['speedup']:.2f}x  (pool startup {startup:.1f} s, not counted)")
    print(f"pool verdicts by kind: {json.dumps(statuses)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
