"""Operating-system confinement of the processes that run candidate code (Linux Landlock).

The guards (`guards.static`, `guards.runtime`) work at the Python level: C++ entry points such as
``torch.from_file`` or ``torch.distributed.TCPStore`` open files and sockets without an audit event.
So every process that executes candidate code -- candidate, PTX and precompile workers (`worker`)
and therefore the Ray actors' workers -- confines itself with `confine` at its start, while it has
one thread and before any candidate code runs: an exec'd worker before it imports torch, one
forked from a template (`template`) right after the fork (a Landlock domain binds the calling
thread and the threads and processes it starts later; files the template opened stay open, so it
keeps none a worker could use):

- files: read what Python, torch, Triton and the CUDA driver need (the interpreter's prefixes and
  import paths, /usr, /lib, /proc, /sys, a few files of /etc, the shared Triton cache); read and
  write only the process's scratch folder (also its ``TMPDIR`` and its own Triton cache) and the
  output folder the parent made for it (``KERNELGYM_OUTPUT_DIR``); execute only the tools Triton
  calls (ptxas and friends, the C compiler for its launcher, ldconfig) in roles that compile for a
  GPU; ioctl only on /dev/nvidia*;
- network: no TCP bind or connect (Landlock ABI 4); UDP too where the kernel has ABI 10;
- signals and abstract unix sockets: nothing outside the process's own domain (ABI 6), so no
  signal reaches the evaluator or another worker.

The binding is `landlockpy` (pure Python, no compiled part). Where it or the kernel mechanism is
missing the process runs unconfined, says so (`Report.label` is ``"false"``, the worker's
``versions["os_sandbox"]``), and `Evaluator(os_sandbox="require")` refuses to start.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

MODES = ("auto", "require", "off")
# Output folders on /dev/shm start so (`Evaluator.spill_path`; a worker's own is "<prefix><pid>-w..."):
# here, below the evaluator, because workers make and may write only such folders.
SPILL_PREFIX = "kernelgym-outputs-"
MODE_ENV = "KERNELGYM_OS_SANDBOX"        # the evaluator's mode, passed to its workers
OUTPUT_ENV = "KERNELGYM_OUTPUT_DIR"      # the one folder a candidate worker may write outputs to
SCRATCH_ENV = "KERNELGYM_SCRATCH_DIR"    # the worker's private scratch folder, made by the parent
# Landlock ABI below which confinement is not worth the name: 4 adds TCP, 6 signal scoping.
MIN_ABI = 6

# Files of /etc that the dynamic loader, Python and torch read; the rest of /etc stays closed.
_ETC = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/nsswitch.conf",
        "/etc/passwd", "/etc/group", "/etc/host.conf", "/etc/gai.conf", "/etc/alternatives")
_SYSTEM_READ = ("/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/opt", "/proc", "/sys",
                "/usr/local/cuda", "/usr/local/nvidia")
_DEVICES_RW = ("/dev/null", "/dev/zero", "/dev/full")
_DEVICES_R = ("/dev/urandom", "/dev/random")
# The C toolchain Triton's launcher build runs (gcc driver, its passes, assembler, linker).
_TOOLS = ("gcc", "cc", "clang", "as", "ld", "ld.bfd", "ld.gold", "collect2", "ldconfig")
_TOOL_DIRS = ("/usr/lib/gcc", "/usr/libexec/gcc", "/usr/lib/llvm")
_LOADERS = ("/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1", "/lib/ld-linux.so.2")


_CONFINED: list[Report] = []   # this process's confinement, once `confine` succeeded


def active() -> bool:
    """Whether this process confined itself (`confine`)."""
    return bool(_CONFINED)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown os_sandbox mode {mode!r}; expected one of {MODES}")
    return mode


@dataclass
class Report:
    """What `confine` did: `active` (the process is confined), the Landlock `abi`, `why` not."""

    active: bool
    abi: int = 0
    why: str = ""
    denied_net: list[str] = field(default_factory=list)
    scoped: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The provenance value: ``"landlock-abi<N>"`` when confined, else ``"false"``."""
        return f"landlock-abi{self.abi}" if self.active else "false"


