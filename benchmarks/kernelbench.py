"""KernelBench end to end: a policy's kernels for KernelBench's problems, judged by kernelgym's evaluator.

PATH is a KernelBench checkout the user has (its problems in PATH/level{1,2,3} or
PATH/KernelBench/level{1,2,3}; its published timings in PATH/results/timing/<hardware>/); the
project ships none of its files. Per level it reports the problems the compiler traced, those the
policy compiled, those judged ``ok`` in strict and in lenient mode, fast_1 against eager and
against torch.compile over *all* problems (a failure is not fast: KernelBench's fast_p), the
geomean speedup of the problems judged ok, and the ratio of our eager (and torch.compile) baseline
to the times KernelBench publishes for an H100 (a cross-check of the timer), plus the per-kernel
profile of the losers (ok but slower than eager). Writes ``kernelbench.json`` in --out.

Each problem's candidate is proposed in a forked child process with a time limit (--task-timeout:
tracing a problem at KernelBench's sizes on a CPU can take minutes), then judged by an
`Evaluator`. A policy that searches (``search()``, e.g. --policy search) runs in this process
instead, --jobs problems at a time (threads; --budget-evals / --budget-s bound each problem's
search), after its base compiler traced every problem in forked children under --task-timeout
(tracing serialised per child, in parallel across them). In lenient mode the compiler runs
convolutions as the vendor call with the ops around them fused into Triton (extern anchors) and
the search chooses per anchor between that and the Triton template; a row's ``vendor_calls``
counts the extern anchors of its candidate. In --mode both, a kernel ok in strict mode is an ok
lenient answer too (it computes everything in Triton): a search judges in lenient mode only the
problems strict mode did not solve; a non-searching policy's lenient candidates are all proposed,
and one identical to an ok strict candidate reuses its verdict. A reused row says so
(``lenient_from: "strict"``).

--search-losers FILE (a searching policy): the progress file of a compiler run of the same levels
and mode (its OUT/kernelbench.progress.jsonl). A problem that run judged ok and faster than both
eager and torch.compile (`--search-losers-vs eager`: than eager) keeps that row
(``search_skipped``: a search's first candidate is that very one, so it would only look for more
speed there); only the others are searched. On a GPU
session's budget a search of every level-2 problem takes hours; this spends it where it can
change fast_1.

--trace-only (CPU, no evaluation): per level, the problems the compiler traced and compiled in
strict and lenient mode (`benchmarks/_coverage.py`, which `trace_coverage` runs too).

Usage: python -m benchmarks.kernelbench PATH [--levels 1,2,3] [--policy compiler|search|MODULE:ATTR]
       [--mode strict|lenient|both] [--backend auto|cuda|interpret] [--jobs J] [--workers W]
       [--budget-evals N] [--budget-s S]
       [--limit N] [--filter TEXT] [--task-timeout S] [--trace-only] [--profile-losers K] [--heartbeat S]
       [--resume] [--search-losers FILE [--search-losers-vs both|eager]] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks._children import in_children
from benchmarks._coverage import trace_and_compile
from benchmarks._kb_checkout import level_dirs, load_level, parse_levels, published_timings
from benchmarks._output import write_json

ROOT = Path(__file__).resolve().parents[1]
WITHIN = 0.10   # an eager baseline "agrees" with the published one within 10 %


# -- proposing in children -----------------------------------------------------------------------
def _trace_job(task: Any) -> Callable[[], dict[str, Any]]:
    def job() -> dict[str, Any]:
        r = trace_and_compile(task, ("strict", "lenient"))
        out: dict[str, Any] = {"traced": r["traced"], "compiled_strict": r["compiled"].get("strict", False),
                               "compiled_lenient": r["compiled"].get("lenient", False)}
        if not r["traced"]:
            return {**out, "error": f"trace: {r['errors']['trace']}"[:500]}
        for mode in ("strict", "lenient"):
            if mode in r["errors"]:
                out[f"error_{mode}"] = r["errors"][mode][:300]
        return out
    return job


def _program_job(task: Any) -> Callable[[], dict[str, Any]]:
    """Trace `task` with the compiler (in a child: a slow trace costs --task-timeout, not the run)."""
    def job() -> dict[str, Any]:
        from policies.compiler import CompilerPolicy

        return {"program": CompilerPolicy().program(task)}
    return job


def pretrace(tasks: Sequence[Any], compiler: Any, timeout: float, jobs: int,
             cache: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Trace every task in forked children and hand the programs to `compiler` (a CompilerPolicy,
    e.g. a search's base), so the in-process search never traces; per task ``{"traced": bool}``
    plus the error of a trace that failed or timed out. `cache` (task hash -> the child's result)
    keeps the traces for the next mode."""
    cache = {} if cache is None else cache
    new = [t for t in tasks if t.hash not in cache]
    for t, r in zip(new, in_children([_program_job(t) for t in new], timeout, jobs)):
        cache[t.hash] = r
    out = []
    for t in tasks:
        r = cache[t.hash]
        if r.get("program") is not None:
            compiler._programs[t.hash] = r["program"]
            out.append({"traced": True, "trace_s": r.get("seconds")})
        else:
            out.append({"traced": False, "error": f"trace: {r.get('error', 'no program')}"[:500],
                        "timed_out": r.get("timed_out", False), "seconds": r.get("seconds")})
    return out


