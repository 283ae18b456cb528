"""Soak: one evaluator judges a long seeded stream of good, broken and hostile actions; afterwards
(and at checkpoints) it must still be healthy.

The actions (`actions`) are drawn with a seeded RNG from: the red team's legit kernels; mutated
copies of them (wrong mask, wrong stride, off-by-one grid, dropped store); every CPU red-team hack
(static, runtime and OS-layer escapes); bad input (empty, binary, text over the 1 MB limit, a
valid file just under it, nesting deep enough to break the parser, unbounded recursion in forward,
infinite loops at import and inside a kernel, host-memory bombs at import and in forward); and
repeats of earlier actions with their seed. They run interleaved over the pool.

Checked at each checkpoint and at the end:
- every verdict's status is in the closed set (`verdict.STATUSES`), none lost (an exception or a
  missing verdict counts as lost);
- expectations: legit kernels and the huge valid file `ok`, every hack and every bad input not `ok`;
- a repeated action (same source, same seed) gets the same status and reasons as the first time;
- no orphan: every process started under this run (marked through the environment) is a live
  worker or its child; after `close()` none is left;
- no escape: the OS-layer hacks' targets (`tests/redteam/targets.py`) are untouched;
- no leaked file: the run's own temporary folder and its output folders on /dev/shm are empty
  after `close()`;
- the parent's resident memory growth after warm-up (reported; `--max-growth-mb` bounds it);
- worker (re)starts per role, evaluations per second and the verdict mix.

Usage: python -m benchmarks.soak [--n 1000] [--backend interpret] [--workers 2] [--seed 0]
       [--timeout 20] [--checkpoint 100] [--os-sandbox auto] [--json OUT]
Exit status 1 when a check failed.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

MARK_ENV = "KERNELGYM_SOAK_RUN"


@dataclass(frozen=True)
class Action:
    """One thing to judge: `kind` (legit, mutant, hack, bad, repeat), a `name`, the task and candidate
    sources, the mode and the seed; `expect` is "ok", "not_ok" or "any"."""

    index: int
    kind: str
    name: str
    task: str
    source: str
    mode: str
    seed: int
    expect: str
    first: int | None = None   # for a repeat: the index of the action it repeats


# ----------------------------------------------------------------------------- the action mix

def _red_team(backend: str) -> tuple[list[Any], list[Any]]:
    from tests.redteam.manifest import cases

    cs = [c for c in cases() if backend == "cuda" or c.layer != "gpu"]
    return [c for c in cs if c.legit], [c for c in cs if not c.legit]


_MUTATIONS: dict[str, tuple[str, str]] = {
    "mask": (r"mask = (\w+) < (\w+)", r"mask = \1 <= \2 + 3"),
    "stride": (r"\.stride\(0\)", ".stride(1)"),
    "grid": (r"triton\.cdiv\(([^()]+), ([^()]+)\)", r"(triton.cdiv(\1, \2) - 1)"),
    "grid_rows": (r"\[\(rows,\)\]", "[(rows - 1,)]"),
    "store": (r"\n(\s*)tl\.store\([^\n]*\)", r"\n\1pass"),
}


def mutate(source: str, how: str) -> str | None:
    """`source` with one deliberate bug of kind `how` (see `_MUTATIONS`), None when it does not apply."""
    pattern, repl = _MUTATIONS[how]
    out, n = re.subn(pattern, repl, source, count=1)
    return out if n else None


_LOOP_KERNEL = '''
import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def spin_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    i = 0
    while i >= 0:
        i += 1
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)


class ModelNew(nn.Module):
    def forward(self, x):
        out = torch.empty_like(x)
        spin_kernel[(triton.cdiv(x.numel(), 64),)](x, out, x.numel(), BLOCK=64)
        return out
'''


_COPY = '''
@triton.jit
def copy_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)


def copy(x):
    out = torch.empty_like(x)
    copy_kernel[(triton.cdiv(x.numel(), 64),)](x, out, x.numel(), BLOCK=64)
    return out
'''


def bad_inputs(legit_source: str, rng: random.Random) -> dict[str, tuple[str, str]]:
    """Broken candidates: name -> (source, expectation). Those meant to run define and launch a
    Triton kernel, so that the static layer lets them through to the worker."""
    head = "import torch\nimport torch.nn as nn\nimport triton\nimport triton.language as tl\n" + _COPY
    model = "\n\nclass ModelNew(nn.Module):\n    def forward(self, x):\n        {pre}return copy(x)\n"
    return {
        "empty": ("", "not_ok"),
        "binary": (bytes(rng.getrandbits(8) for _ in range(4096)).decode("latin-1"), "not_ok"),
        "huge_text": ("lorem ipsum " * 700_000, "not_ok"),
        "huge_valid": ("# " + "padding " * 110_000 + "\n" + legit_source, "ok"),
        "deep_nesting": (head + "Y = " + "(" * 5000 + "1" + ")" * 5000 + "\n" + model.format(pre=""), "not_ok"),
        "recursion": (head + "\n\ndef deeper(n):\n    return deeper(n + 1)\n"
                      + model.format(pre="deeper(0)\n        "), "not_ok"),
        "loop_import": (head + "\nwhile True:\n    pass\n" + model.format(pre=""), "not_ok"),
        "loop_kernel": (_LOOP_KERNEL, "not_ok"),
        "memory_import": (head + "\nHOARD = b'x' * (8 << 30)\n" + model.format(pre=""), "not_ok"),
        "memory_forward": (head + model.format(pre="hoard = torch.ones(2 << 30)\n        x = x + hoard[0]\n        "),
                           "not_ok"),
    }


# Relative weights of the kinds; repeats come on top (`--repeat`).
WEIGHTS = {"legit": 3, "mutant": 3, "hack": 4, "bad": 2}


def actions(n: int, seed: int, backend: str = "interpret", repeat: float = 0.08) -> list[Action]:
    """`n` actions drawn with `seed`: the same arguments always give the same list."""
    rng = random.Random(seed)
    legit, hacks = _red_team(backend)
    tasks = {c.id: c for c in legit}
    out: list[Action] = []
    kinds, weights = zip(*WEIGHTS.items())
    for i in range(n):
        seed_i = rng.getrandbits(31)
        if out and rng.random() < repeat:
            a = out[rng.randrange(len(out))]
            while a.first is not None:
                a = out[a.first]
            out.append(Action(i, "repeat", a.name, a.task, a.source, a.mode, a.seed, a.expect, first=a.index))
            continue
        kind = rng.choices(kinds, weights)[0]
        if kind == "legit":
            c = rng.choice(legit)
            out.append(Action(i, kind, c.id, c.task_source, c.source, c.mode, seed_i, "ok"))
        elif kind == "hack":
            c = rng.choice(hacks)
            out.append(Action(i, kind, c.id, c.task_source, c.source, c.mode, seed_i, "not_ok"))
        elif kind == "mutant":
            c = rng.choice(legit)
            hows = [h for h in _MUTATIONS if mutate(c.source, h) is not None]
            how = rng.choice(hows)
            out.append(Action(i, kind, f"{c.id}~{how}", c.task_source, mutate(c.source, how) or "", c.mode,
                              seed_i, "any"))
        else:
            c = rng.choice(legit)
            name, (src, expect) = rng.choice(sorted(bad_inputs(c.source, rng).items()))
            # The broken sources define forward(x): the one-input task, except the huge valid file.
            task = c.task_source if name == "huge_valid" else tasks["legit/row_softmax"].task_source
            out.append(Action(i, kind, f"bad/{name}", task, src, c.mode if name == "huge_valid" else "strict",
                              seed_i, expect))
    return out


# ----------------------------------------------------------------------------- health checks

def _environ_has(pid: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return marker in fh.read()
    except OSError:
        return False


def marked_processes(marker: str) -> list[int]:
    """Live processes (other than this one) whose environment carries this run's marker."""
    me, needle = os.getpid(), f"{MARK_ENV}={marker}".encode()
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != me]
    return [p for p in pids if _environ_has(p, needle)]