def probe() -> Report:
    """Whether this process could confine itself: the binding is importable and the kernel's
    Landlock ABI is at least `MIN_ABI` (TCP and signal scoping). Starts nothing, changes nothing."""
    if not sys.platform.startswith("linux"):
        return Report(False, why=f"Landlock is Linux-only (this is {sys.platform})")
    try:
        import landlockpy
    except ImportError:
        return Report(False, why="the Landlock binding 'landlockpy' is not installed (pip install landlockpy)")
    try:
        abi = int(landlockpy.abi_version())
    except Exception as exc:  # noqa: BLE001 - e.g. seccomp in a container denies the syscall
        return Report(False, why=f"Landlock is unusable here: {type(exc).__name__}: {exc}")
    if abi < MIN_ABI:
        why = "the kernel has no Landlock" if abi == 0 else \
            f"the kernel's Landlock ABI is {abi}; TCP and signal confinement need ABI {MIN_ABI}"
        return Report(False, abi=abi, why=why)
    return Report(True, abi=abi)


def _existing(paths: Iterable[str]) -> list[str]:
    out: list[str] = []
    for p in paths:
        if not p:
            continue
        for q in (p, os.path.realpath(p)):
            if os.path.exists(q) and q not in out:
                out.append(q)
    return out


def _python_paths() -> list[str]:
    """Where Python, torch and Triton are read from: prefixes, stdlib, site-packages, and the
    import paths the environment names (PYTHONPATH) -- never the current folder implicitly."""
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))]
    paths += [v for k, v in sysconfig.get_paths().items() if k in ("stdlib", "platstdlib", "purelib", "platlib")]
    paths += [p for p in sys.path if p and ("-packages" in p or p.endswith(".zip") or p.startswith(sys.base_prefix))]
    paths += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    paths.append(pkg_root)
    return _existing(paths)


def _tools() -> list[str]:
    """Executables a role that compiles for a GPU may run."""
    found: list[str] = []
    try:
        import importlib.util

        spec = importlib.util.find_spec("triton")
        if spec and spec.submodule_search_locations:
            for loc in spec.submodule_search_locations:
                found.append(os.path.join(loc, "backends", "nvidia", "bin"))
    except (ImportError, ValueError):
        pass
    for var in ("TRITON_PTXAS_PATH", "TRITON_CUOBJDUMP_PATH", "TRITON_NVDISASM_PATH", "CC"):
        v = os.environ.get(var)
        if v:
            found.append(shutil.which(v) or v)
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin"])
    for tool in _TOOLS:
        w = shutil.which(tool, path=search)
        if w:
            found.append(w)
    found += list(_TOOL_DIRS) + list(_LOADERS)
    if os.path.isdir("/usr/lib"):
        found += [os.path.join("/usr/lib", d) for d in os.listdir("/usr/lib") if d.startswith("llvm")]
    return _existing(found)