def search_level(tasks: Sequence[Any], policy: Any, ev: Any, backend: str, mode: str, args: argparse.Namespace,
                 jobs: int, cache: dict[str, dict[str, Any]] | None = None,
                 on_verdict: Callable[[Any, dict[str, Any], Any], None] | None = None,
                 ) -> tuple[list[dict[str, Any]], list[Any]]:
    """(proposals, verdicts) of a searching policy over `tasks`: traced first (`pretrace`, when the
    base is the compiler), then searched `jobs` problems at a time; `on_verdict(task, proposal,
    verdict)` as each is judged."""
    from kernelgym.runner import run_tasks

    base = getattr(policy, "base", None)
    if callable(getattr(base, "program", None)) and isinstance(getattr(base, "_programs", None), dict):
        props = pretrace(tasks, base, args.task_timeout, jobs, cache)
    else:
        props = [{} for _ in tasks]
    todo = [i for i, p in enumerate(props) if p.get("traced", True)]
    verdicts: list[Any] = [None] * len(tasks)
    index = {id(tasks[i]): i for i in todo}

    def done(r: Any) -> None:   # run_tasks calls it for every result it returns
        i = index[id(r.task)]
        props[i].update(source=r.source, error=r.policy_error)
        if r.search is not None:
            best = r.search.log[r.search.best_index] if r.search.best_index is not None else {}
            props[i]["search"] = {"evaluations": r.search.evaluations, "stopped": r.search.stopped,
                                  "best_origin": best.get("origin"), "best_changes": best.get("changes"),
                                  "elapsed_s": round(r.search.elapsed_s, 1)}
        props[i]["seconds"] = round(r.elapsed_s, 2)
        verdicts[i] = r.verdict if r.source else None
        if on_verdict is not None and verdicts[i] is not None:
            on_verdict(tasks[i], props[i], verdicts[i])

    run_tasks([tasks[i] for i in todo], policy, ev, backend, mode, jobs=jobs, seed=args.seed, on_done=done)
    return props, verdicts


def same_candidate(lenient: str | None, strict: str | None) -> bool:
    """Whether a lenient candidate is the strict one (the compiler's docstring names its mode)."""
    return bool(lenient and strict) and lenient.replace("(mode lenient)", "(mode strict)") == strict


def environment() -> dict[str, Any]:
    """Commit, device and versions for the report (NOTES.md figures cite them)."""
    import platform
    import subprocess

    import torch
    import triton

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return None

    commit = (git("rev-parse", "--short", "HEAD") or "").strip() or None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status.strip()) if status is not None else None,
            "source_hash": source_hash(), "torch": torch.__version__, "triton": triton.__version__,
            "python": platform.python_version(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}


def source_hash(root: Path = ROOT) -> str:
    """A hash of the project's code (every .py file under kernelgym/, policies/ and benchmarks/):
    what a report was measured with even where the checkout's git metadata is stale or absent (a
    copy of the working tree on a lent GPU machine reported its session's first commit). Compare
    with the same function run on a commit's checkout."""
    import hashlib

    h = hashlib.sha1()
    for sub in ("kernelgym", "policies", "benchmarks"):
        for path in sorted((root / sub).rglob("*.py")):
            h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def _propose_job(task: Any, make_policy: Callable[[], Any]) -> Callable[[], dict[str, Any]]:
    def job() -> dict[str, Any]:
        policy = make_policy()
        out: dict[str, Any] = {}
        if callable(getattr(policy, "program", None)):   # a compiler: did it trace?
            try:
                policy.program(task)
                out["traced"] = True
            except Exception as exc:  # noqa: BLE001
                return {"traced": False, "error": f"trace: {type(exc).__name__}: {exc}"[:500]}
        got = policy.propose(task, n=1)
        return {**out, "source": got[0] if got else None}
    return job


# -- judging -------------------------------------------------------------------------------------
def read_progress(path: Path, warn: bool = False) -> dict[tuple[int, str, str], dict[str, Any]]:
    """The lines of a progress file (`Progress`) that hold a whole row, by (level, mode, problem):
    the last line of a problem wins (a row judged again is appended). A line cut short by a kill
    is skipped (with `warn`, named on stderr: it is judged again)."""
    done: dict[tuple[int, str, str], dict[str, Any]] = {}
    for n, text in enumerate(path.read_text().splitlines(), 1):
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            if warn:
                print(f"kernelbench: {path}:{n}: not JSON, judged again", file=sys.stderr)
            continue
        if isinstance(line, dict) and isinstance(line.get("row"), dict):
            try:
                done[(int(line["level"]), str(line["mode"]), str(line["problem"]))] = line
            except (KeyError, TypeError, ValueError):
                continue
    return done


