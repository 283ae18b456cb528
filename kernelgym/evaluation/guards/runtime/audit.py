"""What candidate code may not do in-process: the audit hook and the wrappers that deny calls.

A ``sys.addaudithook`` hook denies file, network, process, ctypes, introspection and
code-generation events whose nearest relevant frame is candidate code; wrappers of code generators
(torch.compile, torch.jit, triton.compile), thread starts and CUDA-graph capture probes deny the
calls themselves. Both are installed once per process and act only while a guard enforces
(`STATE.enforce`, inside `RuntimeGuard.sandboxed`); a denied event becomes a `Finding` on that
guard and a PermissionError in the candidate. Frames are attributed to the candidate by code
filename.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import threading
import types
from collections.abc import Callable
from typing import Any

import torch

from kernelgym.evaluation.guards import Finding
from kernelgym.evaluation.guards import static as _static
from kernelgym.evaluation.guards.runtime.state import STATE

# Modules whose appearance in sys.modules during a candidate's run means a code generator loaded.
GEN_MODULES = ("torch._dynamo", "torch._inductor", "torch.utils.cpp_extension", "torch.export",
               "torch.fx.experimental")

_STDLIB = tuple({os.path.abspath(sysconfig.get_paths()[k]) + os.sep for k in ("stdlib", "platstdlib")})
_INTROSPECTION_HELPERS = ("inspect.py", "traceback.py", "linecache.py")


def _is_stdlib(filename: str) -> bool:
    if filename.startswith("<frozen"):
        return True
    return filename.startswith(_STDLIB) and "-packages" not in filename


def candidate_frame(frame: types.FrameType | None, candidate: str, skip_stdlib: bool,
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
    guard = STATE.enforce
    if guard is None or getattr(STATE.tls, "busy", False):
        return
    if (event not in _EVENTS and event not in ("import", "object.__setattr__", "object.__delattr__")
            and not event.startswith(("socket.", "ctypes.", "os.", "shutil.", "sqlite3."))):
        return
    STATE.tls.busy = True
    try:
        frame = sys._getframe(1)
        cand = candidate_frame(frame, guard.candidate_filename, skip_stdlib=event not in _DIRECT,
                               import_event=event == "import")
        if cand is None:
            return
        found = _classify_event(event, args)
        if found is None:
            return
        guard._add(Finding(found[0], found[1], cand.f_lineno))
    finally:
        STATE.tls.busy = False
    raise PermissionError(f"kernelgym sandbox: {event} is not allowed in candidate code")


def install_audit_hook() -> None:
    """Add the audit hook to the process (once; it cannot be removed, and is inert unless a guard
    is enforcing)."""
    if not STATE.audit_hooked:
        sys.addaudithook(_audit)
        STATE.audit_hooked = True


def _deny_wrapper(orig: Callable[..., Any], name: str, label: str) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        guard = STATE.enforce
        if guard is not None:
            cand = candidate_frame(sys._getframe(1), guard.candidate_filename, skip_stdlib=True)
            if cand is not None:
                guard._add(Finding(name, f"{label} called by candidate code", cand.f_lineno))
                raise PermissionError(f"kernelgym sandbox: {label} is not allowed in candidate code")
        return orig(*args, **kwargs)

    wrapper.__kernelgym_wrapped__ = orig  # type: ignore[attr-defined]
    wrapper.__name__ = getattr(orig, "__name__", label)
    wrapper.__doc__ = getattr(orig, "__doc__", None)
    return wrapper


def wrap_calls() -> None:
    """Wrap code generators and thread starts so that candidate calls are denied (once)."""
    if STATE.calls_wrapped:
        return
    STATE.calls_wrapped = True
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
    for owner, attr, name, label in targets:
        orig = getattr(owner, attr, None)
        if orig is not None and not hasattr(orig, "__kernelgym_wrapped__"):
            setattr(owner, attr, _deny_wrapper(orig, name, label))
    deny_dynamo_optimize()


def deny_dynamo_optimize() -> None:
    """Deny ``torch._dynamo.optimize`` to candidate code, once dynamo is loaded (at `wrap_calls`,
    or when torch loads it later: `lazy_dynamo`)."""
    dyn = sys.modules.get("torch._dynamo")
    orig = getattr(dyn, "optimize", None)
    if STATE.calls_wrapped and orig is not None and not hasattr(orig, "__kernelgym_wrapped__"):
        dyn.optimize = _deny_wrapper(orig, "code_generation", "torch._dynamo.optimize")
