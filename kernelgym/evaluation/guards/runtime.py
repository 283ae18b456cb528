"""Runtime guards: watch the candidate while it runs inside the candidate worker.

Pieces (all installed once per process, enforcing only while a `RuntimeGuard` is active):
- a TorchDispatchMode that records the aten ops dispatched in ``forward`` (compute vs
  allocation/view/metadata/fill) and poisons fresh allocations so unwritten elements fail;
- class-level wrappers of ``JITFunction.run`` and ``InterpretedFunction.run`` (compiled launches and
  the interpreter alike; Triton's ``knobs.runtime.launch_enter_hook`` does not fire under the
  interpreter) that record each launch and which tensor storages it actually wrote;
- a ``sys.addaudithook`` hook that denies file, network, process, ctypes, introspection and
  code-generation events whose nearest relevant frame is candidate code;
- wrappers of code generators (torch.compile, torch.jit, triton.compile) and thread starts;
- identity snapshots of torch / triton / time / builtins / kernelgym attributes (patching).

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

import builtins
import collections
import contextlib
import inspect
import math
import operator
import os
import sys
import sysconfig
import threading
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from kernelgym.evaluation.guards import Finding
from kernelgym.evaluation.guards import static as _static
from kernelgym.evaluation.jobs import read_scalars

__all__ = ["Finding", "ForwardRecord", "LaunchRecord", "RuntimeGuard", "classify_op", "record_torch_ops"]

# ----------------------------------------------------------------------------- op classification

_ALLOC = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "empty_permuted",
          "resize_", "resize", "set_"}
_FILL = {"zeros", "zeros_like", "ones", "ones_like", "full", "full_like", "new_zeros", "new_ones", "new_full",
         "fill_", "fill", "zero_", "scalar_tensor", "lift_fresh", "lift_fresh_copy", "arange", "linspace"}
_VIEW = {"view", "_unsafe_view", "_reshape_alias", "reshape", "as_strided", "t", "transpose", "permute",
         "expand", "squeeze", "unsqueeze", "slice", "select", "split", "split_with_sizes", "chunk", "narrow",
         "alias", "detach", "unbind", "diagonal", "view_as_real", "view_as_complex", "unfold", "movedim",
         "t_", "transpose_", "squeeze_", "unsqueeze_", "as_strided_", "_unsafe_split", "unsafe_split",
         "numpy_T", "_conj", "_neg_view", "lift"}
_META = {"_local_scalar_dense", "is_same_size", "sym_size", "sym_stride", "sym_numel", "sym_storage_offset",
         "size", "stride", "dim", "is_contiguous", "_has_compatible_shallow_copy_type", "record_stream",
         "is_pinned", "_nested_tensor_size"}

# Ops whose result is equivalent for the lenient containment check (a candidate that swaps
# torch.mm for torch.bmm has still done the matmul in torch).
_FAMILY = {
    "mm": "matmul", "bmm": "matmul", "addmm": "matmul", "baddbmm": "matmul", "addbmm": "matmul",
    "matmul": "matmul", "linear": "matmul", "einsum": "matmul", "dot": "matmul", "mv": "matmul",
    "addmv": "matmul", "_mm_plus_mm": "matmul", "tensordot": "matmul",
    "convolution": "conv", "_convolution": "conv", "conv2d": "conv", "conv1d": "conv", "conv3d": "conv",
    "sum": "reduce_sum", "mean": "reduce_sum", "amax": "reduce_max", "max": "reduce_max",
    "_softmax": "softmax", "softmax": "softmax", "_log_softmax": "log_softmax",
}


def classify_op(func: Any) -> str:
    """'alloc', 'fill', 'view', 'meta' or 'compute' for an aten OpOverload (copies are compute)."""
    name = func.overloadpacket.__name__ if hasattr(func, "overloadpacket") else str(func)
    if name in _ALLOC:
        return "alloc"
    if name in _FILL:
        return "fill"
    if name in _VIEW:
        return "view"
    if name in _META:
        return "meta"
    return "compute"


def _family(op: str) -> str:
    parts = op.split(".")
    base = parts[1] if len(parts) > 1 and parts[0] == "aten" else parts[0]
    return _FAMILY.get(base, base)


def _poison(t: torch.Tensor) -> None:
    if t.numel() == 0:
        return
    if t.is_floating_point() or t.is_complex():
        t.fill_(math.nan)
    elif t.dtype == torch.bool:
        t.fill_(True)
    else:
        t.fill_(torch.iinfo(t.dtype).min if t.dtype.is_signed else torch.iinfo(t.dtype).max)


class _Recorder(TorchDispatchMode):
    """Counts compute ops; optionally poisons fresh allocations; ops during a launch go apart."""

    def __init__(self, poison: bool = False):
        super().__init__()
        self.poison = poison
        self.ops: collections.Counter[str] = collections.Counter()
        self.launch_ops: collections.Counter[str] = collections.Counter()
        self.in_launch = 0
        self.paused = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.paused:
            return out
        kind = classify_op(func)
        if self.in_launch:
            # The interpreter copies kernel arguments host<->device with copy_; anything else that
            # computes inside a launch is torch hidden in the kernel body.
            if kind == "compute" and func.overloadpacket.__name__ != "copy_":
                self.launch_ops[str(func)] += 1
            return out
        if kind == "compute":
            self.ops[str(func)] += 1
        elif kind == "alloc" and self.poison and isinstance(out, torch.Tensor) and func.overloadpacket.__name__ != "set_":
            _poison(out)
        return out


def record_torch_ops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, collections.Counter[str]]:
    """Run fn under a TorchDispatchMode; return its result and the multiset of *compute* aten ops
    (allocation/view/metadata/fill ops excluded). Used on the reference for lenient mode."""
    rec = _Recorder(poison=False)
    with rec:
        out = fn(*args, **kwargs)
    return out, collections.Counter(rec.ops)


# ----------------------------------------------------------------------------- launches

@dataclass
class LaunchRecord:
    """One Triton launch (unique per kernel and specialisation in `RuntimeGuard.launches`)."""

    kernel: str
    signature: dict[str, str]
    constexprs: dict[str, Any]
    grid: tuple[int, ...]
    num_warps: int | None = None
    num_stages: int | None = None
    stream: int | None = None


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


_DTYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
          torch.int32: "i32", torch.int64: "i64", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8",
          torch.bool: "i1"}
for _n, _s in (("float8_e4m3fn", "fp8e4nv"), ("float8_e5m2", "fp8e5")):
    if hasattr(torch, _n):
        _DTYPE[getattr(torch, _n)] = _s

_LAUNCH_OPTIONS = {"num_warps", "num_stages", "num_ctas", "maxnreg", "enable_fp_fusion", "launch_cooperative_grid",
                   "debug", "extern_libs", "launch_pdl", "instrumentation_mode", "fpsan_homomorphic_casts"}


def _changed(now: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """A 0-dim bool tensor on the tensors' device: do two byte views differ (no host sync)."""
    if now.shape != old.shape:
        return torch.ones((), dtype=torch.bool, device=now.device)
    return torch.ne(now, old).any()


