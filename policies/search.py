"""Test-time search around a base policy (compiler or LLM): fusion partitions, launch parameters,
refinement with verdict feedback; candidates judged in parallel by the batched evaluator.

The search runs in rounds under a budget of evaluations and wall time:

1. seeds: the base policy's default proposal and, when the base is a `policies.base.Compiler`
   (the compiler policy), one candidate per config it suggests (``seed_configs(task)``, compiled
   with ``compile(task, config=...)``: the compiler offers IEEE dots beside its default 3xTF32
   ones for fp32 matmuls), in lenient mode one candidate per other set of extern anchors it
   offers (``extern_choices(task)``, compiled with ``compile(task, extern=...)``: which
   convolutions / products run as the vendor call with the ops around them fused into Triton, or
   all in Triton) and one candidate per alternative fusion partition
   (``candidate_partitions(task)``, compiled with ``compile(task, partition=...)``: which
   neighbouring ops share a kernel), and, on a Hopper GPU (compute capability 9 or more) or when
   asked (``tma=True``), the default compiled with ``{"tma": True}``: product kernels reading
   their eligible operands through TMA tensor descriptors (kept only when some operand is),
   and with ``{"tma": True, "warp_specialize": True}`` (kept only when some product kernel's k
   loop is warp-specialised: both its operands descriptors);
   a base that is no Compiler is asked for several proposals instead;
2. then, repeatedly: launch-parameter neighbours of the best candidate so far (block sizes,
   num_warps, num_stages rewritten in the source by `policies.launch`, so LLM output works too;
   hill climbing, since each round starts from the current best), block-size variants of a
   compiled but incorrect candidate when nothing is correct yet, and refinement proposals from the
   base with the judged attempts as ``history`` (a base that ignores history returns duplicates,
   which cost nothing and end refinement).

Timed verdicts (GPU) rank correct candidates by speedup. Untimed ones (the interpreter) cannot,
so the search stops at the first correct candidate, evaluated in order: the base's default first.
Every judged candidate is logged with what changed, its parent, status and speedup.
"""

from __future__ import annotations

import functools
import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kernelgym.evaluation.protocol import BACKEND_CUDA, BACKEND_INTERPRET
from kernelgym.task import Task
from policies.base import Attempt, Compiler, Policy, as_compiler
from policies.launch import variants


@dataclass
class SearchResult:
    """The chosen candidate, its verdict and the log of every judged candidate.

    `log[i]` describes `sources[i]`: origin (default, config, tma, tma_ws, extern, partition, propose, launch, refine),
    changes, parent (log index it was derived from), status, correct, speedup,
    speedup_vs_compile, error. Policy failures appear with status ``policy_error`` and no source.
    """

    best_source: str | None
    best_verdict: Any | None            # kernelgym.evaluation.Verdict
    log: list[dict[str, Any]]
    sources: list[str | None] = field(default_factory=list)
    best_index: int | None = None
    evaluations: int = 0
    duplicates: int = 0
    elapsed_s: float = 0.0
    stopped: str = ""                   # found | budget_evals | budget_s | exhausted

    def to_dict(self) -> dict[str, Any]:
        """JSON form (verdict as a dict, no sources)."""
        return {"best_index": self.best_index, "evaluations": self.evaluations, "duplicates": self.duplicates,
                "elapsed_s": round(self.elapsed_s, 3), "stopped": self.stopped,
                "best_verdict": self.best_verdict.to_dict() if self.best_verdict is not None else None,
                "log": self.log}


@dataclass
class _Cand:
    source: str
    origin: str
    changes: dict[str, Any]
    parent: int | None = None


