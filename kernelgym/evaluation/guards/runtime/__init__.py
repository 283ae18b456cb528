"""Runtime guards: watch the candidate while it runs inside the candidate worker.

One module per mechanism, all installed once per process and enforcing only while a
`RuntimeGuard` is active (`state.STATE` says which one):
- `dispatch`: a TorchDispatchMode that records the aten ops dispatched in ``forward`` (compute vs
  allocation/view/metadata/fill) and poisons fresh allocations so unwritten elements fail;
- `launches`: class-level wrappers of ``JITFunction.run`` and ``InterpretedFunction.run`` that hand
  each launch to the guard, which records it and which tensor storages (`storage`) it wrote;
- `audit`: a ``sys.addaudithook`` hook that denies file, network, process, ctypes, introspection
  and code-generation events whose nearest relevant frame is candidate code, and wrappers that deny
  code generators (torch.compile, torch.jit, triton.compile) and thread starts;
- `snapshots`: identity snapshots of torch / triton / time / builtins / kernelgym attributes
  (patching);
- `guard`: `RuntimeGuard`, which installs them and turns what they saw into findings.

Known limits (an in-process layer; the static layer and the out-of-process comparison are the
other defences): code that escapes both layers and reaches a live `RuntimeGuard` instance could
clear its findings (replacing its class methods is caught, changing instance state is not);
``os._exit`` has no audit event, so it ends as a crash, not ``hack_detected``; lenient mode accepts
a different torch decomposition of the reference plus a trivial Triton write; a launch that writes
bytes identical to what was there looks unwritten (NaN-poisoned fresh allocations cover the usual
case); torch ops on a side stream are not checked op by op (timing synchronises the whole device);
a native thread started and finished between checks without `threading` goes unseen; frames are
attributed to the candidate by code filename.
"""

from __future__ import annotations

from kernelgym.evaluation.guards import Finding
from kernelgym.evaluation.guards.runtime.dispatch import Recorder, classify_op, record_torch_ops
from kernelgym.evaluation.guards.runtime.guard import ForwardRecord, RuntimeGuard
from kernelgym.evaluation.guards.runtime.launches import LaunchRecord
from kernelgym.evaluation.guards.runtime.snapshots import diff, snapshot

# The public classes keep the package as their module: reprs, and the names a patching finding
# reports (``kernelgym.evaluation.guards.runtime.RuntimeGuard.after_forward``), read as before the
# package was split into modules.
for _cls in (ForwardRecord, LaunchRecord, RuntimeGuard):
    _cls.__module__ = __name__
del _cls

# The names the worker-side tests and the red-team runner use.
_Recorder = Recorder
_snapshot = snapshot
_diff = diff

__all__ = ["Finding", "ForwardRecord", "LaunchRecord", "RuntimeGuard", "classify_op", "record_torch_ops"]