class Progress:
    """One JSON line per judged problem in OUT/kernelbench.progress.jsonl, written as verdicts
    arrive: what a GPU call cut short by its time limit still measured. Each line holds the
    problem's whole row and candidate source, so `--resume` continues such a run in a later call
    and judges only what is missing (and, for a policy that does not search, a row whose
    candidate is not the one proposed now: `stale_rows`)."""

    def __init__(self, path: Path, resume: bool = False):
        self.path = path
        self.lock = threading.Lock()
        self.done: dict[tuple[int, str, str], dict[str, Any]] = {}
        self.count = 0   # lines written by this run
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume and path.exists():
            self.done = read_progress(path, warn=True)
            # the kept lines only: a cut last line would run into the next one appended
            path.write_text("".join(json.dumps(line, default=str) + "\n" for line in self.done.values()))
        else:
            path.write_text("")   # this run's lines only

    def __call__(self, level: int, mode: str, row: dict[str, Any], source: str | None) -> None:
        line = {"level": level, "mode": mode, "problem": row["problem"], "status": row.get("status"),
                "speedup": row.get("speedup"), "speedup_vs_compile": row.get("speedup_vs_compile"),
                "row": row, "source": source}
        with self.lock, self.path.open("a") as f:
            f.write(json.dumps(line, default=str) + "\n")
            self.count += 1

    def judged(self, level: int, mode: str) -> dict[str, dict[str, Any]]:
        """Problem file name -> its line, for what an earlier run of this level and mode judged."""
        return {name: line for (lv, m, name), line in self.done.items() if lv == level and m == mode}


def stale_rows(earlier: dict[str, dict[str, Any]], tasks: Sequence[Any],
               proposed: Sequence[dict[str, Any]]) -> set[str]:
    """The resumed rows (problem file name -> progress line) whose candidate is not the one the
    policy proposes now (`proposed[i]` for `tasks[i]`): judged at another commit of the compiler,
    they are judged again rather than reported for code that is no longer what it writes."""
    now = {f"{t.id}.py": p.get("source") for t, p in zip(tasks, proposed)}
    return {name for name, line in earlier.items() if name in now and line.get("source") != now[name]}


def compiler_winners(path: Path, level: int, mode: str, versus: str = "both") -> dict[str, dict[str, Any]]:
    """Problem file name -> its progress line, for the problems a compiler run (`path`, its
    progress file) judged ok and faster than eager and (`versus` "both") torch.compile at `level`
    in `mode`, by the problem's last line (`read_progress`); each row marked ``search_skipped``. A
    line that does not parse is skipped (that problem is searched)."""
    out: dict[str, dict[str, Any]] = {}
    for (lv, m, problem), line in read_progress(path).items():
        row = line["row"]
        if lv != level or m != mode:
            continue
        beats = (row.get("speedup") or 0) > 1 and (versus == "eager" or (row.get("speedup_vs_compile") or 0) > 1)
        if row.get("status") == "ok" and beats:
            than = "eager" if versus == "eager" else "eager and torch.compile"
            row = {**row, "search_skipped": f"the compiler's candidate ({path}) is faster than {than}"}
            out[problem] = {**line, "row": row}
    return out