class SearchPolicy:
    """Wraps `base` (any `policies.base.Policy`) with a budgeted search; see the module docstring.

    A base that is a `policies.base.Compiler` is also searched over its partitions, configs and
    extern anchors (`compiler`); one with only part of that protocol is refused (TypeError).

    budget_evals: most candidates judged per task; budget_s: wall seconds per task (checked between
    rounds, so a round in flight finishes); evaluator: an object with ``evaluate_batch(pairs,
    backend=, mode=, seed=)`` (default: the shared `kernelgym.evaluation` evaluator); backend /
    mode: passed to it; batch_size: candidates per parallel round (default: the evaluator's
    worker count, at least 2); partitions: most fusion partitions tried; refine: ask the base
    again with history; seed: evaluation seeds derive from it and the task; tma: seed a candidate
    with TMA loads in the product kernels (True), never (False), or None: only when a timed run has
    a CUDA device of compute capability 9 or more (Hopper's TMA units; elsewhere Triton has none).
    """

    name = "search"

    def __init__(self, base: Policy, budget_evals: int = 16, budget_s: float | None = None,
                 evaluator: Any | None = None, backend: str = "auto", mode: str = "strict", *,
                 batch_size: int | None = None, partitions: int = 8, refine: bool = True, seed: int = 0,
                 tma: bool | None = None):
        from kernelgym.evaluation.protocol import BACKENDS, MODES

        if not callable(getattr(base, "propose", None)):
            raise TypeError(f"base policy must have propose(task, n, history); got {type(base).__name__}")
        self.compiler: Compiler | None = as_compiler(base)
        _check_budgets(budget_evals, budget_s)
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected auto, cuda or interpret")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected strict or lenient")
        self.base = base
        self.budget_evals = int(budget_evals)
        self.budget_s = budget_s
        self.evaluator = evaluator
        self.backend = backend
        self.mode = mode
        self.batch_size = batch_size
        self.partitions = partitions
        self.refine = refine
        self.seed = seed
        self.tma = tma

    # -- Policy interface ------------------------------------------------------------------------
    def propose(self, task: Task, n: int = 1, history: Sequence[Attempt] = ()) -> list[str]:
        """[the best source the search found] (empty when the base produced nothing)."""
        result = self.search(task, history)
        return [result.best_source] if result.best_source is not None else []

    # -- search ----------------------------------------------------------------------------------
    def search(self, task: Task, history: Sequence[Attempt] = (), *, budget_evals: int | None = None,
               budget_s: float | None = None) -> SearchResult:
        """Run the budgeted search on `task`; never raises for what candidates or the base do.

        budget_evals / budget_s: this call's budgets where tighter than the policy's (a run's time
        budget gives each task its share: `kernelgym.scheduler`); with one evaluation only the
        base's default proposal is made and judged."""
        _check_budgets(budget_evals, budget_s)
        evals = self.budget_evals if budget_evals is None else min(self.budget_evals, int(budget_evals))
        wall = min((b for b in (self.budget_s, budget_s) if b is not None), default=None)
        return _Search(self, task, list(history), evals, wall).run()

    def _evaluator(self) -> Any:
        if self.evaluator is None:
            from kernelgym.evaluation import default_evaluator

            self.evaluator = default_evaluator()
        return self.evaluator

    def _timed_backend(self) -> bool:
        if self.backend == BACKEND_CUDA:
            return True
        if self.backend == BACKEND_INTERPRET:
            return False
        from kernelgym.evaluation.evaluator import cuda_available

        return cuda_available()

    def _offers_tma(self) -> bool:
        """Whether the search seeds a TMA candidate (see `tma`)."""
        if self.tma is not None:
            return bool(self.tma)
        return self._timed_backend() and _hopper()


