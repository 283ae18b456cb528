"""The candidate job, run in a CANDIDATE worker: import, construct, load weights, run trials.

Before any candidate code runs, the worker builds the task's init inputs, weights and every
trial's inputs from the evaluation's seeds (`jobs.seeded_task` / `trial_inputs`, exactly as the
reference worker does; fingerprints let the parent check both built the same), so no input
tensor crosses a process boundary. Every execution of candidate code happens inside
`RuntimeGuard.sandboxed()`, on the worker's evaluation stream (a non-default CUDA stream; the
guard flags launches on any other). The job never sees reference outputs; it returns the
candidate's outputs (copied right after each forward returns) and the guard's findings, and the
parent has them compared in a reference worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import sys
import time
import types
from collections.abc import Callable
from typing import Any

from kernelgym.evaluation.guards.runtime import RuntimeGuard
from kernelgym.evaluation.jobs import (
    crash_kind,
    describe,
    finding_dict,
    fingerprint,
    host_allocation_refused,
    is_compile_error,
    launch_dict,
    outputs_list,
    seeded_task,
    sync,
    to_device,
    trial_inputs,
)


class _Exited(Exception):
    """Candidate code left a sandboxed block without finishing (SystemExit swallowed by the guard)."""


class CandidateSession:
    """State of one candidate inside a worker, kept between the run, time, final and end requests."""

    def __init__(self, msg: dict[str, Any], tmpdir: str, gpu: Any, stream: Any):
        self.device: str = msg["device"]
        self.gpu, self.stream = gpu, stream
        self.mode: str = msg["mode"]
        self.source: str = msg["source"]
        digest = hashlib.sha256(self.source.encode()).hexdigest()[:16]
        self.filename = os.path.join(tmpdir, f"candidate_{digest}.py")
        self.module_name = f"kernelgym_candidate_{digest}"
        ops = msg.get("reference_ops")
        import collections

        self.guard = RuntimeGuard(self.mode, collections.Counter(ops) if ops is not None else None,
                                  self.filename, self.device,
                                  reference_aliases_input=bool(msg.get("reference_aliases_input", False)))
        if stream is not None:
            self.guard.stream = int(stream.cuda_stream)
            self.guard.compile_section = gpu.released
        self.model: Any = None
        self.inputs: list[Any] = []
        self.final_inputs: list[Any] | None = None
        self.bench: Any = None
        self.gpu_base: int | None = None   # bytes allocated when the session began (cuda)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run candidate code under the sandbox; SystemExit becomes `_Exited`."""
        done, result = False, None
        try:
            with self.guard.sandboxed():
                result = fn()
                done = True
        except SystemExit as exc:
            raise _Exited(f"candidate raised SystemExit({exc.code!r})") from None
        if not done:
            raise _Exited("candidate code exited early (SystemExit)")
        return result

    def on_stream(self) -> Any:
        """The evaluation stream as the current stream (a no-op on the CPU)."""
        import torch

        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def forward(self, inputs: list[Any]) -> list[Any]:
        import torch

        def run() -> Any:
            with torch.no_grad(), self.guard.forward_call(inputs, module=self.model) as rec:
                out = self.model(*inputs)
                sync(self.device)
            return rec, out

        with self.gpu.hold("shared"), self.on_stream():
            rec, out = self.call(run)
            items = list(out) if isinstance(out, (list, tuple)) else [out]
            # Still on the evaluation stream: the guard checks the forward left it current.
            self.guard.after_forward(rec, [t for t in items if isinstance(t, torch.Tensor)])
            return outputs_list(out)

    def result(self, **kw: Any) -> dict[str, Any]:
        kw.setdefault("outputs", [])
        kw["findings"] = [finding_dict(f) for f in self.guard.findings]
        kw["launches"] = [launch_dict(r) for r in self.guard.launches]
        kw["kernels"] = sorted({r["kernel"] for r in kw["launches"]})
        return kw


def _with(fps: dict[str, Any], reply: dict[str, Any]) -> dict[str, Any]:
    reply["fingerprints"] = fps
    return reply


