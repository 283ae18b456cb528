"""`kernelgym run`: the main job. A policy against tasks, a progress bar, a summary table, a report.

Which policy a name means and how it is built: `kernelgym.policy_loader`; running it over the
tasks and judging its candidates: `kernelgym.scheduler`. Both are re-exported here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from kernelgym.policy_loader import (
    BUILTIN_POLICIES,
    ENTRY_POINT_GROUP,
    PolicyNotFound,
    RunError,
    build_policy,
    resolve_policy,
)
from kernelgym.scheduler import PolicyTimeout, TaskResult, run_task, run_tasks, task_phase

__all__ = ["BUILTIN_POLICIES", "DEFAULT_DIFFICULTIES", "DEFAULT_N", "DEFAULT_POLICY_TIMEOUT_S", "DEFAULT_TIME_BUDGET_S",
           "ENTRY_POINT_GROUP", "RUN_FILE", "PolicyNotFound", "PolicyTimeout", "RunError", "TaskResult",
           "add_run_arguments", "build_policy", "difficulty_list", "load_tasks", "main_run", "prepare_out",
           "resolve_policy", "run_task", "run_tasks", "task_phase"]

DEFAULT_N = 20
DEFAULT_DIFFICULTIES = [1, 2, 3]
# Wall seconds one task's policy call (propose, or the whole search) may take before the task gets
# a policy-error verdict and the run goes on: a hung LLM request or a runaway search must not
# stall a suite left running. Generous: a GPU search of 8 evaluations takes a few minutes.
DEFAULT_POLICY_TIMEOUT_S = 1800.0
# Wall seconds the searches of a GPU run share (`kernelgym.scheduler.TimeShares`): a KernelBench
# level of 100 problems then ends in about a quarter hour however many evaluations a search would
# like (each task still gets its first candidate judged); untimed (interpreter) searches stop at
# their first correct candidate and get none.
DEFAULT_TIME_BUDGET_S = 600.0
RUN_FILE = "run.json"   # the run's settings and task ids, written first: what --resume checks


# -- tasks ---------------------------------------------------------------------------------------
def load_tasks(suite: str = "synthetic", difficulties: Sequence[int] | None = None, n: int | None = None,
               seed: int = 0, sizes: str = "tiny") -> list[Any]:
    """The run's tasks: `n` sampled ones spread over `difficulties` (seeds seed, seed+1, ...),
    or the tasks of a KernelBench-format directory (filtered by difficulty when given, first `n`)."""
    if n is not None and n < 1:
        raise RunError(f"-n must be >= 1, got {n}")
    if suite == "synthetic":
        from kernelgym.sampler import default_sampler

        ds = list(difficulties or DEFAULT_DIFFICULTIES)
        n = n or DEFAULT_N
        per = -(-n // len(ds))
        sampler = default_sampler(sizes)
        return [sampler.sample(d, seed + i) for i in range(per) for d in ds][:n]
    path = Path(suite)
    if not path.is_dir():
        raise RunError(f"--suite must be 'synthetic' or a directory of KernelBench-format files; "
                       f"{suite!r} is not a directory")
    from kernelgym.task import load_suite

    loaded = load_suite(path)
    for err in getattr(loaded, "errors", []):
        print(f"kernelgym run: skipping {err}", file=sys.stderr)
    tasks = list(loaded)
    if difficulties:
        tasks = [t for t in tasks if t.difficulty in set(difficulties)]
    if not tasks:
        raise RunError(f"no tasks to run in {suite!r}" + (f" at difficulties {list(difficulties)}"
                                                         if difficulties else ""))
    return tasks[:n] if n else tasks


# -- output directory ----------------------------------------------------------------------------
def prepare_out(out: str | None, force: bool) -> Path:
    """The report directory: `out`, or a fresh ``runs/<timestamp>``. A non-empty existing
    directory is refused unless `force` (then only the files this job writes are replaced)."""
    if out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        Path("runs").mkdir(exist_ok=True)
        for k in range(1, 1000):
            path = Path("runs") / (stamp if k == 1 else f"{stamp}-{k}")
            try:
                path.mkdir()   # atomic: two runs started in the same second get different directories
                return path
            except FileExistsError:
                continue
        raise RunError(f"could not make a fresh directory runs/{stamp}-N")
    else:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise RunError(f"--out {out!r} exists and is not a directory")
        if path.is_dir() and any(path.iterdir()):
            if not force:
                raise RunError(f"--out {out!r} is not empty; pass --force to overwrite its report files")
            for sub in ("candidates", "search"):
                if (path / sub).is_dir():
                    shutil.rmtree(path / sub)
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- CLI -----------------------------------------------------------------------------------------
def difficulty_list(text: str) -> list[int]:
    """argparse type of `--difficulty`: '3' -> [3]; '1-3' -> [1, 2, 3]; '1,4' -> [1, 4]."""
    out: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                lo, hi = part.split("-", 1)
                out.extend(range(int(lo), int(hi) + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a difficulty or range: {text!r} (try 3, 1-3 or 1,4)") from None
    for part in text.split(","):
        if "-" in part and int(part.split("-", 1)[0]) > int(part.split("-", 1)[1]):
            raise argparse.ArgumentTypeError(f"empty range {part!r}: write it low-high, e.g. "
                                             f"{part.split('-', 1)[1]}-{part.split('-', 1)[0]}")
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"difficulties must be >= 1: {text!r}")
    return out


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The `kernelgym run` options (the contract in README.md "Main job" plus budget, LLM and pool settings)."""
    from kernelgym.evaluation.protocol import BACKEND_AUTO, BACKENDS, MODE_STRICT, MODES

    p.add_argument("--policy", default="search",
                   help="compiler | search | llm | an entry point of group kernelgym.policies | module:attr "
                        "(default search: the compiler policy wrapped by the search)")
    p.add_argument("--base", default="compiler",
                   help="base policy of a policy that wraps one (search); same forms as --policy (default compiler)")
    p.add_argument("--suite", default="synthetic", help="'synthetic' or a KernelBench-format directory")
    p.add_argument("--difficulty", "-d", type=difficulty_list, default=None,
                   help="difficulties, e.g. 3, 1-3 or 1,4 (default 1-3 for synthetic; all for a suite)")
    p.add_argument("-n", "--total", dest="n", type=int, default=None,
                   help=f"number of tasks in total (default {DEFAULT_N} for synthetic, spread over the difficulties; "
                        "all for a suite); `sample -n` counts per difficulty")
    p.add_argument("--seed", type=int, default=0, help="first sampling seed and evaluation seed base (default 0)")
    p.add_argument("--sizes", choices=["tiny", "bench"], default=None, help="default: bench on GPU, else tiny")
    p.add_argument("--backend", choices=BACKENDS, default=BACKEND_AUTO)
    p.add_argument("--mode", choices=MODES, default=MODE_STRICT)
    p.add_argument("--out", default=None, help="report directory (default runs/<timestamp>)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out directory")
    p.add_argument("--budget-evals", type=int, default=None,
                   help="search: evaluations per task (default 4 under the interpreter, 8 on GPU)")
    p.add_argument("--budget-s", type=float, default=None, help="search: wall seconds per task (default none)")
    p.add_argument("--model", default=None, help="llm: model name or path")
    p.add_argument("--base-url", default=None, help="llm: base URL of an OpenAI-compatible server")
    p.add_argument("--jobs", type=int, default=None, help="tasks in flight at once (default: evaluator workers, at least 2)")
    p.add_argument("--workers", type=int, default=None, help="candidate evaluation workers (default: CPU count, <= 16)")
    p.add_argument("--timeout", type=float, default=None, help="evaluation wall-time limit per phase, seconds")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--policy-timeout", type=float, default=DEFAULT_POLICY_TIMEOUT_S, metavar="SECONDS",
                   help="wall seconds the policy may spend on one task (the whole search, for search) before "
                        f"the task gets a policy-error verdict and the run goes on; 0: no limit "
                        f"(default {DEFAULT_POLICY_TIMEOUT_S:g})")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="wall seconds the whole run's searches share: each task may search for its share of "
                        "what is left as it starts, and one that starts with none left is judged on its "
                        f"first candidate; 0: no budget (default {DEFAULT_TIME_BUDGET_S:g} on cuda, none "
                        "under the interpreter)")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="finish the run in report directory DIR: tasks it already judged are skipped; the "
                        "other options must be those the run was started with")


