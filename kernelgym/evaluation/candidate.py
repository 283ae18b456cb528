"""The candidate job, run in a CANDIDATE worker: import, construct, load weights, run trials.

Every execution of candidate code happens inside `RuntimeGuard.sandboxed()`. The job never sees
reference outputs; it returns the candidate's outputs (copied right after each forward returns)
and the guard's findings, and the parent decides.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import sys
import types
from typing import Any, Callable

from kernelgym.evaluation.guards.runtime import RuntimeGuard
from kernelgym.evaluation.jobs import (
    crash_kind, describe, finding_dict, is_compile_error, launch_dict, outputs_list, sync, to_device,
)


class _Exited(Exception):
    """Candidate code left a sandboxed block without finishing (SystemExit swallowed by the guard)."""


class CandidateSession:
    """State of one candidate inside a worker, kept between the run, time, final and end requests."""

    def __init__(self, msg: dict[str, Any], tmpdir: str):
        self.device: str = msg["device"]
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
        self.model: Any = None
        self.inputs: list[Any] = []

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

    def forward(self, inputs: list[Any]) -> list[Any]:
        import torch

        def run() -> Any:
            with torch.no_grad(), self.guard.forward_call(inputs, module=self.model) as rec:
                out = self.model(*inputs)
                sync(self.device)
            return rec, out

        rec, out = self.call(run)
        items = list(out) if isinstance(out, (list, tuple)) else [out]
        self.guard.after_forward(rec, [t for t in items if isinstance(t, torch.Tensor)])
        return outputs_list(out)

    def result(self, **kw: Any) -> dict[str, Any]:
        kw.setdefault("outputs", [])
        kw["findings"] = [finding_dict(f) for f in self.guard.findings]
        kw["launches"] = [launch_dict(r) for r in self.guard.launches]
        kw["kernels"] = sorted({r["kernel"] for r in kw["launches"]})
        return kw


def _failure(session: CandidateSession, stage: str, exc: BaseException, outputs: list) -> dict[str, Any]:
    if isinstance(exc, _Exited):
        return session.result(status="crash", stage=stage, error=f"{exc} in {stage}", outputs=outputs)
    msg = describe(exc, session.filename)
    kind = crash_kind(exc)
    if kind is not None:
        return session.result(status="crash", stage=stage, error=f"{kind} in {stage}: {msg}", outputs=outputs,
                              fatal=True)
    if stage == "import" or is_compile_error(exc):
        return session.result(status="compile_error", stage=stage, error=msg, outputs=outputs)
    return session.result(status="runtime_error", stage=stage, error=msg, outputs=outputs)


def run_candidate(state: dict[str, Any], msg: dict[str, Any], progress: Callable[[str], None]) -> dict[str, Any]:
    """Import the candidate, build ModelNew, copy weights, run each trial's inputs."""
    import torch

    s = CandidateSession(msg, state["tmpdir"])
    state["candidate"] = s
    s.guard.install()
    outputs: list[list[Any]] = []
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
            return s.result(status="format_error", stage="import",
                            error="ModelNew is not a class after running the module")
    except BaseException as exc:  # noqa: BLE001 - any failure of candidate code is a verdict
        return _failure(s, "import", exc, outputs)

    progress("construct")
    init_inputs = msg["init_inputs"]
    try:
        inspect.signature(cls).bind(*init_inputs)
    except TypeError as exc:
        return s.result(status="runtime_error", stage="construct",
                        error=f"wrong constructor: ModelNew(*get_init_inputs()) with {len(init_inputs)} "
                              f"argument(s) does not match the signature ModelNew{inspect.signature(cls)}: {exc}")
    except ValueError:
        pass  # no introspectable signature; the call below reports any mismatch
    try:
        s.model = s.call(lambda: cls(*init_inputs))
    except BaseException as exc:  # noqa: BLE001
        return _failure(s, "construct", exc, outputs)
    if not isinstance(s.model, torch.nn.Module):
        return s.result(status="runtime_error", stage="construct",
                        error=f"ModelNew(...) returned {type(s.model).__name__}, not a torch.nn.Module")
    try:
        problem = _load_weights(s, msg["state_dict"])
    except BaseException as exc:  # noqa: BLE001
        return _failure(s, "construct", exc, outputs)
    if problem:
        return s.result(status="incorrect", stage="construct", error=problem, reasons=["check:state_dict_mismatch"])
    try:
        s.call(lambda: s.model.to(s.device))
    except BaseException as exc:  # noqa: BLE001
        return _failure(s, "construct", exc, outputs)

    s.inputs = [to_device(inp, s.device) for inp in msg["trials"]]
    for t, inputs in enumerate(s.inputs):
        progress(f"trial {t}")
        try:
            outputs.append(s.forward(list(inputs)))
        except BaseException as exc:  # noqa: BLE001
            return _failure(s, f"forward (trial {t})", exc, outputs)
    return s.result(status="ran", stage="forward", outputs=outputs)


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
    """Time the candidate's forward over its trial inputs (GPU only; after correctness)."""
    import torch

    from kernelgym.evaluation.timing import bench

    s: CandidateSession = state["candidate"]
    progress("timing")

    def fn(inputs: list[Any]) -> Any:
        with torch.no_grad():
            return s.model(*inputs)

    try:
        stats = s.call(lambda: bench(fn, [list(x) for x in s.inputs], **msg.get("bench", {})))
    except BaseException as exc:  # noqa: BLE001
        return _failure(s, "timing", exc, [])
    return s.result(status="timed", stats=stats)


def final_trial(state: dict[str, Any], msg: dict[str, Any], progress: Callable[[str], None]) -> dict[str, Any]:
    """One more forward on fresh inputs after timing (catches caching across timed runs)."""
    s: CandidateSession = state["candidate"]
    progress("final trial")
    try:
        outputs = [s.forward(list(to_device(msg["inputs"], s.device)))]
    except BaseException as exc:  # noqa: BLE001
        return _failure(s, "forward (final trial)", exc, [])
    return s.result(status="ran", outputs=outputs)


def _cuda_probe() -> bool:
    """True if the CUDA context still works (a sticky error makes every later call fail)."""
    import torch

    try:
        torch.cuda.synchronize()
        x = torch.arange(1024, device="cuda", dtype=torch.float32)
        ok = float((x * 2).sum().item()) == 1023.0 * 1024.0
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
    out = s.result(status="ended", tainted=tainted, cuda_ok=_cuda_probe() if s.device.startswith("cuda") else None)
    sys.modules.pop(s.module_name, None)
    s.model = None
    s.inputs = []
    return out