def _stream(state: dict[str, Any], device: str) -> Any:
    """The worker's evaluation stream (one per process, reused), or None on the CPU."""
    if not device.startswith("cuda"):
        return None
    import torch

    if "stream" not in state:
        state["stream"] = torch.cuda.Stream()
    return state["stream"]


def set_gpu_limit(limit_bytes: int | None, cuda: Any = None) -> float | None:
    """This process's GPU memory cap for one evaluation: the worker's default fraction
    (KERNELGYM_GPU_FRACTION), raised to `limit_bytes` (the evaluation's admitted footprint) when that
    is more, so a task that legitimately needs more than a worker's default share is not failed by
    the cap. None: back to the default. Returns the fraction set (None without a GPU). `cuda`: the
    torch.cuda module (tests)."""
    if cuda is None:
        import torch

        cuda = torch.cuda
    if not cuda.is_available():
        return None
    default = float(os.environ.get("KERNELGYM_GPU_FRACTION") or 1.0)
    frac = default
    if limit_bytes:
        frac = min(1.0, max(default, limit_bytes / cuda.get_device_properties(0).total_memory))
    cuda.set_per_process_memory_fraction(frac)
    return frac


def _failure(session: CandidateSession, stage: str, exc: BaseException, outputs: list) -> dict[str, Any]:
    """The result for a candidate that raised in `stage`, with a machine-readable reason:
    sandbox:exit, runtime:out_of_memory (a crash, or a runtime_error when the host allocator
    refused a request), runtime:cuda_error, compile:kernel (Triton refused a kernel),
    compile:import (the module did not import), runtime:construct or runtime:forward."""
    if isinstance(exc, _Exited):
        return session.result(status="crash", stage=stage, error=f"{exc} in {stage}", outputs=outputs,
                              reasons=["sandbox:exit"])
    msg = describe(exc, session.filename)
    refused = _os_refusal(exc)
    if refused is not None:   # the OS sandbox stopped an escape the Python guards did not see
        session.guard._add(refused)
    kind = crash_kind(exc)
    if kind is not None:
        reason = "runtime:out_of_memory" if kind == "out of memory" else "runtime:cuda_error"
        return session.result(status="crash", stage=stage, error=f"{kind} in {stage}: {msg}", outputs=outputs,
                              fatal=True, reasons=[reason])
    if host_allocation_refused(exc):   # at import too: a refused allocation is not a compile error
        return session.result(status="runtime_error", stage=stage, error=msg, outputs=outputs,
                              reasons=["runtime:out_of_memory"])
    if is_compile_error(exc):
        return session.result(status="compile_error", stage=stage, error=msg, outputs=outputs,
                              reasons=["compile:kernel"])
    if stage == "import":
        return session.result(status="compile_error", stage=stage, error=msg, outputs=outputs,
                              reasons=["compile:import"])
    return session.result(status="runtime_error", stage=stage, error=msg, outputs=outputs,
                          reasons=[f"runtime:{stage.split(' ')[0]}"])


def _os_refusal(exc: BaseException) -> Any:
    """A `Finding` when this worker is confined and `exc` is the OS refusing a file or socket."""
    from kernelgym.evaluation import sandbox
    from kernelgym.evaluation.guards import Finding

    found = sandbox.denial(exc) if sandbox.active() else None
    return Finding(found[0], found[1]) if found else None