def _storage_key(t: torch.Tensor) -> tuple | None:
    try:
        st = t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    if st.nbytes() == 0:
        return None
    return (t.device.type, t.device.index, st.data_ptr())


def _storage_bytes(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8, device=t.device).set_(t.untyped_storage())


def _type_str(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        return "*" + _DTYPE.get(v.dtype, str(v.dtype).replace("torch.", ""))
    if isinstance(v, bool):
        return "i1"
    if isinstance(v, int):
        return "i32" if -(2**31) <= v < 2**31 else "i64"
    if isinstance(v, float):
        return "fp32"
    if v is None:
        return "constexpr"
    return type(v).__name__


def _plain(v: Any) -> Any:
    if isinstance(v, (int, float, bool, str, type(None))):
        return v
    inner = getattr(v, "value", None)  # tl.constexpr
    if isinstance(inner, (int, float, bool, str, type(None))):
        return inner
    return repr(v)


def _tensors(v: Any) -> Iterator[torch.Tensor]:
    if isinstance(v, torch.Tensor):
        yield v
    elif isinstance(v, (tuple, list)):
        for x in v:
            yield from _tensors(x)
    elif hasattr(v, "base") and isinstance(v.base, torch.Tensor):  # TensorDescriptor
        yield v.base


_SIG_CACHE: dict[int, tuple[Any, inspect.Signature, frozenset]] = {}


def _kernel_info(kfn: Any) -> tuple[inspect.Signature, frozenset]:
    fn = getattr(kfn, "fn", kfn)
    hit = _SIG_CACHE.get(id(fn))
    if hit is not None and hit[0] is fn:
        return hit[1], hit[2]
    sig = inspect.signature(fn)
    params = getattr(kfn, "params", None)
    if params is not None:
        consts = frozenset(p.name for p in params if getattr(p, "is_constexpr", False))
    else:
        consts = frozenset(n for n, p in sig.parameters.items() if "constexpr" in str(p.annotation))
    _SIG_CACHE[id(fn)] = (fn, sig, consts)
    return sig, consts


def _make_run(orig: Callable[..., Any]) -> Callable[..., Any]:
    def run(self: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> Any:
        guard = _ACTIVE
        if guard is None or warmup:
            return orig(self, *args, grid=grid, warmup=warmup, **kwargs)
        return guard._launch(orig, self, args, grid, kwargs)

    run.__kernelgym_wrapped__ = orig  # type: ignore[attr-defined]
    run.__name__ = "run"
    return run


def _launch_classes() -> list[type]:
    from triton.runtime import jit

    classes: list[type] = [jit.JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction

        classes.append(InterpretedFunction)
    except ImportError:  # a Triton without the interpreter
        pass
    return classes


def _wrap_launches() -> None:
    for cls in _launch_classes():
        if not hasattr(cls.__dict__.get("run"), "__kernelgym_wrapped__"):
            cls.run = _make_run(cls.__dict__["run"])


# ----------------------------------------------------------------------------- audit hook

_ACTIVE: RuntimeGuard | None = None       # the guard recording launches (install .. finish)
_ENFORCE: RuntimeGuard | None = None      # the guard enforcing (inside sandboxed())
_TLS = threading.local()
_HOOKED = False
_THIS_FILE = os.path.abspath(__file__)
_STDLIB = tuple({os.path.abspath(sysconfig.get_paths()[k]) + os.sep for k in ("stdlib", "platstdlib")})
_INTROSPECTION_HELPERS = ("inspect.py", "traceback.py", "linecache.py")


def _is_stdlib(filename: str) -> bool:
    if filename.startswith("<frozen"):
        return True
    return filename.startswith(_STDLIB) and "-packages" not in filename


def _candidate_frame(frame: types.FrameType | None, candidate: str, skip_stdlib: bool,
                     import_event: bool = False) -> types.FrameType | None:
    """The candidate frame responsible for an event, or None when library code is.

    Walk outwards from the frame that triggered the event, skipping standard-library frames (when
    `skip_stdlib`) or only introspection helpers; the first remaining frame decides. An event raised
    by the import machinery is the import's business (the "import" event checks the module).
    """
    while frame is not None:
        fname = frame.f_code.co_filename
        if fname == candidate:
            return frame
        if fname.startswith("<frozen importlib") and not import_event:
            return None
        if skip_stdlib and _is_stdlib(fname):
            frame = frame.f_back
            continue
        if not skip_stdlib and fname.endswith(_INTROSPECTION_HELPERS) and _is_stdlib(fname):
            frame = frame.f_back
            continue
        return None
    return None


_EVENTS = {
    "open": "file_access", "os.listdir": "file_access", "os.scandir": "file_access", "os.chdir": "file_access",
    "os.mkdir": "file_access", "os.remove": "file_access", "os.rename": "file_access", "os.rmdir": "file_access",
    "os.truncate": "file_access", "os.chmod": "file_access", "os.chown": "file_access", "os.link": "file_access",
    "os.symlink": "file_access", "os.utime": "file_access", "shutil.copyfile": "file_access",
    "shutil.rmtree": "file_access", "shutil.move": "file_access", "mmap.__new__": "file_access",
    "glob.glob": "file_access", "tempfile.mkstemp": "file_access", "tempfile.mkdtemp": "file_access",
    "os.system": "subprocess", "os.exec": "subprocess", "os.posix_spawn": "subprocess", "os.spawn": "subprocess",
    "subprocess.Popen": "subprocess", "pty.spawn": "subprocess", "os.startfile": "subprocess",
    "os.fork": "process_started", "os.forkpty": "process_started", "os.kill": "forbidden_call",
    "os.killpg": "forbidden_call", "os.putenv": "forbidden_call", "os.unsetenv": "forbidden_call",
    "signal.pthread_kill": "forbidden_call", "resource.setrlimit": "forbidden_call",
    "sys.addaudithook": "patching", "sys.settrace": "introspection", "sys.setprofile": "introspection",
    "gc.get_objects": "introspection", "gc.get_referrers": "introspection", "gc.get_referents": "introspection",
    "sys._getframe": "introspection", "sys._current_frames": "introspection",
    "sys._current_exceptions": "introspection", "object.__getattr__": "introspection",
    "function.__new__": "code_generation", "code.__new__": "code_generation", "compile": "code_generation",
    "exec": "code_generation", "builtins.input": "forbidden_call", "builtins.breakpoint": "forbidden_call",
    "_thread.start_new_thread": "thread_started", "urllib.Request": "network", "http.client.connect": "network",
    "ftplib.connect": "network", "smtplib.connect": "network", "webbrowser.open": "network",
}
# Events raised by the C function the candidate called: only the immediate caller counts.
_DIRECT = {"sys._getframe", "sys._current_frames", "sys._current_exceptions", "object.__getattr__",
           "gc.get_objects", "gc.get_referrers", "gc.get_referents", "compile", "exec", "code.__new__",
           "function.__new__", "object.__setattr__", "object.__delattr__"}
_PROTECTED_ROOTS = {"torch", "triton", "kernelgym", "builtins", "time", "math", "sys", "os", "functools",
                    "threading", "gc", "inspect", "numpy", "importlib", "types"}


def _classify_event(event: str, args: tuple) -> tuple[str, str] | None:
    name = _EVENTS.get(event)
    if name is not None:
        what = args[0] if args and isinstance(args[0], (str, bytes, int)) else ""
        if event == "object.__getattr__" and len(args) > 1:
            what = f"{type(args[0]).__name__}.{args[1]}"
        return name, f"{event}({what!r}) from candidate code" if what != "" else f"{event} from candidate code"
    if event.startswith("socket."):
        return "network", f"{event} from candidate code"
    if event.startswith("ctypes."):
        return "forbidden_call", f"{event} from candidate code"
    if event.startswith(("os.", "shutil.", "sqlite3.")) and event not in ("os.getenv",):
        return "file_access", f"{event} from candidate code"
    if event in ("object.__setattr__", "object.__delattr__") and args:
        target = args[0]
        mod = getattr(target, "__module__", None) or getattr(target, "__name__", "") or ""
        if isinstance(target, types.ModuleType):
            mod = target.__name__
        if str(mod).split(".")[0] in _PROTECTED_ROOTS:
            attr = args[1] if len(args) > 1 else "?"
            return "patching", f"{event} on {mod}.{getattr(target, '__qualname__', '')}.{attr}"
        return None
    if event == "import" and args:
        module = str(args[0])
        if not _static._allowed(module):
            return _static._category(module), f"import of {module!r} at runtime"
    return None


def _audit(event: str, args: tuple) -> None:
    guard = _ENFORCE
    if guard is None or getattr(_TLS, "busy", False):
        return
    if (event not in _EVENTS and event not in ("import", "object.__setattr__", "object.__delattr__")
            and not event.startswith(("socket.", "ctypes.", "os.", "shutil.", "sqlite3."))):
        return
    _TLS.busy = True
    try:
        frame = sys._getframe(1)
        cand = _candidate_frame(frame, guard.candidate_filename, skip_stdlib=event not in _DIRECT,
                                import_event=event == "import")
        if cand is None:
            return
        found = _classify_event(event, args)
        if found is None:
            return
        guard._add(Finding(found[0], found[1], cand.f_lineno))
    finally:
        _TLS.busy = False
    raise PermissionError(f"kernelgym sandbox: {event} is not allowed in candidate code")


def _install_audit_hook() -> None:
    global _HOOKED
    if not _HOOKED:
        sys.addaudithook(_audit)  # cannot be removed; inert unless a guard is enforcing
        _HOOKED = True


# ----------------------------------------------------------------------------- generator / thread wrappers

_WRAPPED_CALLS = False


def _deny_wrapper(orig: Callable[..., Any], name: str, label: str) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        guard = _ENFORCE
        if guard is not None:
            cand = _candidate_frame(sys._getframe(1), guard.candidate_filename, skip_stdlib=True)
            if cand is not None:
                guard._add(Finding(name, f"{label} called by candidate code", cand.f_lineno))
                raise PermissionError(f"kernelgym sandbox: {label} is not allowed in candidate code")
        return orig(*args, **kwargs)

    wrapper.__kernelgym_wrapped__ = orig  # type: ignore[attr-defined]
    wrapper.__name__ = getattr(orig, "__name__", label)
    wrapper.__doc__ = getattr(orig, "__doc__", None)
    return wrapper


def _wrap_calls() -> None:
    """Wrap code generators and thread starts so that candidate calls are denied (once)."""
    global _WRAPPED_CALLS
    if _WRAPPED_CALLS:
        return
    _WRAPPED_CALLS = True
    import _thread

    import triton

    targets: list[tuple[Any, str, str, str]] = [
        (torch, "compile", "code_generation", "torch.compile"),
        (torch.jit, "script", "code_generation", "torch.jit.script"),
        (torch.jit, "trace", "code_generation", "torch.jit.trace"),
        (triton, "compile", "code_generation", "triton.compile"),
        (threading.Thread, "start", "thread_started", "threading.Thread.start"),
        (_thread, "start_new_thread", "thread_started", "_thread.start_new_thread"),
        (_thread, "start_new", "thread_started", "_thread.start_new"),
    ]
    # Asking whether a CUDA graph is being captured tells a forward it is being timed.
    targets += [(torch.cuda, "is_current_stream_capturing", "timing_probe", "torch.cuda.is_current_stream_capturing"),
                (torch._C, "_cuda_isCurrentStreamCapturing", "timing_probe", "torch._C._cuda_isCurrentStreamCapturing")]
    graphs = sys.modules.get("torch.cuda.graphs")
    if graphs is not None:
        targets.append((graphs, "is_current_stream_capturing", "timing_probe",
                        "torch.cuda.graphs.is_current_stream_capturing"))
    dyn = sys.modules.get("torch._dynamo")
    if dyn is not None:
        targets.append((dyn, "optimize", "code_generation", "torch._dynamo.optimize"))
    for owner, attr, name, label in targets:
        orig = getattr(owner, attr, None)
        if orig is not None and not hasattr(orig, "__kernelgym_wrapped__"):
            setattr(owner, attr, _deny_wrapper(orig, name, label))


# ----------------------------------------------------------------------------- patching snapshot

_MISSING = object()
_GEN_MODULES = ("torch._dynamo", "torch._inductor", "torch.utils.cpp_extension", "torch.export", "torch.fx.experimental")


def _watched_owners() -> list[tuple[str, Any]]:
    import time

    import triton
    import triton.language as tl
    from triton.runtime import jit

    owners: list[tuple[str, Any]] = [
        ("torch", torch), ("torch.nn.functional", torch.nn.functional), ("torch.nn", torch.nn),
        ("torch.Tensor", torch.Tensor), ("torch.nn.Module", torch.nn.Module), ("torch.cuda", torch.cuda),
        ("torch.cuda.Event", torch.cuda.Event), ("triton", triton), ("triton.language", tl),
        ("triton.runtime.jit", jit), ("JITFunction", jit.JITFunction), ("KernelInterface", jit.KernelInterface),
        ("time", time), ("builtins", builtins), ("math", math), ("sys", sys), ("os", os), ("threading", threading),
        ("threading.Thread", threading.Thread),
    ]
    interp = sys.modules.get("triton.runtime.interpreter")
    if interp is not None:
        owners += [("triton.runtime.interpreter", interp), ("InterpretedFunction", interp.InterpretedFunction),
                   ("GridExecutor", interp.GridExecutor)]
    for name, mod in list(sys.modules.items()):
        if (name == "kernelgym" or name.startswith("kernelgym.")) and mod is not None:
            owners.append((name, mod))
            # The evaluator's own classes (RuntimeGuard.after_forward = ... would silence it).
            for attr, v in list(vars(mod).items()):
                if isinstance(v, type) and getattr(v, "__module__", None) == name:
                    owners.append((f"{name}.{attr}", v))
    return owners


_WATCHED_TYPES = (types.ModuleType, property, classmethod, staticmethod)


def _watchable(v: Any) -> bool:
    return callable(v) or isinstance(v, _WATCHED_TYPES)


class _Owned(NamedTuple):
    """One watched owner at snapshot time: its watched attributes (as a dict, and as parallel key
    and value tuples for the fast comparison) and every attribute name it had."""

    owner: Any
    before: dict[str, Any]
    keys: tuple[str, ...]
    values: tuple[Any, ...]
    known: frozenset[str]


def _snapshot() -> dict[str, _Owned]:
    snap: dict[str, _Owned] = {}
    for name, owner in _watched_owners():
        try:
            items = dict(vars(owner))
        except TypeError:
            continue
        before = {k: v for k, v in items.items() if callable(v) or isinstance(v, _WATCHED_TYPES)}
        snap[name] = _Owned(owner, before, tuple(before), tuple(before.values()), frozenset(items))
    return snap


def _diff(snap: dict[str, _Owned], vars: Callable[[Any], Any] = vars, any: Callable[..., bool] = any,
          map: type = map, is_not: Callable[[Any, Any], bool] = operator.is_not) -> list[str]:
    """Watched attributes replaced, deleted or added since the snapshot. Runs after every
    sandboxed block, so the common case (nothing changed) compares identities in C (`map`, `any`)
    rather than attribute by attribute in Python; the builtins it uses are bound at import."""
    changed: list[str] = []
    for name, o in snap.items():
        now = vars(o.owner)
        if any(map(is_not, map(now.get, o.keys), o.values)):
            changed += [f"{name}.{k}" for k, v in o.before.items() if now.get(k, _MISSING) is not v]
        if not o.known.issuperset(now):  # in C, without building a set of every name
            changed += [f"{name}.{k} (added)" for k in now.keys() - o.known
                        if _watchable(now[k]) and not isinstance(now[k], types.ModuleType)]
    return changed


def _report_patching(guard: RuntimeGuard, diff: Callable[..., list[str]] = _diff, finding: type = Finding) -> None:
    """Add a patching finding; its helpers are bound at import time, before any candidate runs."""
    if guard._snap:
        changed = diff(guard._snap)
        if changed:
            guard._add(finding("patching", "replaced: " + ", ".join(changed[:8])))
            guard._tainted = True


_PATCH_CHECK = _report_patching


def _native_tids() -> set[int]:
    try:
        return {int(x) for x in os.listdir("/proc/self/task")}
    except OSError:
        return set()


# ----------------------------------------------------------------------------- the guard

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
        self._recorder: _Recorder | None = None
        self._prev_outputs: list[torch.Tensor] = []   # kept alive so their storage cannot be recycled
        self._snap: dict[str, _Owned] = {}
        self._threads: set[threading.Thread] = set()
        self._tids: set[int] = set()
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
        global _ACTIVE
        import triton

        try:
            import triton.runtime.interpreter  # noqa: F401
        except ImportError:
            pass
        # Entering a dispatch mode imports torch._dynamo the first time (seconds); do it now, not
        # inside the candidate's first forward where it would look like a code generator loading.
        with _Recorder():
            torch.ones(1).add_(1)
        # Start torch's intra-op pool now so that its threads are not taken for the candidate's.
        torch.ones(1 << 17).add_(1)
        _wrap_launches()
        _wrap_calls()
        _install_audit_hook()
        _ACTIVE = self
        self._snap = _snapshot()
        self._threads = set(threading.enumerate())
        self._tids = _native_tids()
        self._modules = set(sys.modules)
        self._installed = True

    @contextlib.contextmanager
    def sandboxed(self, *, check: Callable[[RuntimeGuard], None] | None = None) -> Iterator[None]:
        """Enforce the audit policy on candidate frames; SystemExit becomes Finding('early_exit')."""
        global _ENFORCE
        prev = _ENFORCE
        _ENFORCE = self
        threads = set(threading.enumerate())
        tids = _native_tids()
        try:
            yield
        except SystemExit as exc:
            self._add(Finding("early_exit", f"SystemExit({exc.code!r}) raised by candidate code"))
        finally:
            _ENFORCE = prev
            self._check_threads(threads, tids)
            self._check_modules()
            # Checked here, in a frame created before the candidate ran, so that patching the
            # guard's methods cannot skip the check that reports it.
            (check or _PATCH_CHECK)(self)

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
        new = [m for m in set(sys.modules) - self._modules if m.startswith(_GEN_MODULES)]
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
                for j, x in enumerate(_tensors(t)):
                    key = _storage_key(x)
                    if key is not None:
                        rec.input_keys.add(key)
                        rec.snapshots.append((f"input {i}" + (f"[{j}]" if j else ""), x, _storage_bytes(x).clone()))
            if module is not None:
                for name, p in [*module.named_parameters(), *module.named_buffers()]:
                    key = _storage_key(p)
                    if key is not None:
                        rec.input_keys.add(key)
                        rec.snapshots.append((f"parameter {name}", p, _storage_bytes(p).clone()))
        recorder = _Recorder(poison=True)
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
        name = getattr(getattr(kfn, "fn", kfn), "__name__", "?")
        try:
            sig, consts = _kernel_info(kfn)
            bound = sig.bind_partial(*args, **{k: v for k, v in kwargs.items() if k in sig.parameters})
            bound.apply_defaults()
            values = dict(bound.arguments)
        except (TypeError, ValueError):
            sig, consts, values = None, frozenset(), {}
        if callable(grid):
            # Resolved here, in the open, so that torch work hidden in a grid lambda is recorded.
            meta = dict(values)
            meta.update({k: v for k, v in kwargs.items() if k not in meta})
            grid = grid(meta)
        grid_t = tuple(int(g) for g in (grid if isinstance(grid, (tuple, list)) else (grid,)))
        # Triton gets the resolved grid as it came (a tuple made of ints; anything else unchanged), so
        # a grid its launcher rejects (Triton 3.6 wants a sequence, not an int) fails here too.
        launch_grid = grid_t if isinstance(grid, (tuple, list)) else grid
        signature = {k: ("constexpr" if k in consts else _type_str(v)) for k, v in values.items()}
        constexprs = {k: _plain(v) for k, v in values.items() if k in consts or v is None}
        tensors = [t for v in [*args, *kwargs.values()] for t in _tensors(v)]
        stream = None
        cuda = [t for t in tensors if t.is_cuda]
        if cuda:
            dev = cuda[0].device
            stream = int(torch.cuda.current_stream(dev).cuda_stream)
            if stream != self._allowed_stream(dev):
                self._add(Finding("side_stream", f"kernel {name} launched on stream {stream:#x}, not the "
                                  "evaluation stream"))
        lr = LaunchRecord(name, signature, constexprs, grid_t, kwargs.get("num_warps"), kwargs.get("num_stages"), stream)
        key = (name, tuple(sorted(signature.items())), tuple(sorted((k, repr(v)) for k, v in constexprs.items())),
               lr.num_warps, lr.num_stages)
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
                for t in tensors:
                    k = _storage_key(t)
                    if k is not None and k not in before:
                        before[k] = (t, _storage_bytes(t).clone())
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
                    rec.pending_writes.append((k, _changed(_storage_bytes(t), old)))
        return result

    def _allowed_stream(self, dev: torch.device) -> int:
        return self.stream if self.stream is not None else int(torch.cuda.default_stream(dev).cuda_stream)

    def after_forward(self, record: ForwardRecord, outputs: Sequence[torch.Tensor] | torch.Tensor) -> None:
        """Checks right after forward returned (see the contract in /tmp/eval_contract.md)."""
        outs = [outputs] if isinstance(outputs, torch.Tensor) else [o for o in outputs if isinstance(o, torch.Tensor)]
        with _disable_current_modes():
            mutated = [_changed(_storage_bytes(t), old) for _, t, old in record.snapshots]
            flags = [bool(v) for v in read_scalars([f for _, f in record.pending_writes] + mutated)]
        record.written.update(k for (k, _), changed in zip(record.pending_writes, flags) if changed)
        record.pending_writes.clear()
        if not record.launches:
            self._add(Finding("no_triton_launch", "forward launched no Triton kernel"))
        elif not record.written:
            self._add(Finding("output_not_from_triton", "no Triton launch wrote any tensor"))
        prev_keys = {_storage_key(p) for p in self._prev_outputs} - {None}
        for i, o in enumerate(outs):
            key = _storage_key(o)
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
            self._add(Finding("torch_compute", "torch ops ran inside a Triton launch: " + _fmt(record.launch_ops)))
        compute = collections.Counter(record.ops)
        if self.mode == "strict" and compute:
            self._add(Finding("torch_compute", "torch compute in forward (strict mode): " + _fmt(compute)))
        elif self.mode == "lenient" and self.reference_ops:
            fam_ref = collections.Counter()
            for op, n in self.reference_ops.items():
                fam_ref[_family(op)] += n
            fam_cand = collections.Counter()
            for op, n in compute.items():
                fam_cand[_family(op)] += n
            if all(fam_cand[k] >= n for k, n in fam_ref.items()):
                self._add(Finding("reference_ops_in_torch",
                                  "every compute op of the reference still runs in torch: " + _fmt(self.reference_ops)))
        if record.side_stream:
            self._add(Finding("side_stream", "; ".join(record.side_stream)))
        if torch.cuda.is_available() and self.device.startswith("cuda"):
            dev = torch.device(self.device)
            if torch.cuda.current_stream(dev).cuda_stream != self._allowed_stream(dev):
                self._add(Finding("side_stream", "forward returned with another current stream than the "
                                  "evaluation stream"))
        self._check_patching()

    def _check_patching(self) -> None:
        _report_patching(self)

    def finish(self) -> None:
        """End of the evaluation: patching, threads left alive; stops recording launches."""
        global _ACTIVE
        self._check_patching()
        extra = [t for t in threading.enumerate() if t not in self._threads and t.is_alive()]
        if extra:
            self._add(Finding("thread_started", "thread(s) alive at the end: " + ", ".join(t.name for t in extra)))
        if _ACTIVE is self:
            _ACTIVE = None
        self._prev_outputs.clear()


def _fmt(ops: collections.Counter) -> str:
    return ", ".join(f"{op} x{n}" for op, n in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))[:12])
