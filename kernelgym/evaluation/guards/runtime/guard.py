"""`RuntimeGuard`: the runtime checks of one candidate evaluation in a candidate worker.

The guard ties the mechanisms together: `install` wraps launches (`launches`) and code generators
(`audit`), arms the audit hook and takes the patching snapshot (`snapshots`); `sandboxed` enforces
the audit policy on candidate frames; `forward_call` records one forward's ops (`dispatch`) and
launches, and `after_forward` turns what they did into findings; `finish` ends the evaluation.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import _disable_current_modes

from kernelgym.evaluation.guards import Finding
from kernelgym.evaluation.guards.runtime import lazy_dynamo
from kernelgym.evaluation.guards.runtime.audit import GEN_MODULES, install_audit_hook, wrap_calls
from kernelgym.evaluation.guards.runtime.dispatch import Recorder, family, format_ops
from kernelgym.evaluation.guards.runtime.launches import LaunchRecord, describe, wrap_launches
from kernelgym.evaluation.guards.runtime.snapshots import Owned, report_patching, snapshot
from kernelgym.evaluation.guards.runtime.state import STATE
from kernelgym.evaluation.guards.runtime.storage import (
    bytes_changed,
    probe_changed,
    storage_bytes,
    storage_key,
    tensors,
    write_probe,
)
from kernelgym.evaluation.jobs import read_scalars


@dataclass
class ForwardRecord:
    """What one forward call did: compute ops, launches, storages written, input snapshots."""

    ops: collections.Counter = field(default_factory=collections.Counter)
    launch_ops: collections.Counter = field(default_factory=collections.Counter)
    launches: list[LaunchRecord] = field(default_factory=list)
    written: set = field(default_factory=set)           # storage keys some launch changed
    passed: set = field(default_factory=set)            # storage keys passed to some launch
    input_keys: set = field(default_factory=set)
    snapshots: list[tuple[str, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    side_stream: list[str] = field(default_factory=list)
    # (storage key, 0-dim bool tensor: did the launch change it), resolved in after_forward with one
    # transfer: a host read per launched tensor is a device sync, and syncs are slow on a busy GPU.
    pending_writes: list[tuple[tuple, torch.Tensor]] = field(default_factory=list)


def _native_tids() -> set[int]:
    try:
        return {int(x) for x in os.listdir("/proc/self/task")}
    except OSError:
        return set()


class RuntimeGuard:
    """Runtime checks for one candidate evaluation in a candidate worker (see module docstring).

    `reference_aliases_input`: the reference's output shares storage with an input (e.g. a view),
    so the candidate may return an alias too.
    """

    def __init__(self, mode: str, reference_ops: collections.Counter[str] | None, candidate_filename: str,
                 device: str, reference_aliases_input: bool = False):
        if mode not in ("strict", "lenient"):
            raise ValueError(f"mode must be 'strict' or 'lenient', got {mode!r}")
        self.mode = mode
        self.reference_ops = collections.Counter(reference_ops) if reference_ops else None
        self.candidate_filename = candidate_filename
        self.device = str(device)
        self.reference_aliases_input = reference_aliases_input
        self._findings: list[Finding] = []
        self._keys: set[tuple[str, str]] = set()
        self._launches: dict[tuple, LaunchRecord] = {}
        self._fwd: ForwardRecord | None = None
        self._recorder: Recorder | None = None
        self._prev_outputs: list[torch.Tensor] = []   # kept alive so their storage cannot be recycled
        self._snap: dict[str, Owned] = {}
        self._threads: set[threading.Thread] = set()
        self._modules: set[str] = set()
        self._tainted = False
        self._installed = False
        # The one CUDA stream launches may use (the worker's evaluation stream; None: the default
        # stream), and a context manager to run a first-time JIT compile in (outside the GPU lock).
        self.stream: int | None = None
        self.compile_section: Callable[[], Any] | None = None
        self._warmed: set[tuple] = set()

    # -- bookkeeping
    def _add(self, f: Finding) -> None:
        key = (f.name, f.detail)
        if key not in self._keys:
            self._keys.add(key)
            self._findings.append(f)

    @property
    def findings(self) -> list[Finding]:
        return list(self._findings)

    @property
    def launches(self) -> list[LaunchRecord]:
        return list(self._launches.values())

    @property
    def tainted(self) -> bool:
        return self._tainted or bool(self._findings)

    # -- lifecycle
    def install(self) -> None:
        """Wrap launches and code generators, arm the audit hook, snapshot what must not change."""
        import triton

        try:
            import triton.runtime.interpreter  # noqa: F401
        except ImportError:
            pass
        # A worker started without torch._dynamo (`protocol.LAZY_DYNAMO_ENV`): torch may still
        # import it from its own functions during the run; that import is not the candidate's.
        lazy_dynamo.watch()
        # The first dispatch of a mode does one-time work; not in the candidate's first forward.
        with Recorder():
            torch.ones(1).add_(1)
        # Start torch's intra-op pool now so that its threads are not taken for the candidate's.
        torch.ones(1 << 17).add_(1)
        wrap_launches()
        wrap_calls()
        install_audit_hook()
        STATE.active = self
        self._snap = snapshot()
        self._threads = set(threading.enumerate())
        self._modules = set(sys.modules)
        self._installed = True

    @contextlib.contextmanager
    def sandboxed(self, *, check: Callable[[RuntimeGuard], None] | None = None) -> Iterator[None]:
        """Enforce the audit policy on candidate frames; SystemExit becomes Finding('early_exit')."""
        prev = STATE.enforce
        STATE.enforce = self
        threads = set(threading.enumerate())
        tids = _native_tids()
        try:
            yield
        except SystemExit as exc:
            self._add(Finding("early_exit", f"SystemExit({exc.code!r}) raised by candidate code"))
        finally:
            STATE.enforce = prev
            self._check_threads(threads, tids)
            self._check_modules()
            # Checked here, in a frame created before the candidate ran, so that patching the
            # guard's methods cannot skip the check that reports it.
            (check or report_patching)(self)

    def _check_threads(self, threads: set[threading.Thread], tids: set[int]) -> None:
        extra = [t for t in threading.enumerate() if t not in threads and t.is_alive()]
        if extra:
            self._add(Finding("thread_started", "Python thread(s) left running: " + ", ".join(t.name for t in extra)))
        new_tids = _native_tids() - tids
        if new_tids and not extra:
            names = []
            for tid in sorted(new_tids):
                try:
                    with open(f"/proc/self/task/{tid}/comm", encoding="utf-8") as fh:
                        names.append(fh.read().strip())
                except OSError:
                    continue
            # CUDA driver helper threads appear on first device use; they are not the candidate's.
            names = [n for n in names if not n.startswith(("cuda", "nvidia", "pt_", "triton"))]
            if names:
                self._add(Finding("thread_started", f"{len(names)} native thread(s) left running: {', '.join(names)}"))

    def _check_modules(self) -> None:
        new = [m for m in set(sys.modules) - self._modules - lazy_dynamo.loaded() if m.startswith(GEN_MODULES)]
        if new:
            self._add(Finding("code_generation", "code generator loaded during the candidate's run: "
                              + ", ".join(sorted(new)[:5])))
        self._modules = set(sys.modules)

    @contextlib.contextmanager
    def forward_call(self, inputs: Sequence[Any], module: torch.nn.Module | None = None) -> Iterator[ForwardRecord]:
        """One forward call: record ops and launches, poison fresh allocations, snapshot inputs
        (and `module`'s parameters and buffers, when given) to detect mutation."""
        rec = ForwardRecord()
        with _disable_current_modes(), torch.no_grad():
            for i, t in enumerate(inputs):
                for j, x in enumerate(tensors(t)):
                    key = storage_key(x)
                    if key is not None:
                        rec.input_keys.add(key)
                        rec.snapshots.append((f"input {i}" + (f"[{j}]" if j else ""), x, storage_bytes(x).clone()))
            if module is not None:
                for name, p in [*module.named_parameters(), *module.named_buffers()]:
                    key = storage_key(p)
                    if key is not None:
                        rec.input_keys.add(key)
                        rec.snapshots.append((f"parameter {name}", p, storage_bytes(p).clone()))
        recorder = Recorder(poison=True)
        self._fwd, self._recorder = rec, recorder
        try:
            with recorder:
                yield rec
        finally:
            self._fwd, self._recorder = None, None
            rec.ops.update(recorder.ops)
            rec.launch_ops.update(recorder.launch_ops)

    def _launch(self, orig: Callable[..., Any], kfn: Any, args: tuple, grid: Any, kwargs: dict) -> Any:
        """Record one launch (and, inside forward, which storages it wrote), then run it."""
        rec, recorder = self._fwd, self._recorder
        lr, launch_grid, launched = describe(kfn, args, grid, kwargs)
        cuda = [t for t in launched if t.is_cuda]
        if cuda:
            dev = cuda[0].device
            lr.stream = int(torch.cuda.current_stream(dev).cuda_stream)
            if lr.stream != self._allowed_stream(dev):
                self._add(Finding("side_stream", f"kernel {lr.kernel} launched on stream {lr.stream:#x}, not the "
                                  "evaluation stream"))
        key = lr.key
        self._launches.setdefault(key, lr)

        if cuda and self.compile_section is not None and key not in self._warmed:
            # First launch of this specialisation: compile it (host work) outside the GPU lock.
            self._warmed.add(key)
            with self.compile_section():
                orig(kfn, *args, grid=launch_grid, warmup=True, **kwargs)

        before: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        if rec is not None:
            rec.launches.append(lr)
            with _disable_current_modes():
                for t in launched:
                    k = storage_key(t)
                    if k is not None and k not in before:
                        before[k] = (t, write_probe(storage_bytes(t)))
                        rec.passed.add(k)
        if recorder is not None:
            recorder.in_launch += 1
        try:
            result = orig(kfn, *args, grid=launch_grid, warmup=False, **kwargs)
        finally:
            if recorder is not None:
                recorder.in_launch -= 1
        if rec is not None:
            with _disable_current_modes():
                for k, (t, old) in before.items():
                    # queued right behind the launch on this stream; read in after_forward
                    rec.pending_writes.append((k, probe_changed(storage_bytes(t), old)))
        return result

    def _allowed_stream(self, dev: torch.device) -> int:
        return self.stream if self.stream is not None else int(torch.cuda.default_stream(dev).cuda_stream)

    def after_forward(self, record: ForwardRecord, outputs: Sequence[torch.Tensor] | torch.Tensor) -> None:
        """Checks right after forward returned: a launch ran and wrote the outputs, outputs neither
        alias inputs nor reuse earlier outputs, inputs unchanged, no torch compute (strict) or not
        all of the reference's (lenient), the evaluation stream still current, nothing patched."""
        outs = [outputs] if isinstance(outputs, torch.Tensor) else [o for o in outputs if isinstance(o, torch.Tensor)]
        with _disable_current_modes():
            mutated = [bytes_changed(storage_bytes(t), old) for _, t, old in record.snapshots]
            flags = [bool(v) for v in read_scalars([f for _, f in record.pending_writes] + mutated)]
        record.written.update(k for (k, _), changed in zip(record.pending_writes, flags) if changed)
        record.pending_writes.clear()
        if not record.launches:
            self._add(Finding("no_triton_launch", "forward launched no Triton kernel"))
        elif not record.written:
            self._add(Finding("output_not_from_triton", "no Triton launch wrote any tensor"))
        prev_keys = {storage_key(p) for p in self._prev_outputs} - {None}
        for i, o in enumerate(outs):
            key = storage_key(o)
            if key is None:
                continue
            if record.launches and self.mode == "strict" and key not in record.written:
                how = "was passed to a launch but not changed by it" if key in record.passed else "was not written by any Triton launch"
                self._add(Finding("output_not_from_triton", f"output {i} {how}"))
            if key in record.input_keys and not self.reference_aliases_input:
                self._add(Finding("output_aliases_input", f"output {i} shares storage with an input or parameter"))
            if key in prev_keys or any(o is p for p in self._prev_outputs):
                self._add(Finding("output_reused", f"output {i} reuses the storage of an earlier call's output"))
        for (what, _, _), changed in zip(record.snapshots, flags[len(flags) - len(mutated):]):
            if changed:
                self._add(Finding("input_mutated", f"{what} was modified by forward"))
        record.snapshots.clear()  # free the copies
        self._prev_outputs.extend(outs)
        if record.launch_ops:
            self._add(Finding("torch_compute", "torch ops ran inside a Triton launch: " + format_ops(record.launch_ops)))
        compute = collections.Counter(record.ops)
        if self.mode == "strict" and compute:
            self._add(Finding("torch_compute", "torch compute in forward (strict mode): " + format_ops(compute)))
        elif self.mode == "lenient" and self.reference_ops:
            fam_ref = collections.Counter()
            for op, n in self.reference_ops.items():
                fam_ref[family(op)] += n
            fam_cand = collections.Counter()
            for op, n in compute.items():
                fam_cand[family(op)] += n
            if all(fam_cand[k] >= n for k, n in fam_ref.items()):
                self._add(Finding("reference_ops_in_torch",
                                  "every compute op of the reference still runs in torch: " + format_ops(self.reference_ops)))
        if record.side_stream:
            self._add(Finding("side_stream", "; ".join(record.side_stream)))
        if torch.cuda.is_available() and self.device.startswith("cuda"):
            dev = torch.device(self.device)
            if torch.cuda.current_stream(dev).cuda_stream != self._allowed_stream(dev):
                self._add(Finding("side_stream", "forward returned with another current stream than the "
                                  "evaluation stream"))
        self._check_patching()

    def _check_patching(self) -> None:
        report_patching(self)

    def finish(self) -> None:
        """End of the evaluation: patching, threads left alive; stops recording launches."""
        self._check_patching()
        extra = [t for t in threading.enumerate() if t not in self._threads and t.is_alive()]
        if extra:
            self._add(Finding("thread_started", "thread(s) alive at the end: " + ", ".join(t.name for t in extra)))
        if STATE.active is self:
            STATE.active = None
        self._prev_outputs.clear()