def orphans(ev: Any, marker: str) -> list[int]:
    """Marked processes that are neither a live worker nor one of its descendants."""
    from kernelgym.evaluation import template
    from kernelgym.evaluation.pool import process_tree

    live: set[int] = set(template.pids())   # the templates that fork the workers
    for pid in ev.worker_pids() + (ev._precompiler.pids() if ev._precompiler is not None else []):
        live.update(process_tree(pid))
    return [p for p in marked_processes(marker) if p not in live and not _zombie(p)]


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return True


def rss_mb() -> float:
    with open("/proc/self/statm", "rb") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def shm_dirs() -> list[str]:
    """This process's output folders on /dev/shm (the evaluator's and its workers')."""
    from kernelgym.evaluation.sandbox import SPILL_PREFIX

    try:
        return sorted(n for n in os.listdir("/dev/shm") if n.startswith(f"{SPILL_PREFIX}{os.getpid()}-"))
    except OSError:
        return []


def _key(v: Any) -> tuple[str, tuple[str, ...]]:
    return v.status, tuple(sorted(v.reasons))


# ----------------------------------------------------------------------------- the run

def soak(n: int = 1000, *, backend: str = "interpret", workers: int = 2, seed: int = 0, timeout: float = 20.0,
         checkpoint: int = 100, os_sandbox: str = "auto", concurrency: int | None = None,
         memory_limit_mb: float | None = None, progress: bool = True) -> dict[str, Any]:
    """Judge `n` actions (see the module docstring) and return the report (``report["failures"]``
    lists every failed check; empty when healthy)."""
    from kernelgym.evaluation import Evaluator
    from kernelgym.evaluation.verdict import STATUSES

    acts = actions(n, seed, backend)
    if memory_limit_mb is None:   # a CUDA worker's context alone is over a gigabyte resident
        memory_limit_mb = 6144 if backend == "cuda" else 1024
    marker = uuid.uuid4().hex
    tmp_root = tempfile.mkdtemp(prefix="kernelgym-soak-")
    saved = {k: os.environ.get(k) for k in (MARK_ENV, "TMPDIR")}
    saved_tempdir = tempfile.tempdir
    os.environ[MARK_ENV] = marker
    os.environ["TMPDIR"] = tmp_root          # everything the evaluator and its workers make goes here
    tempfile.tempdir = tmp_root
    from tests.redteam.targets import Targets

    # What the OS-layer hacks aim at (another evaluation's output file, the shared Triton cache, a
    # local TCP listener, this process's signals): checked untouched at the end.
    targets = Targets()
    armed = targets.armed()
    armed.__enter__()
    failures: list[str] = []
    verdicts: dict[int, Any] = {}
    lost: list[str] = []
    checkpoints: list[dict[str, Any]] = []
    lock = threading.Lock()
    t_start = time.perf_counter()
    # Other evaluators of this process (a test session's) have output folders of their own: only
    # what this run's evaluator makes is its to account for and to remove.
    shm_before = set(shm_dirs())
    ev = Evaluator(workers=workers, reference_workers=max(1, workers // 2), ptx_workers=1,
                   memory_limit_mb=memory_limit_mb, timeout=timeout, os_sandbox=os_sandbox)
    try:
        ev.warm(backend)
        rss0 = rss_mb()
        t0 = time.perf_counter()

        def one(a: Action) -> None:
            try:
                v = ev.evaluate(a.task, a.source, backend, a.mode, seed=a.seed)
            except BaseException as exc:  # noqa: BLE001 - a lost verdict is what this counts
                with lock:
                    lost.append(f"#{a.index} {a.name}: {type(exc).__name__}: {exc}"[:300])
                return
            with lock:
                verdicts[a.index] = v

        width = concurrency or (ev.workers + ev.reference_workers)
        done = 0
        for start in range(0, n, checkpoint):
            chunk = acts[start:start + checkpoint]
            with ThreadPoolExecutor(width, thread_name_prefix="soak") as ex:
                list(ex.map(one, chunk))
            done += len(chunk)
            cp = {"done": done, "seconds": round(time.perf_counter() - t0, 1), "rss_mb": round(rss_mb(), 1),
                  "orphans": orphans(ev, marker), "started": ev.workers_started(),
                  "shm_dirs": len(set(shm_dirs()) - shm_before)}
            checkpoints.append(cp)
            if cp["orphans"]:
                failures.append(f"orphan processes at {done}: {cp['orphans']}")
            if progress:
                print(f"[soak] {done}/{n} actions, {cp['seconds']} s, parent RSS {cp['rss_mb']} MB, "
                      f"workers started {cp['started']}, orphans {len(cp['orphans'])}", flush=True)
        elapsed = time.perf_counter() - t0
        rss_end = rss_mb()
    finally:
        ev.close()
        armed.__exit__(None, None, None)
        escaped = targets.untouched()
        targets.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        tempfile.tempdir = saved_tempdir
    if escaped:
        failures.append(f"escapes reached their targets: {escaped}")
    # After close(): nothing of ours may be left.
    time.sleep(0.5)
    left = [p for p in marked_processes(marker) if not _zombie(p)]
    if left:
        failures.append(f"processes left after close(): {left}")
    # torch's own persistent compile cache (torchinductor_<user>) is not the evaluator's to remove.
    ours = sorted(set(shm_dirs()) - shm_before)
    leaked = sorted(x for x in os.listdir(tmp_root) if not x.startswith("torchinductor_")) + \
        [f"/dev/shm/{d}" for d in ours]
    if leaked:
        failures.append(f"files left after close(): {leaked[:20]}")
    shutil.rmtree(tmp_root, ignore_errors=True)
    for d in ours:
        shutil.rmtree(os.path.join("/dev/shm", d), ignore_errors=True)

    # Verdicts: closed set, expectations, repeats.
    mix: collections.Counter[str] = collections.Counter()
    by_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    unexpected, mismatched = [], []
    for a in acts:
        v = verdicts.get(a.index)
        if v is None:
            if not any(x.startswith(f"#{a.index} ") for x in lost):
                lost.append(f"#{a.index} {a.name}: no verdict")
            continue
        if v.status not in STATUSES:
            failures.append(f"#{a.index} {a.name}: status {v.status!r} outside the closed set")
        mix[v.status] += 1
        by_kind[a.kind][v.status] += 1
        if (a.expect == "ok" and v.status != "ok") or (a.expect == "not_ok" and v.status == "ok"):
            unexpected.append(f"#{a.index} {a.name} ({a.mode}): {v.status} {v.reasons} {v.error[:200]}")
        if a.first is not None and a.first in verdicts and _key(verdicts[a.first]) != _key(v):
            mismatched.append(f"#{a.index} repeats #{a.first} {a.name}: {_key(verdicts[a.first])} then {_key(v)}")
    if lost:
        failures.append(f"{len(lost)} lost verdict(s): {lost[:5]}")
    if unexpected:
        failures.append(f"{len(unexpected)} unexpected verdict(s): {unexpected[:5]}")
    if mismatched:
        failures.append(f"{len(mismatched)} repeat(s) judged differently: {mismatched[:5]}")
    survivors = sorted({a.name for a in acts if a.kind == "mutant" and verdicts.get(a.index) is not None
                        and verdicts[a.index].status == "ok"})
    durations = sorted(v.duration_s for v in verdicts.values())
    report = {
        "n": n, "backend": backend, "workers": workers, "seed": seed, "timeout": timeout,
        "memory_limit_mb": memory_limit_mb,
        "os_sandbox": os_sandbox, "sandbox_labels": sorted({v.versions.get("os_sandbox", "?") for v in verdicts.values()
                                                            if "os_sandbox" in v.versions}),
        "seconds": round(elapsed, 1), "evals_per_s": round(len(verdicts) / elapsed, 3) if elapsed else None,
        "median_eval_s": durations[len(durations) // 2] if durations else None,
        "verdict_mix": dict(mix.most_common()), "by_kind": {k: dict(c) for k, c in sorted(by_kind.items())},
        "actions_by_kind": dict(collections.Counter(a.kind for a in acts)),
        "lost": lost, "unexpected": unexpected, "repeat_mismatches": mismatched,
        "repeats": sum(a.kind == "repeat" for a in acts), "mutants_judged_ok": survivors,
        "parent_rss_mb": {"after_warm": round(rss0, 1), "end": round(rss_end, 1),
                          "max": round(max(c["rss_mb"] for c in checkpoints), 1) if checkpoints else None,
                          "growth": round(max([rss_end, *(c["rss_mb"] for c in checkpoints)]) - rss0, 1)},
        "workers_started": checkpoints[-1]["started"] if checkpoints else {},
        "checkpoints": checkpoints, "failures": failures,
        "verdicts": [[a.index, a.kind, a.name, a.mode, v.status, v.reasons, v.error[:160], v.duration_s]
                     for a in acts for v in [verdicts.get(a.index)] if v is not None],
        "wall_s_with_startup": round(time.perf_counter() - t_start, 1),
    }
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1000, help="actions to judge (default 1000)")
    p.add_argument("--backend", default="interpret", choices=("interpret", "cuda"))
    p.add_argument("--workers", type=int, default=2, help="candidate workers (default 2)")
    p.add_argument("--concurrency", type=int, default=None, help="evaluations in flight (default: the pool's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=20.0, help="seconds per phase (default 20)")
    p.add_argument("--checkpoint", type=int, default=100, help="actions between health checks (default 100)")
    p.add_argument("--os-sandbox", default="auto", choices=("auto", "require", "off"))
    p.add_argument("--memory-limit-mb", type=float, default=None,
                   help="per worker (default 1024 on the interpreter, 6144 on cuda; the bombs take 8 GB)")
    p.add_argument("--max-growth-mb", type=float, default=200.0, help="parent memory growth allowed (default 200)")
    p.add_argument("--json", default=None, help="write the report here")
    args = p.parse_args(argv)
    if args.n < 1 or args.checkpoint < 1 or args.workers < 1:
        p.error("--n, --checkpoint and --workers must be >= 1")
    rep = soak(args.n, backend=args.backend, workers=args.workers, seed=args.seed, timeout=args.timeout,
               checkpoint=args.checkpoint, os_sandbox=args.os_sandbox, concurrency=args.concurrency,
               memory_limit_mb=args.memory_limit_mb)
    if rep["parent_rss_mb"]["growth"] > args.max_growth_mb:
        rep["failures"].append(f"parent memory grew {rep['parent_rss_mb']['growth']} MB "
                               f"(limit {args.max_growth_mb})")
    if args.json:
        Path(args.json).write_text(json.dumps(rep, indent=1))
    brief = {k: rep[k] for k in ("n", "backend", "os_sandbox", "sandbox_labels", "seconds", "evals_per_s",
                                 "median_eval_s", "verdict_mix", "by_kind", "repeats", "mutants_judged_ok",
                                 "parent_rss_mb", "workers_started", "failures")}
    print(json.dumps(brief, indent=1))
    return 1 if rep["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