def run_candidate(state: dict[str, Any], msg: dict[str, Any], progress: Callable[[str], None]) -> dict[str, Any]:
    """Import the candidate, build ModelNew, copy weights, run each trial's inputs."""
    import torch

    s = CandidateSession(msg, state["tmpdir"], state["gpu"], _stream(state, msg["device"]))
    state["candidate"] = s
    # a task too large for the GPU (`EvaluatorOptions.one_trial_on_gpu`): one trial's inputs and
    # outputs on the GPU at a time, the rest on the host; timed on the first trial's inputs alone
    one_trial = bool(msg.get("one_trial"))
    if s.device.startswith("cuda"):
        set_gpu_limit(msg.get("gpu_limit_bytes"))
        s.gpu_base = _reset_gpu_peak()
    # The task's data, built from the seeds before any candidate code exists in this process.
    progress("inputs")
    try:
        module, init_inputs, ref_model = seeded_task(msg["task"], int(msg["seed"]), "kernelgym_task_inputs")
        state_dict = {k: v.detach().clone() for k, v in ref_model.state_dict().items()}
        with s.gpu.hold("shared"):   # drawn on the device (see `trial_inputs`)
            if one_trial:   # each trial's inputs to the host as soon as drawn and summed
                all_inputs, trial_fps = [], []
                for ts in msg["trial_seeds"]:
                    drawn = trial_inputs(module, int(ts), s.device)
                    trial_fps.append(fingerprint(drawn))
                    all_inputs.append(to_device(drawn, "cpu"))
                    del drawn
            else:
                all_inputs = [trial_inputs(module, int(ts), s.device) for ts in msg["trial_seeds"]]
                trial_fps = fingerprint(all_inputs)   # one list per trial, read with one transfer
        del module, ref_model
    except BaseException as exc:  # noqa: BLE001 - the reference worker built these: report, don't crash
        return {"status": "internal_error", "error": f"building the task inputs failed: {describe(exc)}",
                "outputs": [], "findings": [], "launches": [], "kernels": []}
    sys.modules.pop("kernelgym_task_inputs", None)
    fps = {"init_inputs": fingerprint(init_inputs), "state_dict": fingerprint(state_dict), "trials": trial_fps}
    n_check = int(msg["n_check"])
    s.final_inputs = all_inputs[n_check] if len(all_inputs) > n_check else None
    trials = all_inputs[:n_check]
    del all_inputs
    s.guard.install()
    outputs: list[list[Any]] = []

    def result(**kw: Any) -> dict[str, Any]:
        return {**s.result(**kw), "fingerprints": fps}

    progress("import")
    with open(s.filename, "w", encoding="utf-8") as fh:
        fh.write(s.source)
    module = types.ModuleType(s.module_name)
    module.__file__ = s.filename
    # Registered so that dataclasses, pickling helpers and Triton can resolve fn.__module__.
    sys.modules[s.module_name] = module
    try:
        code = compile(s.source, s.filename, "exec")
        s.call(lambda: exec(code, module.__dict__))  # noqa: S102 - running the candidate is the point
        cls = module.__dict__.get("ModelNew")
        if not isinstance(cls, type):
            return result(status="format_error", stage="import", reasons=["format:candidate"],
                          error="ModelNew is not a class after running the module")
    except BaseException as exc:  # noqa: BLE001 - any failure of candidate code is a verdict
        return _with(fps, _failure(s, "import", exc, outputs))

    progress("construct")
    try:
        inspect.signature(cls).bind(*init_inputs)
    except TypeError as exc:
        return result(status="runtime_error", stage="construct", reasons=["runtime:construct"],
                      error=f"wrong constructor: ModelNew(*get_init_inputs()) with {len(init_inputs)} "
                            f"argument(s) does not match the signature ModelNew{inspect.signature(cls)}: {exc}")
    except ValueError:
        pass  # no introspectable signature; the call below reports any mismatch
    try:
        s.model = s.call(lambda: cls(*init_inputs))
    except BaseException as exc:  # noqa: BLE001
        return _with(fps, _failure(s, "construct", exc, outputs))
    if not isinstance(s.model, torch.nn.Module):
        return result(status="runtime_error", stage="construct", reasons=["runtime:construct"],
                      error=f"ModelNew(...) returned {type(s.model).__name__}, not a torch.nn.Module")
    try:
        problem = _load_weights(s, state_dict)
    except BaseException as exc:  # noqa: BLE001
        return _with(fps, _failure(s, "construct", exc, outputs))
    if problem:
        return result(status="incorrect", stage="construct", error=problem, reasons=["check:state_dict_mismatch"])
    # One shared section from here to the last trial (Triton compiles inside it let the lock go):
    # each section is a round trip to the parent and may wait behind queued timings.
    with s.gpu.hold("shared"):
        try:
            s.call(lambda: s.model.to(s.device))
        except BaseException as exc:  # noqa: BLE001
            return _with(fps, _failure(s, "construct", exc, outputs))
        s.inputs = [to_device(inp, s.device) for inp in (trials[:1] if one_trial else trials)]
        sync(s.device)
        for t in range(len(trials)):
            progress(f"trial {t}")
            try:
                inputs = s.inputs[t] if t < len(s.inputs) else to_device(trials[t], s.device)
                out = s.forward(list(inputs))
                outputs.append(to_device(out, "cpu") if one_trial else out)
                del inputs, out
            except BaseException as exc:  # noqa: BLE001
                return _with(fps, _failure(s, f"forward (trial {t})", exc, outputs))
    return result(status="ran", stage="forward", outputs=outputs)