def device_memory() -> dict[int, tuple[float, float]]:
    """GiB in use and in all per GPU as nvidia-smi reports them ({} without it): what the
    processes hold, beside what the memory admission reserved."""
    import shutil
    import subprocess

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {}
    try:
        out = subprocess.run([exe, "--query-gpu=index,memory.used,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
        return {int(i): (float(u) / 1024, float(t) / 1024)
                for i, u, t in (line.split(",") for line in out.strip().splitlines())}
    except (OSError, ValueError, subprocess.SubprocessError):
        return {}


def status_line(ev: Any, judged: int, elapsed: float, in_use: dict[int, tuple[float, float]] | None = None) -> str:
    """One line on a running evaluator: problems judged, evaluations in flight by phase (how many,
    the longest so far), the memory counters and each GPU's reserved / budget GiB (and, with
    `in_use` from `device_memory`, what its processes hold). Printed every --heartbeat seconds, so
    a run cut off by a time limit still shows where its time went."""
    phases: dict[str, list[float]] = {}
    for phase, age in ev.in_flight():
        phases.setdefault(phase or "?", []).append(age)
    flight = ", ".join(f"{p} {len(a)} (longest {max(a):.0f} s)" for p, a in sorted(phases.items(), key=lambda x: -len(x[1])))
    stats = {k: ev.stats.get(k, 0) for k in ("memory_waited", "memory_alone", "rejudged_alone")}
    in_use = in_use or {}
    mem = "; ".join(f"GPU {d}: {m['used'] / 2**30:.1f}/{m['budget'] / 2**30:.1f} GiB"
                    + (f" reserved, {in_use[d][0]:.1f}/{in_use[d][1]:.1f} GiB in use" if d in in_use else "")
                    for d, m in ev.gpu_memory().items())
    return (f"[{elapsed:.0f} s] judged {judged}; in flight: {flight or 'none'}; "
            + ", ".join(f"{k} {v}" for k, v in stats.items()) + (f"; {mem}" if mem else ""))


# Held while a heartbeat writes its line, and by every fork (proposals run in forked children):
# a child forked while another thread held stderr's or the evaluator's lock would wait on it forever.
_BEAT = threading.Lock()
os.register_at_fork(before=_BEAT.acquire, after_in_parent=_BEAT.release, after_in_child=_BEAT.release)


@contextlib.contextmanager
def heartbeat(ev: Any, progress: Progress, every: float) -> Iterator[None]:
    """Print `status_line` to stderr every `every` seconds (0: never) while the block runs."""
    stop = threading.Event()
    t0 = time.perf_counter()

    def beat() -> None:
        while not stop.wait(every):
            in_use = device_memory()   # a subprocess: started outside _BEAT, which every fork takes
            with _BEAT:
                print(status_line(ev, progress.count, time.perf_counter() - t0, in_use), file=sys.stderr, flush=True)

    thread = threading.Thread(target=beat, name="kernelbench-heartbeat", daemon=True) if every > 0 else None
    if thread is not None:
        thread.start()
    try:
        yield
    finally:
        stop.set()


def judge(tasks: Sequence[Any], proposals: Sequence[dict[str, Any]], evaluator: Any, backend: str, mode: str,
          jobs: int, seed: int, on_verdict: Callable[[Any, Any], None] | None = None) -> list[Any]:
    """The verdict of each proposed source (None where there is none), `jobs` at a time;
    `on_verdict(task, verdict)` as each arrives."""
    def one(i: int) -> Any:
        src = proposals[i].get("source")
        if not src:
            return None
        v = evaluator.evaluate(tasks[i], src, backend, mode, seed=seed + i, task_id=tasks[i].id)
        if on_verdict is not None:
            on_verdict(tasks[i], v)
        return v

    with ThreadPoolExecutor(max(1, jobs), thread_name_prefix="kernelbench") as ex:
        return list(ex.map(one, range(len(tasks))))


def row_of(level: int, task: Any, prop: dict[str, Any], verdict: Any, mode: str,
           published: dict[str, dict[tuple[int, str], float]]) -> dict[str, Any]:
    fname = f"{task.id}.py"
    row: dict[str, Any] = {"level": level, "problem": fname, "mode": mode, "traced": prop.get("traced"),
                           "compiled": bool(prop.get("source")), "propose_s": prop.get("seconds"),
                           "status": "no_candidate", "speedup": None, "speedup_vs_compile": None}
    if prop.get("error"):
        row["error"] = prop["error"]
    if prop.get("timed_out"):
        row["status"] = "policy_timeout"
    if prop.get("source"):
        row["vendor_calls"] = prop["source"].count("extern anchor (vendor call)")
    if prop.get("search"):
        row["search"] = prop["search"]
    if verdict is not None:
        v = verdict.to_dict() if hasattr(verdict, "to_dict") else dict(verdict)
        row.update(status=v["status"], speedup=v.get("speedup"), speedup_vs_compile=v.get("speedup_vs_compile"),
                   reasons=v.get("reasons", []), error=v.get("error") or row.get("error"))
        t = v.get("timings") or {}
        for kind in ("eager", "compile"):
            ms = (t.get(kind) or {}).get("median_ms")
            row[f"{kind}_ms"] = ms
            pub = published.get(kind, {}).get((level, fname))
            row[f"published_{kind}_ms"] = pub
            row[f"{kind}_ratio"] = ms / pub if ms and pub else None
        row["candidate_ms"] = (t.get("candidate") or {}).get("median_ms")
        row["duration_s"] = v.get("duration_s")
        row["phases_s"] = t.get("phases_s")
        if t.get("gpu_memory"):
            row["gpu_memory"] = t["gpu_memory"]
    return row


def _geomean(xs: Sequence[float]) -> float | None:
    xs = [x for x in xs if x and x > 0]
    return math.exp(statistics.fmean(math.log(x) for x in xs)) if xs else None


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One level and mode: counts, fast_1 over all problems, geomean speedup of the ok ones, and
    the eager / compile baselines' ratios to the published times."""
    n = len(rows)
    ok = [r for r in rows if r["status"] == "ok"]
    out: dict[str, Any] = {
        "problems": n, "traced": sum(1 for r in rows if r.get("traced")),
        "compiled": sum(1 for r in rows if r.get("compiled")), "ok": len(ok),
        "statuses": dict(Counter(r["status"] for r in rows)),
        "fast_1": sum(1 for r in ok if (r.get("speedup") or 0) > 1) / n if n else None,
        "fast_1_vs_compile": sum(1 for r in ok if (r.get("speedup_vs_compile") or 0) > 1) / n if n else None,
        "timed": sum(1 for r in ok if r.get("speedup")),
        "ok_with_vendor_calls": sum(1 for r in ok if r.get("vendor_calls")),
        "search_skipped": sum(1 for r in rows if r.get("search_skipped")),
        "geomean_speedup": _geomean([r["speedup"] for r in ok if r.get("speedup")]),
        "geomean_speedup_vs_compile": _geomean([r["speedup_vs_compile"] for r in ok if r.get("speedup_vs_compile")]),
    }
    # Where the evaluations' time went (seconds summed over the problems, largest first): what to
    # make faster for a level to finish sooner.
    phases: Counter = Counter()
    for r in rows:
        phases.update({k: x for k, x in (r.get("phases_s") or {}).items() if k != "total"})
    out["phases_s_sum"] = {k: round(x, 1) for k, x in phases.most_common(10)}
    # The memory admission's reservation against what the two workers' allocators held at their
    # peaks (`footprint.memory_account`): the factor by which evaluations waited for memory unused.
    per_peak = [m["reserved_per_peak"] for r in rows if (m := r.get("gpu_memory")) and m.get("reserved_per_peak")]
    out["reserved_per_peak"] = {"n": len(per_peak), "median": statistics.median(per_peak) if per_peak else None,
                                "max": max(per_peak) if per_peak else None}
    for kind in ("eager", "compile"):
        ratios = [r[f"{kind}_ratio"] for r in rows if r.get(f"{kind}_ratio")]
        out[f"{kind}_vs_published"] = {
            "n": len(ratios), "median_ratio": statistics.median(ratios) if ratios else None,
            "within_10pct": sum(1 for x in ratios if abs(x - 1) <= WITHIN) if ratios else 0}
    return out


# -- profiles of the losers ----------------------------------------------------------------------
def profile_losers(rows: list[dict[str, Any]], tasks: dict[tuple[int, str], Any], sources: dict[Any, str],
                   k: int, forwards: int = 20) -> list[dict[str, Any]]:
    """Per-kernel GPU times (benchmarks/kernel_profile.py's breakdown) of eager and of the candidate,
    for the `k` ok problems with the lowest speedup under 1. Runs the candidate in this process
    (it passed the evaluator's guards)."""
    import torch

    from benchmarks.kernel_profile import breakdown
    from benchmarks.timing_fidelity import profile_forwards
    from kernelgym import task as taskmod
    from kernelgym.evaluation.jobs import seeded_task, to_device, trial_inputs
    from kernelgym.evaluation.reference import trial_seed

    losers = sorted((r for r in rows if r["status"] == "ok" and r.get("speedup") and r["speedup"] < 1),
                    key=lambda r: r["speedup"])[:k]
    out = []
    tmp = Path(tempfile.mkdtemp(prefix="kernelbench-profile-"))
    for r in losers:
        task = tasks[(r["level"], r["problem"])]
        prof: dict[str, Any] = {"level": r["level"], "problem": r["problem"], "mode": r["mode"], "speedup": r["speedup"]}
        try:
            module, init_inputs, ref = seeded_task(task.source, 0, f"kb_profile_{r['level']}_{task.id}")
            ref = ref.cuda().eval()
            sets = [to_device(trial_inputs(module, trial_seed(0, t)), "cuda") for t in range(3)]
            path = tmp / f"l{r['level']}_{task.id}_{r['mode']}.py"   # @triton.jit reads its source from a file
            path.write_text(sources[(r["level"], r["problem"], r["mode"])])
            mod = taskmod.exec_source(path.read_text(), f"kb_cand_{r['level']}_{task.id}", filename=str(path))
            cand = mod.ModelNew(*init_inputs)
            cand.load_state_dict(ref.state_dict(), strict=True)
            cand = cand.cuda().eval()
            prof["eager"] = breakdown(profile_forwards(ref, sets, forwards))
            prof["candidate"] = breakdown(profile_forwards(cand, sets, forwards))
            del sets, ref, cand
            torch.cuda.empty_cache()
        except Exception as exc:  # noqa: BLE001 - one failing profile must not hide the others
            prof["error"] = f"{type(exc).__name__}: {exc}"[:400]
        out.append(prof)
    return out


# -- output --------------------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def print_tables(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(140, Console().width))
    if report.get("trace_only"):
        t = Table(title=f"KernelBench trace/compile coverage (CPU; {report['task_timeout_s']:g} s a problem)")
        for col in ("level", "problems", "traced", "compiled strict", "compiled lenient", "timed out", "median s"):
            t.add_column(col, justify="right")
        for lv, s in report["levels"].items():
            t.add_row(str(lv), str(s["problems"]), str(s["traced"]), str(s["compiled_strict"]),
                      str(s["compiled_lenient"]), str(s["timed_out"]), _num(s["median_s"], ".1f"))
        console.print(t)
        return
    env = report.get("env") or {}
    dirty = "+changes" if env.get("dirty") else ""
    t = Table(title=f"KernelBench: {report['policy']} ({report['backend']}; {env.get('device')}, commit "
                    f"{env.get('commit')}{dirty}, source {env.get('source_hash')}, torch {env.get('torch')}, "
                    f"triton {env.get('triton')})")
    for col in ("level", "mode", "problems", "traced", "compiled", "ok", "fast_1 eager", "fast_1 compile",
                "geomean (ok)", "geomean vs compile", "ok w/ vendor calls", "eager / published (n, within 10 %)"):
        t.add_column(col, justify="right")
    for lv, modes in report["levels"].items():
        for mode, s in modes.items():
            pub = s["eager_vs_published"]
            t.add_row(str(lv), mode, str(s["problems"]), str(s["traced"]), str(s["compiled"]), str(s["ok"]),
                      _pct(s["fast_1"]), _pct(s["fast_1_vs_compile"]), _num(s["geomean_speedup"]),
                      _num(s["geomean_speedup_vs_compile"]), str(s.get("ok_with_vendor_calls", 0)),
                      f"{_num(pub['median_ratio'], '.3f')} ({pub['n']}, {pub['within_10pct']})")
    console.print(t)
    for lv, modes in report["levels"].items():
        for mode, s in modes.items():
            if s.get("search_skipped"):
                console.print(f"level {lv} {mode}: {s['search_skipped']} problem(s) kept from the compiler run "
                              f"(--search-losers), {s['problems'] - s['search_skipped']} searched")
    for p in report.get("loser_profiles", []):
        console.print(f"\n[bold]loser[/bold] level {p['level']} {p['problem']} ({p['mode']}): speedup {p['speedup']:.2f}")
        if "error" in p:
            console.print(f"  profile failed: {p['error']}")
            continue
        for who in ("eager", "candidate"):
            b = p[who]
            console.print(f"  {who}: {b['total_us']:.1f} us in kernels")
            for kern in b["kernels"][:8]:
                console.print(f"    {kern['us']:>9.1f} us  {kern['name'][:90]}")


# -- main ----------------------------------------------------------------------------------------
def _config(text: str) -> dict[str, Any]:
    """An argparse type: a compiler launch config as JSON, checked by `module.check_config`."""
    from policies.compiler.ir import CompileError
    from policies.compiler.module import check_config

    try:
        return check_config(json.loads(text))
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--config is not JSON: {exc}") from None
    except CompileError as exc:
        raise argparse.ArgumentTypeError(f"--config: {exc}") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("path", type=Path, help="a KernelBench checkout (levelN folders, results/timing)")
    ap.add_argument("--levels", type=parse_levels, default=[1, 2, 3], help="levels, e.g. 1,2 (default 1,2,3)")
    ap.add_argument("--policy", default="compiler", help="compiler | search | llm | MODULE:ATTR (default compiler)")
    ap.add_argument("--base", default="compiler", help="base policy of a wrapping policy (search)")
    ap.add_argument("--mode", choices=["strict", "lenient", "both"], default="both")
    ap.add_argument("--budget-evals", type=int, default=None,
                    help="a searching policy's candidates judged per problem (default: the policy's)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="a searching policy's wall seconds per problem (default: the policy's)")
    ap.add_argument("--backend", choices=["auto", "cuda", "interpret"], default="auto")
    ap.add_argument("--config", type=_config, default=None, metavar="JSON",
                    help='the compiler\'s launch config (a search\'s base too), e.g. \'{"tma":true}\'')
    ap.add_argument("--jobs", type=int, default=None, help="problems proposed / judged at once (default: workers)")
    ap.add_argument("--workers", type=int, default=None, help="candidate evaluation workers")
    ap.add_argument("--timeout", type=float, default=None, help="evaluation wall-time limit per phase, seconds")
    ap.add_argument("--limit", type=int, default=None, help="the first N problems of each level")
    ap.add_argument("--filter", default=None, help="only problems whose file name matches (regex or substring)")
    ap.add_argument("--task-timeout", type=float, default=120.0,
                    help="seconds a problem's proposal (trace + compile) may take (default 120)")
    ap.add_argument("--trace-only", action="store_true", help="CPU only: trace/compile coverage, no evaluation")
    ap.add_argument("--hardware", default="H100_Modal",
                    help="the published timings to compare with: PATH/results/timing/<this> (default H100_Modal)")
    ap.add_argument("--profile-losers", type=int, default=5, help="profile the K slowest ok problems (GPU; 0: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heartbeat", type=float, default=30.0,
                    help="print the evaluations in flight every S seconds (0: never)")
    ap.add_argument("--resume", action="store_true",
                    help="keep what OUT/kernelbench.progress.jsonl already holds (a run cut short) and judge the rest")
    ap.add_argument("--search-losers", type=Path, default=None, metavar="FILE",
                    help="a compiler run's kernelbench.progress.jsonl: search only the problems it did not make "
                         "faster than eager and torch.compile, keep its rows for the rest")
    ap.add_argument("--search-losers-vs", choices=["both", "eager"], default="both",
                    help="with --search-losers: a problem is kept when faster than eager and torch.compile "
                         "(both, default) or than eager alone")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "kernelbench")
    args = ap.parse_args(argv)
    if not args.path.is_dir():
        ap.error(f"PATH {str(args.path)!r} is not a directory (a KernelBench checkout)")
    for name in ("jobs", "workers", "limit", "budget_evals"):
        v = getattr(args, name)
        if v is not None and v < 1:
            ap.error(f"--{name} must be >= 1, got {v}")
    if args.budget_s is not None and not args.budget_s > 0:
        ap.error(f"--budget-s must be > 0, got {args.budget_s}")
    if not args.task_timeout > 0:
        ap.error(f"--task-timeout must be > 0, got {args.task_timeout}")
    if args.search_losers is not None and args.policy == "compiler":
        ap.error("--search-losers keeps a compiler run's winners and searches the rest: it needs --policy search")
    if args.search_losers is not None and not args.search_losers.is_file():
        ap.error(f"--search-losers {str(args.search_losers)!r} is not a file (a compiler run's kernelbench.progress.jsonl)")
    if args.filter is not None:
        try:
            re.compile(args.filter)
        except re.error as exc:
            ap.error(f"--filter {args.filter!r} is not a regular expression: {exc}")
    return args


def trace_only(args: argparse.Namespace, levels: dict[int, list[Any]]) -> dict[str, Any]:
    """Per level, the problems the compiler traced and compiled in strict and lenient mode (CPU)."""
    import policies.compiler  # noqa: F401 - imported once here, not in every forked child

    jobs = args.jobs or max(1, (os.cpu_count() or 2) // 2)
    report: dict[str, Any] = {"benchmark": "kernelbench", "trace_only": True, "task_timeout_s": args.task_timeout,
                              "levels": {}, "rows": []}
    for lv, tasks in levels.items():
        res = in_children([_trace_job(t) for t in tasks], args.task_timeout, jobs)
        rows = [{"level": lv, "problem": f"{t.id}.py", **r} for t, r in zip(tasks, res)]
        report["rows"] += rows
        secs = [r["seconds"] for r in rows if "seconds" in r and not r.get("timed_out")]
        report["levels"][lv] = {
            "problems": len(rows), "traced": sum(1 for r in rows if r.get("traced")),
            "compiled_strict": sum(1 for r in rows if r.get("compiled_strict")),
            "compiled_lenient": sum(1 for r in rows if r.get("compiled_lenient")),
            "timed_out": sum(1 for r in rows if r.get("timed_out")),
            "median_s": statistics.median(secs) if secs else None,
            "errors": dict(Counter(_error_kind(r.get("error") or r.get("error_strict") or "") for r in rows
                                   if not r.get("compiled_strict")).most_common(12)),
        }
    return report


def _error_kind(text: str) -> str:
    """A failure's first words (enough to group them)."""
    return re.sub(r"\d+", "N", text)[:70] if text else "?"


def evaluate_levels(args: argparse.Namespace, levels: dict[int, list[Any]],
                    published: dict[str, dict[tuple[int, str], float]]) -> dict[str, Any]:
    from kernelgym.evaluation import Evaluator
    from kernelgym.evaluation.evaluator import resolve_backend
    from kernelgym.runner import build_policy

    backend = resolve_backend(args.backend)
    modes = ["strict", "lenient"] if args.mode == "both" else [args.mode]
    ev_kw: dict[str, Any] = {"workers": args.workers}
    if args.timeout:
        ev_kw["timeout"] = args.timeout
    report: dict[str, Any] = {"benchmark": "kernelbench", "path": str(args.path), "policy": args.policy,
                              "config": args.config, "backend": backend, "modes": modes, "hardware": args.hardware, "env": environment(),
                              "levels": {}, "rows": []}
    sources: dict[tuple[int, str, str], str] = {}
    # config=None is not passed: build_policy drops options left as None
    search_kw = {"budget_evals": args.budget_evals, "budget_s": args.budget_s, "config": args.config}
    progress = Progress(args.out / "kernelbench.progress.jsonl", resume=args.resume)
    t0 = time.perf_counter()
    with Evaluator(**ev_kw) as ev, heartbeat(ev, progress, args.heartbeat):
        jobs = args.jobs or max(2, ev.workers)

        def make(mode: str) -> Callable[[], Any]:
            return lambda: build_policy(args.policy, args.base, mode=mode, backend=backend, evaluator=None,
                                        seed=args.seed, **search_kw)

        for lv, tasks in levels.items():
            report["levels"][lv] = {}
            traces: dict[str, dict[str, Any]] = {}   # a search's traces, kept for the next mode
            done: dict[str, dict[str, Any]] = {}    # problem -> its strict row, when ok
            for mode in modes:
                policy = build_policy(args.policy, args.base, mode=mode, backend=backend, evaluator=ev, seed=args.seed,
                                      **search_kw)
                earlier = progress.judged(lv, mode)   # --resume: judged by an earlier run, kept as it was
                if args.search_losers is not None:
                    if not callable(getattr(policy, "search", None)):
                        raise SystemExit(f"kernelbench: --search-losers needs a searching policy; {args.policy!r} "
                                         "has no search()")
                    earlier = {**compiler_winners(args.search_losers, lv, mode, args.search_losers_vs), **earlier}
                for name, line in earlier.items():
                    if line.get("source"):
                        sources[(lv, name, mode)] = line["source"]

                def record(t: Any, p: dict[str, Any], v: Any, lv: int = lv, mode: str = mode) -> None:
                    progress(lv, mode, row_of(lv, t, p, v, mode, published), p.get("source"))

                if callable(getattr(policy, "search", None)):   # searches judge as they go: in this process
                    todo = [t for t in tasks if f"{t.id}.py" not in done and f"{t.id}.py" not in earlier]
                    reuse = set(done) - set(earlier)
                    props, verdicts = search_level(todo, policy, ev, backend, mode, args, jobs, traces, record)
                else:
                    # every problem is proposed again: a lenient candidate differs from the strict one
                    # when it has extern anchors, and only an identical one reuses the strict verdict;
                    # an earlier row (--resume) is kept only for the very candidate proposed now
                    proposed = in_children([_propose_job(t, make(mode)) for t in tasks], args.task_timeout, jobs)
                    stale = stale_rows(earlier, tasks, proposed)
                    if stale:
                        print(f"level {lv} {mode}: {len(stale)} resumed row(s) judged again, their candidate "
                              f"changed: {', '.join(sorted(stale))}", file=sys.stderr, flush=True)
                    for name in stale:
                        del earlier[name]
                        sources.pop((lv, name, mode), None)
                    todo = [t for t in tasks if f"{t.id}.py" not in earlier]
                    props = [p for t, p in zip(tasks, proposed) if f"{t.id}.py" not in earlier]
                    reuse = {f"{t.id}.py" for t, p in zip(todo, props) if f"{t.id}.py" in done
                             and same_candidate(p.get("source"), sources.get((lv, f"{t.id}.py", "strict")))}
                    by_task = {id(t): p for t, p in zip(todo, props)}
                    verdicts = judge(todo, [{} if f"{t.id}.py" in reuse else p for t, p in zip(todo, props)], ev,
                                     backend, mode, jobs, args.seed,
                                     lambda t, v: record(t, by_task[id(t)], v))
                rows = {f"{t.id}.py": row_of(lv, t, p, v, mode, published) for t, p, v in zip(todo, props, verdicts)
                        if f"{t.id}.py" not in reuse}
                rows.update({name: line["row"] for name, line in earlier.items()})
                for t, p in zip(todo, props):
                    if p.get("source") and f"{t.id}.py" not in reuse:
                        sources[(lv, f"{t.id}.py", mode)] = p["source"]
                for name in reuse:   # ok in strict mode (and, for a compiler, the same candidate): ok lenient too
                    rows[name] = {**done[name], "mode": mode, "lenient_from": "strict"}
                ordered = [rows[f"{t.id}.py"] for t in tasks]
                report["rows"] += ordered
                report["levels"][lv][mode] = summarize(ordered)
                if mode == "strict":
                    done = {r["problem"]: r for r in ordered if r["status"] == "ok"}
                print(f"level {lv} {mode}: {report['levels'][lv][mode]['ok']}/{len(tasks)} ok "
                      f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
                # so far, in case the run is cut short (a GPU call's time limit)
                args.out.mkdir(parents=True, exist_ok=True)
                (args.out / "kernelbench.partial.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        report["gpu_memory"] = {str(k): v for k, v in ev.gpu_memory().items()}
        report["evaluator_stats"] = dict(ev.stats)
    report["elapsed_s"] = round(time.perf_counter() - t0, 1)
    if backend == "cuda" and args.profile_losers:
        by_key = {(lv, f"{t.id}.py"): t for lv, ts in levels.items() for t in ts}
        own = [r for r in report["rows"] if not r.get("lenient_from")]
        report["loser_profiles"] = profile_losers(own, by_key, sources, args.profile_losers)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folders = level_dirs(args.path, args.levels)
    levels = {lv: load_level(folder, args.filter, args.limit) for lv, folder in folders.items()}
    if args.trace_only:
        report = trace_only(args, levels)
    else:
        report = evaluate_levels(args, levels, published_timings(args.path, args.hardware))
    report["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    print_tables(report)
    write_json(args.out / ("kernelbench_trace.json" if args.trace_only else "kernelbench.json"), report, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