def confine(role: str, scratch: str, writable: Sequence[str] = (), *, mode: str = "auto",
            gpu_tools: bool = False, gpu_devices: bool = False) -> Report:
    """Confine this process (and every thread and process it starts later) for running candidates.

    role: for messages. scratch: the process's own folder (read, write, create, remove; also its
    ``TMPDIR`` and its private Triton cache, set here). writable: further folders or files it may
    write (the output folder its parent made). gpu_tools: may execute Triton's compiler tools.
    gpu_devices: may open /dev/nvidia* and issue ioctls on them. mode "off": do nothing; "auto":
    confine when possible, else return an inactive report; "require": raise RuntimeError when not
    possible. Call it before importing torch and before any thread starts: Landlock binds the
    calling thread only (and what it starts afterwards).
    """
    check_mode(mode)
    if mode == "off":
        return Report(False, why="os_sandbox='off'")
    rep = probe()
    if not rep.active:
        if mode == "require":
            raise RuntimeError(f"os_sandbox='require' but the {role} process cannot be confined: {rep.why}")
        return rep
    threads = _thread_count()
    if threads > 1:
        # Without Landlock's TSYNC (ABI 8) the other threads would stay unconfined.
        why = f"the process already runs {threads} threads (confinement binds only the calling one)"
        if mode == "require":
            raise RuntimeError(f"os_sandbox='require' but the {role} process cannot be confined: {why}")
        return Report(False, abi=rep.abi, why=why)
    scratch = os.path.realpath(scratch)
    # Every temporary file of this process (Triton's compiles, tempfile) goes to its scratch folder,
    # and kernels compiled here go to a cache of its own, never to the shared one.
    os.environ["TMPDIR"] = scratch
    os.environ["TRITON_HOME"] = scratch
    os.environ["CUDA_CACHE_PATH"] = os.path.join(scratch, "nv-cache")   # the driver's PTX JIT cache
    fresh_triton_cache(scratch)
    import tempfile

    tempfile.tempdir = scratch
    try:
        _restrict(rep, scratch, writable, gpu_tools, gpu_devices)
        _CONFINED[:] = [rep]
    except Exception as exc:  # noqa: BLE001 - the kernel refused: say so rather than die silently
        if mode == "require":
            raise RuntimeError(f"os_sandbox='require' but confining the {role} process failed: "
                               f"{type(exc).__name__}: {exc}") from exc
        return Report(False, abi=rep.abi, why=f"confining failed: {type(exc).__name__}: {exc}")
    return rep


def fresh_triton_cache(scratch: str) -> str:
    """Point Triton at a new, empty cache folder in `scratch` and delete the previous one.

    A confined process calls it before each candidate: what one candidate wrote into its cache
    (it may write there, and could plant a binary under another kernel's key) never reaches the
    next candidate's kernels. Kernels already loaded stay in memory, so nothing is compiled twice
    within one candidate's run."""
    prev = os.environ.get("TRITON_CACHE_DIR", "")
    n = 0
    if os.path.dirname(prev) == scratch and os.path.basename(prev).startswith("triton-cache-"):
        shutil.rmtree(prev, ignore_errors=True)
        n = int(os.path.basename(prev).rsplit("-", 1)[1]) + 1
    cache = os.path.join(scratch, f"triton-cache-{n}")
    os.makedirs(cache, exist_ok=True)
    os.environ["TRITON_CACHE_DIR"] = cache
    return cache


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def _restrict(rep: Report, scratch: str, writable: Sequence[str], gpu_tools: bool, gpu_devices: bool) -> None:
    import landlockpy
    from landlockpy import AccessFS, AccessNet, Scope

    read_file = AccessFS.READ_FILE
    read_dir = AccessFS.READ_FILE | AccessFS.READ_DIR
    write_dir = (read_dir | AccessFS.WRITE_FILE | AccessFS.TRUNCATE | AccessFS.MAKE_REG | AccessFS.MAKE_DIR
                 | AccessFS.REMOVE_FILE | AccessFS.REMOVE_DIR | AccessFS.REFER | AccessFS.MAKE_SYM)
    handled_fs = landlockpy.fs_for_abi(rep.abi)
    # Every network right the kernel knows is handled and none is granted: no TCP (ABI 4), no UDP (10).
    handled_net = landlockpy.net_for_abi(rep.abi)
    scoped = Scope.SIGNAL | Scope.ABSTRACT_UNIX_SOCKET
    with landlockpy.Ruleset(handled_fs=handled_fs, handled_net=handled_net, scoped=scoped) as rs:
        def allow(paths: Iterable[str], access: Any) -> None:
            for p in _existing(paths):
                is_dir = os.path.isdir(p)
                # A file rule may only carry file rights.
                rights = access if is_dir else access & (AccessFS.READ_FILE | AccessFS.WRITE_FILE | AccessFS.EXECUTE
                                                         | AccessFS.TRUNCATE | AccessFS.IOCTL_DEV)
                if rights:
                    rs.allow_path(p, rights)

        allow(_SYSTEM_READ, read_dir)
        allow(_ETC, read_dir)
        allow(_python_paths(), read_dir)
        allow(_DEVICES_R, read_file)
        allow(_DEVICES_RW, AccessFS.READ_FILE | AccessFS.WRITE_FILE)
        allow([scratch], write_dir)
        allow(writable, write_dir)
        if gpu_tools:
            allow(_tools(), read_dir | AccessFS.EXECUTE)
        if gpu_devices and os.path.isdir("/dev"):
            nv = [os.path.join("/dev", d) for d in os.listdir("/dev") if d.startswith("nvidia")]
            allow(nv, AccessFS.READ_FILE | AccessFS.WRITE_FILE | AccessFS.READ_DIR | AccessFS.IOCTL_DEV)
        rs.restrict()
    rep.denied_net = [f.name for f in AccessNet if f and f in handled_net and f.name]
    rep.scoped = [f.name for f in Scope if f and f in scoped and f.name]