def _load_weights(s: CandidateSession, state_dict: dict[str, Any]) -> str:
    """Copy the reference's weights into ModelNew by name; a message naming the keys on mismatch."""
    own = s.call(lambda: s.model.state_dict())
    missing = sorted(set(state_dict) - set(own))
    unexpected = sorted(set(own) - set(state_dict))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing in ModelNew: {', '.join(missing[:20])}")
        if unexpected:
            parts.append(f"not in the reference: {', '.join(unexpected[:20])}")
        return "state_dict keys differ from the reference's (" + "; ".join(parts) + ")"
    shapes = [k for k in state_dict if tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if shapes:
        return "state_dict shape mismatch for " + ", ".join(
            f"{k} {tuple(own[k].shape)} vs reference {tuple(state_dict[k].shape)}" for k in shapes[:10])
    s.call(lambda: s.model.load_state_dict(state_dict, strict=True))
    return ""


def time_candidate(state: dict[str, Any], msg: dict[str, Any], progress: Callable[[str], None]) -> dict[str, Any]:
    """Time the candidate's forward over its trial inputs (GPU only; after correctness), then run
    `final_trial` in the same request (its reply under ``final``, its seconds as ``final_s``): one
    round trip less while the candidate holds its worker.

    A CUDA graph of the forward is captured and warmed up under the shared GPU lock, then its timed
    replays run under the exclusive lock (`timing.GraphBench`); the forward whose outputs are kept
    for the post-timing check is ``keep`` (drawn by the parent). A forward that cannot be captured
    is timed eagerly (`timing.EagerBench`), under the exclusive lock.
    """
    import torch

    from kernelgym.evaluation.timing import time_forward

    s: CandidateSession = state["candidate"]
    progress("timing")

    def fn(inputs: list[Any]) -> Any:
        with torch.no_grad():
            return s.model(*inputs)

    def fatal(exc: BaseException) -> bool:   # else the forward is timed eagerly
        return isinstance(exc, _Exited) or (crash_kind(exc) is not None and not _capture_error(exc))

    try:
        stats, s.bench = time_forward(fn, [list(x) for x in s.inputs], stream=s.stream, hold=s.gpu.hold,
                                      keep=msg.get("keep"), wrap=s.call, fatal=fatal,
                                      explain=lambda exc: describe(exc, s.filename), **dict(msg.get("bench", {})))
    except BaseException as exc:  # noqa: BLE001
        return _failure(s, "timing", exc, [])
    t = time.perf_counter()
    final = final_trial(state, msg, progress)
    return s.result(status="timed", stats=stats, final=final, final_s=time.perf_counter() - t)


def _capture_error(exc: BaseException) -> bool:
    """A CUDA error that only says the forward cannot be captured (not sticky: the context is fine)."""
    from kernelgym.evaluation.jobs import exception_chain

    return any("captur" in str(e).lower() for e in exception_chain(exc))


def final_trial(state: dict[str, Any], msg: dict[str, Any], progress: Callable[[str], None]) -> dict[str, Any]:
    """One more forward on fresh inputs after timing (catches caching across timed runs), and, when a
    graph was timed, one replay of that graph on the same inputs: its kept forward's outputs come
    back too, so the parent checks that what was timed computes the function."""
    s: CandidateSession = state["candidate"]
    progress("final trial")
    if s.final_inputs is None:
        return s.result(status="internal_error", error="no inputs for the final trial")
    graph_checked = False
    with s.gpu.hold("shared"):   # one section for both (see run_candidate)
        try:
            fresh = to_device(s.final_inputs, s.device)
            sync(s.device)
            outputs = [s.forward(list(fresh))]
        except BaseException as exc:  # noqa: BLE001
            return _failure(s, "forward (final trial)", exc, [])
        if s.bench is not None and s.bench.kept_index is not None:
            progress("timed graph replay")
            try:
                fresh = to_device(s.final_inputs, s.device)
                kept = s.call(lambda: s.bench.replay_kept(list(fresh)))
                outputs.append(outputs_list(kept))
                graph_checked = True
            except BaseException as exc:  # noqa: BLE001
                return _failure(s, "timed graph replay", exc, [])
    return s.result(status="ran", outputs=outputs, graph_checked=graph_checked,
                    graph_forward=s.bench.kept_index if graph_checked else None)


def _reset_gpu_peak() -> int | None:
    """Start counting this session's GPU peak; the bytes already allocated (None if CUDA fails)."""
    import torch

    try:
        torch.cuda.reset_peak_memory_stats()
        return int(torch.cuda.memory_allocated())
    except Exception:  # noqa: BLE001 - a broken context is the probe's finding
        return None


def _gpu_peak(base: int | None) -> int | None:
    """Bytes the caching allocator held at most since `_reset_gpu_peak` gave `base`, beyond it."""
    import torch

    if base is None:
        return None
    try:
        return max(0, int(torch.cuda.max_memory_allocated()) - base)
    except Exception:  # noqa: BLE001
        return None


def _cuda_probe() -> bool:
    """True if the CUDA context still works (a sticky error makes every later call fail) and its
    random generator still draws."""
    import torch

    try:
        torch.cuda.synchronize()
        x = torch.arange(1024, device="cuda", dtype=torch.float32)
        ok = float((x * 2).sum().item()) == 1023.0 * 1024.0
        # The generator too: the next evaluation draws its seeded inputs on this GPU.
        ok = ok and bool(torch.isfinite(torch.randn(8, device="cuda")).all())
        torch.cuda.synchronize()
        return ok
    except BaseException:  # noqa: BLE001
        return False


def end_candidate(state: dict[str, Any], msg: dict[str, Any], progress: Callable[[str], None]) -> dict[str, Any]:
    """Finish the guard (patching / threads left behind) and drop the candidate's state."""
    s: CandidateSession | None = state.pop("candidate", None)
    if s is None:
        return {"status": "ended", "findings": [], "tainted": False}
    try:
        s.guard.finish()
        tainted = bool(s.guard.tainted)
    except BaseException as exc:  # noqa: BLE001 - a broken guard state means the worker is unsafe
        return {"status": "ended", "findings": [], "tainted": True, "error": describe(exc)}
    if s.bench is not None:
        s.bench.close()
        s.bench = None
    # the session's GPU peak, read before the probe allocates: what the evaluation's reservation
    # (`footprint.evaluation_footprint`) had to cover in this worker
    peak = _gpu_peak(s.gpu_base)
    out = s.result(status="ended", tainted=tainted, cuda_ok=_cuda_probe() if s.device.startswith("cuda") else None,
                   gpu_peak_bytes=peak)
    if s.device.startswith("cuda"):
        with contextlib.suppress(Exception):   # a lost context is the probe's finding, not this one's
            set_gpu_limit(None)
    sys.modules.pop(s.module_name, None)
    s.model = None
    s.inputs = []
    s.final_inputs = None
    return out