@functools.lru_cache(maxsize=1)
def _hopper() -> bool:
    """Every visible NVIDIA GPU has compute capability 9 or more (H100, H200), as nvidia-smi reports
    it: asking torch would initialise CUDA in this process, whose forked children (kernelbench's
    tracing and proposals) must not inherit an initialised driver. No nvidia-smi: False."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    caps = [float(x) for x in out.stdout.split() if re.fullmatch(r"\d+(\.\d+)?", x)]
    return out.returncode == 0 and bool(caps) and min(caps) >= 9.0


def _check_budgets(budget_evals: int | None, budget_s: float | None) -> None:
    """ValueError naming a budget out of range (None: not given)."""
    if budget_evals is not None and int(budget_evals) < 1:
        raise ValueError(f"budget_evals must be >= 1, got {budget_evals}")
    if budget_s is not None and budget_s <= 0:
        raise ValueError(f"budget_s must be > 0 or None, got {budget_s}")


def _element_bytes(task: Task) -> int:
    """Bytes of a task tensor's element for the shared memory check of launch moves: 2 for a
    sampled fp16 / bf16 task (its metadata says), else 4 (fp32, KernelBench; an overestimate for
    an unknown half-precision task, which only makes the check stricter)."""
    return 2 if str(task.meta.get("dtype", "")) in ("float16", "bfloat16") else 4


def _jsonable_partition(p: Any) -> list[list[int]]:
    return [[int(i) for i in part] for part in p]


class _Search:
    def __init__(self, policy: SearchPolicy, task: Task, history: list[Attempt], budget_evals: int,
                 budget_s: float | None):
        self.p = policy
        self.budget_evals = budget_evals
        self.budget_s = budget_s
        self.task = task
        self.history = history
        self.t0 = time.perf_counter()
        self.log: list[dict[str, Any]] = []
        self.sources: list[str | None] = []
        self.verdicts: dict[int, Any] = {}
        self.seen: set[str] = set()
        self.pending: list[_Cand] = []
        self.duplicates = 0
        self.evaluations = 0
        self.refine_open = policy.refine
        self.refine_rounds = 0
        self.timed_backend = policy._timed_backend()
        digest = hashlib.sha256(task.source.encode()).digest()
        self.eval_seed = (int.from_bytes(digest[:6], "big") ^ int(policy.seed)) & (2**62 - 1)

    # budget ---------------------------------------------------------------------------------------
    def evals_left(self) -> int:
        return self.budget_evals - self.evaluations

    def time_left(self) -> bool:
        return self.budget_s is None or time.perf_counter() - self.t0 < self.budget_s

    def batch(self) -> int:
        if self.p.batch_size:
            return max(1, int(self.p.batch_size))
        ev = self.p._evaluator()
        return max(2, int(getattr(ev, "workers", 2) or 2))

    # candidates -----------------------------------------------------------------------------------
    def add(self, source: Any, origin: str, changes: dict[str, Any], parent: int | None = None) -> bool:
        if not isinstance(source, str) or not source.strip():
            self.policy_error(origin, changes, f"base policy returned {type(source).__name__}, not a source")
            return False
        if source in self.seen:
            self.duplicates += 1
            return False
        self.seen.add(source)
        self.pending.append(_Cand(source, origin, changes, parent))
        return True

    def policy_error(self, origin: str, changes: dict[str, Any], error: str) -> None:
        self.log.append({"index": len(self.log), "origin": origin, "changes": changes, "parent": None,
                         "status": "policy_error", "correct": False, "speedup": None,
                         "speedup_vs_compile": None, "error": error[:300]})
        self.sources.append(None)

    def ask(self, origin: str, changes: dict[str, Any], fn: Any, *args: Any, **kw: Any) -> list[Any]:
        try:
            out = fn(*args, **kw)
        except Exception as exc:  # noqa: BLE001 - a base failing on one request must not end the search
            self.policy_error(origin, changes, f"{type(exc).__name__}: {exc}")
            return []
        return list(out) if isinstance(out, (list, tuple)) else [out]

    def seeds(self) -> None:
        base, task, comp = self.p.base, self.task, self.p.compiler
        n0 = 1 if comp is not None else max(1, min(self.batch(), self.evals_left()))
        for s in self.ask("default", {}, base.propose, task, n=n0, history=self.history):
            self.add(s, "default" if not self.pending else "propose", {})
        if comp is None or self.budget_evals <= 1:   # one evaluation: the default alone, no other seeds built
            return
        # Configs the base itself suggests (the compiler: IEEE dots), one candidate each.
        for cfg in self.ask("config", {}, comp.seed_configs, task):
            if isinstance(cfg, dict):
                for s in self.ask("config", {"config": cfg}, comp.compile, task, config=cfg)[:1]:
                    self.add(s, "config", {"config": cfg})
        # TMA loads in the product kernels (a Hopper GPU, or asked for): judged only when some
        # operand got a descriptor, else the source would be the default's again.
        # And with a warp-specialised k loop where a product kernel reads both operands so (only
        # then does it differ from the TMA candidate).
        if self.p._offers_tma():
            for origin, cfg, marker in (("tma", {"tma": True}, "TensorDescriptor"),
                                        ("tma_ws", {"tma": True, "warp_specialize": True}, "warp_specialize=")):
                for s in self.ask(origin, {"config": cfg}, comp.compile, task, config=cfg)[:1]:
                    if isinstance(s, str) and marker in s:
                        self.add(s, origin, {"config": cfg})
        # Lenient mode: which convolutions / products run as the vendor call (extern anchors, the
        # compiler's `extern_choices`, its own set first): each other set with its default partition.
        ext_kw: dict[str, Any] = {}
        if self.p.mode == "lenient":
            choices = self.ask("extern", {}, comp.extern_choices, task)
            if choices:
                ext_kw = {"extern": choices[0]}
            for ext in choices[1:]:
                for s in self.ask("extern", {"extern": ext}, comp.compile, task, extern=ext)[:1]:
                    self.add(s, "extern", {"extern": ext})
        if self.p.partitions < 1:
            return
        # the base's partitions around its own extern anchors (each alone in its group), its
        # default (what the default proposal used) first
        got = self.ask("partition", {}, comp.candidate_partitions, task, limit=self.p.partitions, **ext_kw)
        try:
            parts = [_jsonable_partition(p) for p in got]
        except Exception as exc:  # noqa: BLE001 - a malformed answer from the base
            self.policy_error("partition", {}, f"{type(exc).__name__}: {exc}")
            return
        for part in parts[1:]:
            for s in self.ask("partition", {"partition": part}, comp.compile, task, partition=part)[:1]:
                self.add(s, "partition", {"partition": part})

    def best(self) -> int | None:
        """Index of the best judged candidate: fastest ok when timed, else the first ok, else
        the first compiled one, else the first judged one."""
        judged = sorted(self.verdicts)
        if not judged:
            return None
        ok = [i for i in judged if self.verdicts[i].status == "ok"]
        timed = [i for i in ok if self.verdicts[i].speedup is not None]
        if timed:
            return max(timed, key=lambda i: (self.verdicts[i].speedup, -i))
        if ok:
            return ok[0]
        compiled = [i for i in judged if self.verdicts[i].compiled]
        return (compiled or judged)[0]

    def next_round(self) -> None:
        """Queue the next candidates: launch neighbours of the best, refinements."""
        best = self.best()
        limit = max(1, min(self.batch(), self.evals_left()))
        if best is not None:
            v = self.verdicts[best]
            source = self.sources[best]
            kinds: tuple[str, ...] | None = None
            if v.status == "ok" and v.speedup is not None:
                kinds = ("block", "num_warps", "num_stages")
            elif v.status == "incorrect" or (v.compiled and v.status != "ok"):
                kinds = ("block",)   # e.g. a block too small for a row: launch knobs can fix that
            if kinds is not None and source is not None:
                try:
                    for var in variants(source, limit, kinds=kinds, exclude=self.seen, weights=self.costs(best),
                                        element_bytes=_element_bytes(self.task)):
                        self.add(var.source, "launch", var.changes, best)
                except Exception as exc:  # noqa: BLE001 - odd source (LaunchError) or a rewriter bug: log, go on
                    self.policy_error("launch", {}, f"{type(exc).__name__}: {exc}")
        if self.refine_open:
            self.refine_rounds += 1
            attempts = [Attempt(self.sources[i], self.verdicts[i].to_dict()) for i in sorted(self.verdicts)[-4:]]
            if best is not None and all(a.source != self.sources[best] for a in attempts):
                attempts.insert(0, Attempt(self.sources[best], self.verdicts[best].to_dict()))
            got = self.ask("refine", {"refine": self.refine_rounds}, self.p.base.propose, self.task,
                           n=limit, history=[*self.history, *attempts])
            added = sum(self.add(s, "refine", {"refine": self.refine_rounds}, best) for s in got)
            if not added:
                self.refine_open = False

    def costs(self, i: int) -> dict[str, float] | None:
        """The base policy's cost of each kernel of candidate `i` (`kernel_costs`, the compiler's),
        for the partition (or extern anchors) it was built with; None when the base has none to give."""
        if self.p.compiler is None:
            return None
        partition = None
        kw: dict[str, Any] = {}
        j: int | None = i
        while j is not None and 0 <= j < len(self.log):
            if self.log[j]["origin"] == "partition":
                partition = self.log[j]["changes"].get("partition")
                break
            if self.log[j]["origin"] == "extern":
                kw = {"extern": self.log[j]["changes"].get("extern")}
                break
            j = self.log[j]["parent"]
        got = self.ask("costs", {}, self.p.compiler.kernel_costs, self.task, partition, **kw)
        return got[0] if got and isinstance(got[0], dict) else None

    def evaluate(self, cands: list[_Cand]) -> None:
        pairs = [(self.task, c.source) for c in cands]
        try:
            verdicts = self.p._evaluator().evaluate_batch(pairs, backend=self.p.backend, mode=self.p.mode,
                                                          seed=self.eval_seed)
        except Exception as exc:  # e.g. backend "cuda" on a machine without a GPU
            raise RuntimeError(f"search: the evaluator failed: {type(exc).__name__}: {exc}") from exc
        self.evaluations += len(cands)
        for c, v in zip(cands, verdicts):
            i = len(self.log)
            self.log.append({"index": i, "origin": c.origin, "changes": c.changes, "parent": c.parent,
                             "status": v.status, "correct": bool(v.correct), "speedup": v.speedup,
                             "speedup_vs_compile": v.speedup_vs_compile, "error": (v.error or "")[:300],
                             "source_hash": hashlib.sha256(c.source.encode()).hexdigest()[:16]})
            self.sources.append(c.source)
            self.verdicts[i] = v

    def found(self) -> bool:
        """Untimed and a correct candidate in hand: nothing left to rank, stop."""
        best = self.best()
        return best is not None and self.verdicts[best].status == "ok" and self.verdicts[best].speedup is None

    def run(self) -> SearchResult:
        self.seeds()
        stopped = "exhausted"
        first = True
        while True:
            if self.found():
                stopped = "found"
                break
            if self.evals_left() <= 0:
                stopped = "budget_evals"
                break
            if not self.time_left():
                stopped = "budget_s"
                break
            if not self.pending:
                self.next_round()
                if not self.pending:
                    break
            # Untimed, the default alone goes first: if it is correct there is nothing to rank.
            size = 1 if first and not self.timed_backend else self.batch()
            size = min(size, self.evals_left())
            cands, self.pending = self.pending[:size], self.pending[size:]
            self.evaluate(cands)
            first = False
        best = self.best()
        return SearchResult(
            best_source=self.sources[best] if best is not None else None,
            best_verdict=self.verdicts.get(best) if best is not None else None,
            log=self.log, sources=self.sources, best_index=best, evaluations=self.evaluations,
            duplicates=self.duplicates, elapsed_s=time.perf_counter() - self.t0, stopped=stopped)