def from_env(role: str, scratch: str, *, gpu_tools: bool = False, gpu_devices: bool = False,
             writable: Sequence[str] = ()) -> Report:
    """`confine` with the mode (``KERNELGYM_OS_SANDBOX``, default "auto") and output folder
    (``KERNELGYM_OUTPUT_DIR``) the parent put in this process's environment, plus `writable`."""
    mode = os.environ.get(MODE_ENV, "auto")
    out = os.environ.get(OUTPUT_ENV)
    return confine(role, scratch, [*([out] if out else []), *writable], mode=mode, gpu_tools=gpu_tools,
                   gpu_devices=gpu_devices)


# ----------------------------------------------------------------------------- verdicts

_NET_WORDS = ("connect", "bind", "socket", "network", "tcp", "udp", "store", "address", "port")
_REFUSED = ("permission denied", "operation not permitted", "eacces", "eperm", "errno 13", "errno: 13")


def denial(exc: BaseException) -> tuple[str, str] | None:
    """(guard name, detail) when `exc` (or one in its chain) is the OS refusing a confined process:
    ``network`` for a socket, ``file_access`` for a path, ``forbidden_call`` for a signal (EPERM
    with no path: Landlock's signal scope); None for anything else. Meant for candidate failures
    in a confined process, where nothing legitimate is refused."""
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen and len(seen) < 20:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    for e in seen:
        text = str(e)
        low = f"{type(e).__name__} {text}".lower()
        code = e.errno if isinstance(e, OSError) else None
        if code not in (errno.EACCES, errno.EPERM) and not any(w in low for w in _REFUSED):
            continue
        detail = f"refused by the OS sandbox: {type(e).__name__}: {text[:300]}"
        if code == errno.EPERM and not getattr(e, "filename", None):
            return "forbidden_call", detail
        if any(w in low for w in _NET_WORDS) and "file" not in low:
            return "network", detail
        return "file_access", detail
    return None


def make_output_dir(base: str | None = None) -> str | None:
    """A fresh private folder for one worker's output files, named so that `remove_stale_spill_dirs`
    of the evaluator clears it if this process dies without cleaning up (None if none can be made)."""
    import tempfile


    if base is None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    try:
        return tempfile.mkdtemp(prefix=f"{SPILL_PREFIX}{os.getpid()}-w", dir=base)
    except OSError:
        return None


_WARNED: list[str] = []


def warn_unconfined(why: str) -> None:
    """Say once per process that candidate code will run without OS confinement, and why."""
    if _WARNED:
        return
    _WARNED.append(why)
    import warnings

    warnings.warn(f"kernelgym: candidate code runs without an OS sandbox (os_sandbox: false): {why}. "
                  "The Python-level guards still run; pass os_sandbox='require' to refuse instead.",
                  RuntimeWarning, stacklevel=3)