def main_run(args: argparse.Namespace, evaluator: Any | None = None) -> int:
    """Entry point of `kernelgym run`; returns the exit code (2 for bad arguments).

    `evaluator`: an existing `Evaluator` to use (and leave open) instead of a new one.
    """
    try:
        return _main(args, evaluator)
    except (RunError, PolicyNotFound) as exc:
        print(f"kernelgym run: {exc}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace, shared_evaluator: Any | None = None) -> int:
    import contextlib

    from rich.console import Console

    from kernelgym.evaluation import Evaluator
    from kernelgym.evaluation.evaluator import resolve_backend
    from kernelgym.evaluation.protocol import BACKEND_CUDA
    from kernelgym.report import rich_table, write_report

    try:
        backend = resolve_backend(args.backend)
    except ValueError as exc:
        raise RunError(str(exc)) from None
    for name in ("budget_evals", "jobs", "workers"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise RunError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    policy_timeout = getattr(args, "policy_timeout", None)
    if policy_timeout is not None and not policy_timeout >= 0:
        raise RunError(f"--policy-timeout must be >= 0 (0: no limit), got {policy_timeout}")
    time_budget = getattr(args, "time_budget", None)
    if time_budget is not None and not time_budget >= 0:
        raise RunError(f"--time-budget must be >= 0 seconds (0: no budget), got {time_budget}")
    resume = getattr(args, "resume", None)
    if resume is not None:
        _check_resumable(resume, args.out)
    # Input errors first: a missing suite is reported whatever the policy (or its imports) does.
    if args.suite != "synthetic" and not Path(args.suite).is_dir():
        raise RunError(f"--suite must be 'synthetic' or a directory of KernelBench-format files; "
                       f"{args.suite!r} is not a directory")
    sizes = args.sizes or ("bench" if backend == BACKEND_CUDA else "tiny")
    budget_evals = args.budget_evals or (8 if backend == BACKEND_CUDA else 4)
    if time_budget is None:
        time_budget = DEFAULT_TIME_BUDGET_S if backend == BACKEND_CUDA else 0.0
    started = datetime.now().isoformat(timespec="seconds")
    t0 = time.perf_counter()
    console = Console(stderr=True)
    ev_kw: dict[str, Any] = {"workers": args.workers}
    if args.timeout:
        ev_kw["timeout"] = args.timeout
    # Evaluator pools start lazily, so building it (and the policy) first costs nothing and lets a
    # bad --policy fail before any directory is made or task sampled.
    with Evaluator(**ev_kw) if shared_evaluator is None else contextlib.nullcontext(shared_evaluator) as evaluator:
        policy = build_policy(args.policy, args.base, mode=args.mode, backend=backend, evaluator=evaluator,
                              budget_evals=budget_evals, budget_s=args.budget_s, model=args.model,
                              base_url=args.base_url, seed=args.seed)
        policy_name = getattr(policy, "name", args.policy)
        if policy_name == "search":
            policy_name = f"search({getattr(getattr(policy, 'base', None), 'name', args.base)})"
        out = Path(resume) if resume is not None else prepare_out(args.out, args.force)
        with console.status("sampling tasks" if args.suite == "synthetic" else "loading suite"):
            tasks = load_tasks(args.suite, args.difficulty, args.n, args.seed, sizes)
        settings = _run_settings(args, backend, sizes, budget_evals, tasks)
        earlier = _resume_rows(out, settings) if resume is not None else {}
        if resume is None:
            (out / RUN_FILE).write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")
        # verdicts.jsonl grows a row as each task ends (rewritten in task order by the report), so a
        # run that is stopped keeps what it judged and --resume finishes the rest
        with open(out / "verdicts.jsonl", "w", encoding="utf-8") as log:
            log.writelines(json.dumps(r, default=str) + "\n" for r in earlier.values())

        def keep(r: TaskResult) -> None:
            with open(out / "verdicts.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(r.row(policy_name), default=str) + "\n")
                f.flush()
                os.fsync(f.fileno())
            _write_extras(out, [r])

        jobs = args.jobs or max(2, evaluator.workers)
        if earlier:
            console.print(f"resuming {out}: {len(earlier)} of {len(tasks)} tasks already judged")
        try:
            results = _run_with_progress(tasks, policy, evaluator, backend, args, jobs, console, keep,
                                         policy_timeout, set(earlier), time_budget)
        except KeyboardInterrupt:
            print(f"kernelgym run: interrupted; the verdicts of the tasks that ended are in {out}/verdicts.jsonl "
                  f"(finish with the same options and --resume {out})", file=sys.stderr)
            return 130
    new = {r.task.id: r.row(policy_name) for r in results}
    rows = [earlier.get(t.id) or new[t.id] for t in tasks]
    run_meta = {"policy": policy_name, "policy_spec": args.policy, "suite": args.suite, "backend": backend,
                "mode": args.mode, "sizes": sizes if args.suite == "synthetic" else None, "seed": args.seed,
                "n": len(tasks), "difficulties": sorted({t.difficulty for t in tasks if t.difficulty is not None}),
                "budget_evals": budget_evals if policy_name.startswith("search") else None,
                "budget_s": args.budget_s, "time_budget_s": time_budget or None, "jobs": jobs,
                "elapsed_s": round(time.perf_counter() - t0, 2), "started": started, "argv": sys.argv[1:]}
    if earlier:
        run_meta["resumed"] = len(earlier)   # tasks judged by the run before (elapsed_s counts this one)
    summary = write_report(out, rows, run_meta, title=f"KernelGym run: {policy_name} on {args.suite}")
    stdout = Console(width=max(120, Console().width))
    stdout.print(rich_table(summary, title=f"{policy_name} on {len(tasks)} tasks ({backend}, "
                                           f"{sizes if args.suite == 'synthetic' else args.suite})"))
    stdout.print(f"report: {out}/ ({', '.join(summary['files'])}); {run_meta['elapsed_s']} s")
    return 0


def _run_with_progress(tasks: Sequence[Any], policy: Any, evaluator: Any, backend: str,
                       args: argparse.Namespace, jobs: int, console: Any,
                       on_done: Callable[[TaskResult], None] | None = None, policy_timeout: float | None = None,
                       skip: Collection[str] = (), time_budget: float | None = None) -> list[TaskResult]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    counts = {"ok": 0, "done": 0}
    active: dict[str, str] = {}   # task id -> what it is doing, in start order
    lock = threading.Lock()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("ok {task.fields[ok]}"), TimeElapsedColumn(), TextColumn("{task.fields[active]}"),
                  console=console, disable=args.no_progress, transient=False) as progress:
        skipped = sum(t.id in set(skip) for t in tasks)
        bar = progress.add_task("tasks", total=len(tasks), completed=skipped, ok=0, active="")

        def show() -> str:
            items = [f"{k}: {v}" for k, v in active.items()]
            return ", ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")

        finished: set[str] = set()   # a policy call abandoned past --policy-timeout may still report

        def phase(task: Any, name: str | None) -> None:
            with lock:
                if name is None:
                    active.pop(task.id, None)
                    finished.add(task.id)
                elif task.id not in finished:
                    active[task.id] = name
                progress.update(bar, active=show())

        def done(r: TaskResult) -> None:
            counts["done"] += 1
            counts["ok"] += r.verdict.status == "ok"
            progress.update(bar, advance=1, ok=counts["ok"])
            if on_done is not None:
                on_done(r)

        return run_tasks(tasks, policy, evaluator, backend, args.mode, jobs, args.seed, done,
                         policy_timeout=policy_timeout, skip=skip, on_phase=phase, time_budget=time_budget)


def _check_resumable(resume: str, out: str | None) -> None:
    path = Path(resume)
    if out is not None and Path(out).resolve() != path.resolve():
        raise RunError(f"--resume {resume!r} writes into that directory; --out {out!r} names another")
    if not path.is_dir():
        raise RunError(f"--resume {resume!r} is not a directory")
    if not (path / RUN_FILE).is_file():
        raise RunError(f"--resume {resume!r} has no {RUN_FILE}: not a report directory of kernelgym run (or one "
                       "written before --resume existed)")


def _run_settings(args: argparse.Namespace, backend: str, sizes: str, budget_evals: int,
                  tasks: Sequence[Any]) -> dict[str, Any]:
    """What a resumed run must share with the run it finishes (run.json)."""
    suite = args.suite if args.suite == "synthetic" else str(Path(args.suite).resolve())
    return {"policy": args.policy, "base": args.base, "suite": suite, "difficulty": args.difficulty, "n": args.n,
            "seed": args.seed, "sizes": sizes, "backend": backend, "mode": args.mode, "budget_evals": budget_evals,
            "budget_s": args.budget_s, "model": args.model, "task_ids": [t.id for t in tasks]}


def _resume_rows(out: Path, settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The rows of `out`'s verdicts.jsonl for this run's tasks (by task id), after checking that
    `out` holds this run: `RunError` naming each setting that differs."""
    try:
        before = json.loads((out / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunError(f"--resume {str(out)!r}: unreadable {RUN_FILE}: {exc}") from None
    flags = {"policy": "--policy", "base": "--base", "suite": "--suite", "difficulty": "--difficulty", "n": "-n",
             "seed": "--seed", "sizes": "--sizes", "backend": "--backend", "mode": "--mode",
             "budget_evals": "--budget-evals", "budget_s": "--budget-s", "model": "--model"}
    diffs = [f"{flag} {before.get(k)!r} there, {settings[k]!r} here" for k, flag in flags.items()
             if before.get(k) != settings[k]]
    if not diffs and before.get("task_ids") != settings["task_ids"]:
        then, now = set(before.get("task_ids") or []), set(settings["task_ids"])
        diffs.append(f"the tasks changed ({len(now - then)} new, {len(then - now)} gone)")
    if diffs:
        raise RunError(f"--resume {str(out)!r} holds another run: " + "; ".join(diffs))
    ids = set(settings["task_ids"])
    rows: dict[str, dict[str, Any]] = {}
    path = out / "verdicts.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue   # the line being written when the run was stopped
        if isinstance(row, dict) and row.get("task_id") in ids:
            rows.setdefault(row["task_id"], row)
    return rows


def _write_extras(out: Path, results: Sequence[TaskResult]) -> None:
    """candidates/<task>.py (the judged source) and search/<task>.json (search logs)."""
    for r in results:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(r.task.id))
        if r.source is not None:
            (out / "candidates").mkdir(exist_ok=True)
            (out / "candidates" / f"{safe}.py").write_text(r.source, encoding="utf-8")
        if r.search is not None:
            (out / "search").mkdir(exist_ok=True)
            (out / "search" / f"{safe}.json").write_text(json.dumps(r.search.to_dict(), indent=1, default=str),
                                                         encoding="utf-8")
