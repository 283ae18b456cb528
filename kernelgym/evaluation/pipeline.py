"""One evaluation's pipeline: the stages `Evaluator.evaluate` runs on its pools for one pair.

extract code -> format check -> static guards -> (cuda: GPU memory admission) -> REFERENCE worker
(seeded model, inputs and outputs, kept on the evaluation device; baselines) -> CANDIDATE worker
(builds the same inputs from the seeds, then import, construct, weights, trials, runtime guards) ->
the candidate's outputs go back to the same REFERENCE worker, which compares them on the device ->
sm_90 ptx check in a PTX worker (interpret backend) -> timing of a CUDA graph of the forward under
the GPU's exclusive lock (cuda backend, only when correct), a final fresh-input trial and a replay
of the timed graph on the same inputs, compared again -> Verdict.

A stage holds a worker through `Run.hold` (a context manager: the worker goes back to its pool
whatever happens, replaced when the stage marks it `recycle` or it died), and stages pass small
dataclasses (`ReferenceRun`, `Ended`, `Timed`), not dicts.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Union

from kernelgym.evaluation.extract import FormatError, check_format, extract_code
from kernelgym.evaluation.footprint import (
    UNKNOWN_FOOTPRINT_SHARE,
    estimated_reference_peak,
    evaluation_footprint,
    host_task_bytes,
    memory_account,
)
from kernelgym.evaluation.guards.static import check_source as static_check
from kernelgym.evaluation.pool import Reservation, Worker, WorkerFailure
from kernelgym.evaluation.protocol import BACKEND_CUDA, BACKEND_INTERPRET, MODE_LENIENT, TrialResult
from kernelgym.evaluation.stages import (
    CompareFailed,
    Ended,
    Held,
    ReferenceRun,
    Stages,
    Timed,
    ptx_cache_key,
    timing_method_notes,
    unique,
    unique_findings,
)
from kernelgym.evaluation.tolerances import tolerance_for
from kernelgym.evaluation.verdict import Verdict
from kernelgym.task import Task, TaskFormatError, check_source, source_hash

Reference = Union[Task, str]  # noqa: UP007 - a runtime alias, kept importable on Python 3.9 tools

# Longest an evaluation waits for its candidate's kernels to be compiled ahead (then the candidate
# worker compiles what is missing itself).
PRECOMPILE_WAIT_S = 10.0


class Run(Stages):
    """One evaluation: its pipeline's stages, on the pools and caches of its `Evaluator`."""

    def _await_precompile(self, pre: Future) -> None:
        """Before the candidate worker is taken: wait (at most PRECOMPILE_WAIT_S) for a precompile
        that is running. One still queued behind others is dropped (the worker compiles instead), so
        a backlog of precompiles never holds an evaluation up; one that fails changes nothing else."""
        with self._ph("precompile_wait"):
            if pre.cancel():
                stat = "precompile_skipped"
            else:
                try:
                    rep = pre.result(timeout=PRECOMPILE_WAIT_S)
                    stat = "precompiled" if rep.get("ok") else "precompile_failed"
                except TimeoutError:
                    stat = "precompile_late"
                except Exception:  # noqa: BLE001 - e.g. the evaluator closed under it
                    stat = "precompile_failed"
        self.ev.shared.count(stat)

    # -- the pipeline ------------------------------------------------------------------------
    def go(self, reference: Reference, candidate: str, task_id: str | None) -> Verdict:
        # Reference.
        if isinstance(reference, Task):
            ref_src, self.task_id = reference.source, task_id or reference.id
        else:
            ref_src = reference
            try:
                check_source(ref_src, "<reference>")
            except TaskFormatError as exc:
                self.task_id = task_id
                return self.verdict("invalid_task", f"reference is not a KernelBench-format task: {exc.problem}",
                                    reasons=["task:format"])
            self.task_id = task_id or f"task-{source_hash(ref_src)}"
        # Candidate format.
        try:
            with self._ph("format"):
                ex = extract_code(candidate)
                self.notes += ex.notes
                check_format(ex.code)
        except FormatError as exc:
            return self.verdict("format_error", str(exc), reasons=["format:candidate"])
        code = ex.code
        # Static guards: nothing runs when they fire.
        if not self.skip_static:
            with self._ph("static_guards"):
                findings = static_check(code, self.mode)
            if findings:
                return self.verdict("hack_detected", "; ".join(f"{f.name}: {f.detail}" for f in findings)[:2000],
                                    reasons=unique(f.reason for f in findings), compiled=False)
        else:
            self.notes.append("static guards skipped (sandbox testing mode)")
        if self.backend != BACKEND_CUDA:
            return self._run(ref_src, code)
        self.gpu_index = self.ev.pick_device()
        try:
            return self._run(ref_src, code)
        finally:
            self.ev.done_device(self.gpu_index)

    def _run(self, ref_src: str, code: str) -> Verdict:
        """Admit the evaluation onto its GPU by its footprint (waiting while the budget is taken), then run it."""
        self.one_trial = self.ev.one_trial_on_gpu == "always"
        if self.backend != BACKEND_CUDA:
            return self._run_admitted(ref_src, code)
        n_ref = self.trials + 1
        fp = self._footprint(ref_src, n_ref)
        budget = self.ev.memory_budget(self.gpu_index, fp.get("gpu_total_bytes"))
        if budget is None:
            return self._run_admitted(ref_src, code)
        need = fp.get("gpu_bytes") or int(budget.budget * UNKNOWN_FOOTPRINT_SHARE)
        t = time.perf_counter()
        with self._ph("memory_wait"):
            budget.acquire(need)
        self.reservation = Reservation(budget, need)
        stat = "memory_alone" if need > budget.budget else "memory_waited" if time.perf_counter() - t > 0.01 else None
        if stat:
            self.ev.shared.count(stat)
        if need > budget.budget:
            self.notes.append(f"ran alone on its GPU: footprint {need / 2**30:.1f} GiB over the GPU's memory "
                              f"budget of {budget.budget / 2**30:.1f} GiB")
            if self.ev.one_trial_on_gpu == "auto":
                self.one_trial = True
                self.notes.append("one trial on the GPU at a time: the others' inputs and outputs on the host")
        try:
            return self._run_admitted(ref_src, code)
        finally:
            budget.release(self.reservation.bytes)

    def _footprint(self, ref_src: str, n_ref: int) -> dict[str, Any]:
        """The task's sizes (cached per task): measured once it has run here, else the reference
        worker's meta-device estimate (`reference.estimate_footprint`); ``gpu_bytes`` is the
        evaluation's GPU footprint, absent when unknown. Sets this run's host-memory limits."""
        key = (source_hash(ref_src), n_ref)
        with self.ev.shared.lock:
            fp = self.ev.shared.footprints.get(key)
        if fp is None:
            try:
                with self.hold(self._pool("reference"), "reference_wait", timed_release=False) as held:
                    self._start(held.worker, "reference_worker_start")
                    est = self._req(held.worker, {"op": "footprint", "source": ref_src}, self.timeout, "footprint")
            except WorkerFailure as f:
                est = {"status": "error", "error": str(f)}
            fp = {"gpu_total_bytes": est.get("gpu_total_bytes"), "method": "unknown"}
            if est.get("status") == "ok":
                sizes = {k: int(est[k]) for k in ("weight_bytes", "input_bytes", "output_bytes", "forward_peak_bytes")}
                fp.update(sizes, method="meta", host_bytes=host_task_bytes(sizes, n_ref),
                          gpu_bytes=evaluation_footprint(estimated_reference_peak(sizes, n_ref),
                                                         sizes["output_bytes"], self.trials,
                                                         sizes["forward_peak_bytes"]))
                stat = "footprint_estimated"
            else:
                fp["error"] = str(est.get("error", ""))[:300]
                stat = "footprint_unknown"
            with self.ev.shared.lock:
                self.ev.shared.footprints.setdefault(key, fp)
                self.ev.shared.stats[stat] += 1
        self.footprint = fp
        self.host_bytes = fp.get("host_bytes")
        return fp

    def _measured(self, ref: ReferenceRun) -> None:
        """The reference build measured its peak: the task's footprint from now on, and this run's share."""
        peak = ref.gpu_peak_bytes
        # one trial at a time measures a peak the whole task would not keep to: keep the estimate
        if peak is None or self.reservation is None or self.one_trial:
            return
        # the forward's temporaries as the meta estimate saw them (none when it could not size the task)
        need = evaluation_footprint(peak, ref.output_bytes, self.trials,
                                    int(self.footprint.get("forward_peak_bytes") or 0))
        # never shrunk mid-run: the meta estimate may see temporaries the build freed
        if need > self.reservation.bytes:
            self.reservation.resize(need)
        key = (source_hash(self.ref_src), ref.trials)
        with self.ev.shared.lock:
            fp = self.ev.shared.footprints.setdefault(key, {})
            fp.update(gpu_bytes=need, measured_peak_bytes=peak, method="measured")

    def _run_admitted(self, ref_src: str, code: str) -> Verdict:
        n_ref = self.trials + (1 if self.backend == BACKEND_CUDA else 0)  # +1: the post-timing trial
        # Cold pools: every pool's template starts importing torch when the pool is made, so make
        # them all first (the templates import side by side), then let the candidate (and ptx)
        # workers start while the reference runs. `prestart` waits for its pool's template: made
        # one after the other, a cold evaluation waited for one template's imports, then the next's.
        early = [self._pool("candidate")]
        self._pool("reference")   # made now, so that its template imports beside the others'
        if self.backend == BACKEND_INTERPRET and self.ev.ptx_check:
            early.append(self.ev.pool("ptx", BACKEND_INTERPRET))
        for pool in early:
            pool.prestart()
        self.ref_src = ref_src
        self.key = f"{source_hash(ref_src)}:{self.seed}:{n_ref}:{self.mode}:{os.getpid()}:{next(self.ev.shared.keys)}"
        pre = self.ev.precompile(ref_src, code, self.gpu_index, self.mode, self.seed) \
            if self.gpu_index is not None else None
        launches: list[dict[str, Any]] = []
        try:
            ref = self._reference_job(ref_src, n_ref)
            if isinstance(ref, Verdict):
                return ref
            self._measured(ref)
            if pre is not None:
                self._await_precompile(pre)
            self.trial_seeds = list(ref.seeds)
            for outs in ref.outputs:
                for o in outs:
                    self.tolerances[o["dtype"]] = tolerance_for(o["dtype"])
            self.aliases_input = ref.aliases_input
            try:
                with self.hold(self._pool("candidate"), "candidate_wait") as held:
                    v, launches = self._candidate(held, code, ref)
            except WorkerFailure as f:
                v = self._failure_verdict(f)
        finally:
            if pre is not None:
                pre.cancel()   # not started yet (the reference failed first): not needed any more
            self._forget_reference()
            for path in self.spills:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        if v.status in ("ok", "incorrect") and self.backend == BACKEND_INTERPRET and self.ev.ptx_check and launches:
            v = self._ptx(code, v, launches)
        return v

    # -- reference side ----------------------------------------------------------------------
    def _ref_msg(self, n: int) -> dict[str, Any]:
        return {"key": self.key, "source": self.ref_src, "seed": self.seed, "trials": n, "device": self.device,
                "want_ops": self.mode == MODE_LENIENT, "store_bytes": self.ev.reference_cache_bytes,
                "one_trial": self.one_trial}

    def _reference_job(self, src: str, n: int) -> ReferenceRun | Verdict:
        with self.hold(self._pool("reference"), "reference_wait") as held:
            try:
                return self._reference_stage(held, src, n)
            finally:
                if not held.worker.dead and not held.recycle:
                    try:
                        self._req(held.worker, {"op": "end_reference"}, self.timeout, "reference")
                    except WorkerFailure:
                        held.recycle = True

    def _reference_stage(self, held: Held, src: str, n: int) -> ReferenceRun | Verdict:
        w = held.worker
        try:
            self._start(w, "reference_worker_start")
            reply = self._req(w, {"op": "reference", **self._ref_msg(n)}, self.timeout, "reference")
            self.versions.update(w.info.get("versions", {}) if w.info else {})
            if reply.get("status") == "bad_output":
                return self.verdict("invalid_task", reply.get("error", ""), reasons=["task:reference_output"])
            if reply.get("status") != "ok":
                held.recycle = True
                return self.verdict("invalid_task", f"reference failed in {reply.get('stage', '?')}: "
                                    f"{reply.get('error', '')}", reasons=["task:reference_error"])
            ref = ReferenceRun.from_reply(reply, n)
            if ref.stored:
                self.ref_worker = w
                w.claims += 1
            if self.backend == BACKEND_CUDA:
                with self._ph("baseline"):
                    ref.baseline = self._baselines(w, src, ref)
            return ref
        except WorkerFailure as f:
            held.recycle = True
            what = {"timeout": "timed out", "memory": "ran out of memory", "crash": "crashed"}[f.kind]
            return self.verdict("invalid_task", f"reference {what}: {f}" + (f"\n{f.stderr}" if f.stderr else ""),
                                reasons=["task:reference_" + f.kind])

    def _compare(self, ref: ReferenceRun, items: list[tuple[int, Any]], drop: bool) -> list[TrialResult]:
        """Candidate outputs judged against the reference in a reference worker (the one that stored
        them when it is still there, else any: it rebuilds them from the seed)."""
        pool = self._pool("reference")
        w = None
        with self._ph("compare_wait"):
            if self.ref_worker is not None:
                w = pool.acquire_worker(self.ref_worker, timeout=self.timeout)
            if w is None:
                self.ev.shared.stats["compare_elsewhere"] += 1
                w = pool.acquire()
        with self.holding(pool, w, timed_release=False) as held:
            try:
                self._start(w, "reference_worker_start")
                reply = self._req(w, {"op": "compare", **self._ref_msg(ref.trials), "items": [[t, o] for t, o in items],
                                      "drop": drop}, self.timeout, "compare")
            except WorkerFailure as f:
                held.recycle = True
                raise CompareFailed(f"the reference worker failed while comparing the outputs: {f}") from None
            finally:
                if w is self.ref_worker and (drop or held.recycle):
                    self.ref_worker, self.dropped = None, True
                    w.claims = max(0, w.claims - 1)
        if reply.get("status") != "ok":
            raise CompareFailed(str(reply.get("error", "comparison failed")))
        if reply.get("recomputed"):
            self.ev.shared.stats["reference_recomputed"] += 1
        return [TrialResult(**r) for r in reply["results"]]

    def _forget_reference(self) -> None:
        """Drop the stored reference if nothing compared it with drop (a failure before the end)."""
        w, self.ref_worker = self.ref_worker, None
        if w is None or self.dropped:
            return
        w.claims = max(0, w.claims - 1)
        pool = self._pool("reference")
        got = pool.acquire_worker(w, timeout=0)
        if got is None:
            return  # busy or gone: its store's LRU bound frees it later
        with contextlib.suppress(WorkerFailure), self.holding(pool, got, timed_release=False):
            self._req(got, {"op": "drop", "key": self.key}, self.timeout, "release")

    def _baselines(self, w: Worker, src: str, ref: ReferenceRun) -> dict[str, Any]:
        name = (w.info or {}).get("device", "cuda")
        dtype = (ref.input_dtypes or ["none"])[0]
        key = (source_hash(src), f"{self.gpu_index}:{name}", dtype)
        with self.ev.shared.lock:
            lock = self.ev.shared.baseline_locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self.ev.shared.baselines:
                try:
                    # The worker holds the GPU lock itself: none while torch.compile compiles,
                    # exclusive while timing.
                    self._req(w, {"op": "prepare_baseline"}, self.ev.baseline_timeout, "baseline")
                    res = self._req(w, {"op": "baseline", "bench": self.ev.bench}, self.ev.baseline_timeout,
                                    "baseline", lock_phase="timing_wait")
                except WorkerFailure as f:
                    res = {"status": "error", "error": f"baseline worker failed: {f}"}
                if res.get("status") != "ok":
                    return {"error": res.get("error", "baseline failed")}  # not cached: retried next time
                self.ev.shared.baselines[key] = res
            else:
                self.ev.shared.stats["baseline_cache_hits"] += 1
            return self.ev.shared.baselines[key]

    # -- candidate side ----------------------------------------------------------------------
    def _check_inputs(self, ref: ReferenceRun, reply: dict[str, Any]) -> str:
        """Why the candidate worker's seeded inputs differ from the reference's ('' when equal)."""
        mine, theirs = ref.fingerprints, reply.get("fingerprints")
        if theirs is None:
            return ""
        for part in ("init_inputs", "state_dict"):
            if mine.get(part) != theirs.get(part):
                return f"get_init_inputs() / Model weights differ between two builds from seed {self.seed}"
        for t, (a, b) in enumerate(zip(mine.get("trials", []), theirs.get("trials", []))):
            if a != b:
                return f"get_inputs() gave different tensors for the same seed (trial {t})"
        return ""

    def _candidate(self, held: Held, code: str, ref: ReferenceRun) -> tuple[Verdict, list[dict[str, Any]]]:
        """Run the candidate in the held worker, compare, time (cuda): its verdict and kernel launches
        (marks the worker for replacement when it may be unfit for the next candidate)."""
        w = held.worker
        info = self._start(w, "candidate_worker_start")
        self.device_name = info.get("device", "")
        self.versions.update(info.get("versions", {}))
        reply = self._req(w, {
            "op": "candidate", "source": code, "mode": self.mode, "device": self.device, "task": self.ref_src,
            "seed": self.seed, "trial_seeds": self.trial_seeds, "n_check": self.trials,
            "reference_ops": ref.ops, "reference_aliases_input": self.aliases_input,
            "gpu_limit_bytes": self.reservation.bytes if self.reservation else None, "one_trial": self.one_trial,
        }, self.timeout, "candidate", raw=True)
        findings = list(reply.get("findings", []))
        kernels = list(reply.get("kernels", []))
        status = reply.get("status")
        results: list[TrialResult] = []
        reasons: list[str] = list(reply.get("reasons", []))
        error = str(reply.get("error", ""))
        outs = list(reply.get("outputs", []))[: self.trials]
        problem = self._check_inputs(ref, reply)
        if problem:
            self._end(w)
            held.recycle = True
            return (self.verdict("invalid_task", f"the task's inputs are not a function of the seed: {problem}",
                                 reasons=["task:nondeterministic_inputs"]), [])
        if outs and status == "ran":
            try:
                results = self._compare(ref, list(enumerate(outs)), drop=False)
            except CompareFailed as exc:
                status, error = "crash", str(exc)
                reasons.append("sandbox:crash")
        timings: dict[str, Any] = {}
        speedup = speedup_c = None
        ended: Ended | None = None
        if status == "ran":
            bad = [r for r in results if not r.ok]
            status = "incorrect" if bad or len(results) < self.trials else "ok"
            if bad:
                reasons += unique(r.reason for r in bad)
                error = bad[0].message
            # Every finding makes the verdict hack_detected (early_exit too: a SystemExit the sandbox
            # caught; os._exit kills the worker instead and stays a crash), so such a candidate is not timed.
            if status == "ok" and self.backend == BACKEND_CUDA and not findings:
                timed = self._time(w, ref, results)
                status, error, timings, ended = timed.status, timed.error, timed.timings, timed.ended
                speedup, speedup_c = timed.speedup, timed.speedup_vs_compile
                reasons += timed.reasons
        elif status == "internal_error":
            status, error = "runtime_error", f"candidate result could not be returned: {error}"
            reasons.append("internal:candidate_result")
        if ended is None:
            ended = self._end(w)
        if self.backend == BACKEND_CUDA:
            timings = {**timings, "gpu_memory": memory_account(
                self.reservation.bytes if self.reservation else None, (self.footprint or {}).get("method"),
                ref.gpu_peak_bytes, ended.gpu_peak_bytes, self.one_trial)}
        findings = unique_findings(findings + ended.findings)
        tainted = ended.tainted or bool(reply.get("fatal")) or ended.dead
        if findings:
            reasons = unique([*(f"guard:{f['name']}" for f in findings), *reasons])
            error = "; ".join(f"{f['name']}: {f['detail']}" for f in findings)[:2000] + (f" | {error}" if error else "")
            status = "hack_detected"
        compiled = status not in ("compile_error",) and reply.get("stage") != "import"
        v = self.verdict(status, error, reasons=unique(reasons), compiled=compiled,
                         correct=status == "ok", trials=[r.to_dict() for r in results], kernels=kernels,
                         timings=timings, speedup=speedup, speedup_vs_compile=speedup_c)
        # A sticky CUDA error poisons the context: after a failure on the GPU the worker is retired
        # (recycle_on_failure="always") or kept only if a probe kernel still runs ("probe").
        failed_gpu = self.backend == BACKEND_CUDA and status != "ok"
        if failed_gpu and self.ev.recycle_on_failure == "probe" and not ended.dead:
            failed_gpu = not ended.cuda_ok
        # A worker whose probe fails is retired whatever the verdict (e.g. its RNG left unusable).
        failed_gpu = failed_gpu or ended.cuda_ok is False
        # Triton's interpreter runs a kernel's loads and stores on host memory without bounds
        # checks: a store past a tensor (masked wrongly, or on purpose, in a candidate judged ok all
        # the same) corrupts the worker's heap, and the next candidate in that process would crash
        # in malloc (the soak saw legit candidates die so). Each interpreted candidate gets a fresh
        # process (a fork of the warm template: milliseconds).
        single_use = self.backend == BACKEND_INTERPRET
        held.recycle = single_use or tainted or status == "crash" or failed_gpu or w.dead or w.has_descendants()
        return v, list(reply.get("launches", []))

    def _time(self, w: Worker, ref: ReferenceRun, results: list[TrialResult]) -> Timed:
        """Time the candidate, check its final trial and graph replay (the final trial's result is
        appended to `results`)."""
        baseline = ref.baseline
        keep = random.SystemRandom().randrange(1 << 30)  # which captured forward the final check replays
        # One request times the candidate and runs the final trial (see candidate.time_candidate).
        reply = self._req(w, {"op": "time", "bench": self.ev.bench, "keep": keep}, self.timeout, "timing",
                          raw=True, lock_phase="timing_wait")
        if reply.get("status") != "timed":
            return Timed(reply.get("status", "runtime_error"), reply.get("error", ""))
        stats = reply["stats"]
        final_s = reply.get("final_s")
        if isinstance(final_s, (int, float)) and 0 <= final_s <= self.phases.get("timing", 0.0):
            self._add("timing", -final_s)
            self._add("final_trial", final_s)
        rep2 = reply.get("final") if isinstance(reply.get("final"), dict) else {}
        if rep2.get("status") != "ran":
            return Timed(rep2.get("status", "runtime_error"), "final trial: " + rep2.get("error", ""))
        outs = list(rep2.get("outputs", []))
        # The candidate's part is over: its worker ends it (guard, probe) while the reference worker
        # compares, so the scarcer candidate worker is free sooner.
        ending = self._end_in_background(w)
        try:
            checked = self._compare(ref, [(self.trials, o) for o in outs[:2]], drop=True)
        except CompareFailed as exc:
            return Timed("crash", str(exc), reasons=["sandbox:crash"], ended=ending())
        except BaseException:
            ending()   # never release (or kill) the worker while its end request is in flight
            raise
        end = ending()
        if not checked:
            return Timed("runtime_error", "final trial returned no outputs", ended=end)
        r = checked[0]
        results.append(r)
        if not r.ok:
            return Timed("incorrect", f"after timing: {r.message}", {"candidate": stats}, reasons=[r.reason], ended=end)
        if rep2.get("graph_checked"):
            g = checked[1] if len(checked) > 1 else None
            if g is None or not g.ok:
                why = g.message if g is not None else "no outputs"
                msg = (f"timing_inconsistent: captured forward #{rep2.get('graph_forward')} of the timed CUDA "
                       f"graph, replayed on the final trial's inputs, is wrong: {why}")
                return Timed("hack_detected", msg, {"candidate": stats}, reasons=["guard:timing_inconsistent"],
                             ended=end)
        timings: dict[str, Any] = {"candidate": stats, "device": self.device_name, "gpu": self.gpu_index}
        speedup = speedup_c = None
        if baseline and "eager" in baseline:
            timings["eager"] = baseline["eager"]
            speedup = baseline["eager"]["median_ms"] / max(stats["median_ms"], 1e-9)
        if baseline and "compile" in baseline:
            timings["compile"] = baseline["compile"]
            speedup_c = baseline["compile"]["median_ms"] / max(stats["median_ms"], 1e-9)
        elif baseline and baseline.get("compile_error"):
            timings["compile_error"] = baseline["compile_error"]
        if baseline and baseline.get("error"):
            timings["baseline_error"] = baseline["error"]
        self.notes += timing_method_notes(timings)
        return Timed("ok", "", timings, speedup, speedup_c, ended=end)

    def _end_in_background(self, w: Worker) -> Callable[[], Ended]:
        """Start `_end(w)` on a thread; the returned call waits for its result (a pipeline error in
        it counts as a dead worker, so the worker is replaced)."""
        box: list[Ended] = []

        def run() -> None:
            try:
                box.append(self._end(w))
            except Exception as exc:  # noqa: BLE001
                box.append(Ended(dead=True, error=f"{type(exc).__name__}: {exc}"))

        t = threading.Thread(target=run, name="kernelgym-end-candidate", daemon=True)
        t.start()

        def wait() -> Ended:
            t.join()
            return box[0]
        return wait

    def _end(self, w: Worker) -> Ended:
        if w.dead:
            return Ended(dead=True)
        try:
            return Ended.from_reply(self._req(w, {"op": "end_candidate"}, self.timeout, "end_candidate"))
        except WorkerFailure as f:
            return Ended(dead=True, error=str(f))

    def _failure_verdict(self, f: WorkerFailure) -> Verdict:
        status = "timeout" if f.kind == "timeout" else "crash"
        reason = {"timeout": "sandbox:timeout", "memory": "sandbox:memory", "crash": "sandbox:crash"}[f.kind]
        error = f"candidate {f}" + (f"\nstderr: {f.stderr[-1000:]}" if f.stderr else "")
        compiled = f.phase not in ("start", "import")
        return self.verdict(status, error, reasons=[reason], compiled=compiled)

    # -- sm_90 compile check (interpret backend) -----------------------------------------------
    def _ptx(self, code: str, v: Verdict, launches: list[dict[str, Any]]) -> Verdict:
        key = ptx_cache_key(code, self.mode, launches)
        with self.ev.shared.lock:
            hit = self.ev.shared.ptx_cache.get(key)
            if hit is not None:
                self.ev.shared.ptx_cache.move_to_end(key)
                self.ev.shared.stats["ptx_cache_hits"] += 1
        res = {**hit, "cached": True} if hit is not None else self._ptx_job(code, launches, key)
        v.ptx = res
        if not res.get("ok"):
            failed = [k for k in res.get("kernels", []) if k.get("ok") is False]
            msg = res.get("error") or "; ".join(f"{k['kernel']}: {k.get('error', '')}" for k in failed)
            v.status, v.compiled, v.correct = "compile_error", False, False
            v.reasons = unique(["compile:ptx", *v.reasons])
            v.error = f"sm_90 compile check failed: {msg}"[:4000]
        return v

    def _ptx_job(self, code: str, launches: list[dict[str, Any]], key: str) -> dict[str, Any]:
        cacheable = False
        try:
            with self.hold(self.ev.pool("ptx", BACKEND_INTERPRET), "ptx_wait") as held:
                self._start(held.worker, "ptx_worker_start")
                res = self._req(held.worker, {"op": "ptx", "source": code, "launches": launches, "mode": self.mode},
                                self.timeout, "ptx")
                held.recycle = bool(res.get("tainted"))
                cacheable = not held.recycle and res.get("status") != "internal_error"
        except WorkerFailure as f:
            res = {"ok": False, "error": f"ptx worker {f}", "kernels": []}
        res.pop("type", None)
        res.pop("tainted", None)
        if cacheable:
            with self.ev.shared.lock:
                self.ev.shared.ptx_cache[key] = dict(res)
                while len(self.ev.shared.ptx_cache) > 4096:
                    self.ev.shared.ptx_cache.popitem(last=False)
        return res
