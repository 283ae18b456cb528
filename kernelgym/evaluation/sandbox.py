"""Operating-system confinement of the processes that run candidate code (Linux Landlock + seccomp).

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
  output folder the parent made for it (``KERNELGYM_OUTPUT_DIR``), and a GPU worker its own /proc
  entries (the CUDA driver writes there at cuInit); execute only the tools Triton calls (ptxas and
  friends, the C compiler for its launcher, ldconfig) in roles that compile for a GPU; ioctl only
  on /dev/nvidia*;
- network: no TCP bind or connect (Landlock ABI 4); UDP too where the kernel has ABI 10;
- signals and abstract unix sockets: nothing outside the process's own domain (ABI 6), so no
  signal reaches the evaluator or another worker;
- system calls (seccomp, for what Landlock does not cover): ``socket``/``socketpair`` of any family
  but AF_UNIX (so no UDP, raw, netlink or packet socket; the worker's own pipe to the pool is an
  AF_UNIX pair opened before), io_uring (it opens and connects sockets without those calls),
  ptrace, process_vm_readv/writev, pidfd_getfd, the kernel keyring, bpf, perf_event_open,
  userfaultfd, personality changes, new namespaces (unshare, setns, clone with CLONE_NEW*; clone3
  answers ENOSYS so the C library falls back to clone) and the administrative calls (mount, module
  loading, reboot, clocks, swap, ...). Each fails with EPERM rather than killing the process, so a
  violation becomes a verdict (`denial`).

The bindings are `landlockpy` and `pyseccomp` (both pure Python; the latter calls the system's
libseccomp through ctypes). Where Landlock is missing the process runs unconfined, says so
(`Report.label` is ``"false"``, the worker's ``versions["os_sandbox"]``); where only seccomp is
missing it runs under Landlock alone (label ``"landlock-abi<N>"`` instead of
``"landlock-abi<N>+seccomp"``). `Evaluator(os_sandbox="require")` refuses to start unless both
are available.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kernelgym.evaluation import triton_cache

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
# Folders of everything: never opened for execution as a whole because a compiler lives there.
_GENERIC_DIRS = frozenset(("/", "/bin", "/sbin", "/usr", "/usr/bin", "/usr/sbin", "/usr/local", "/usr/local/bin",
                           "/usr/local/sbin", "/opt"))
_ABS_PATH = re.compile(rb"(?<![\w.$])(/[\w.+@-]+(?:/[\w.+@-]+)+)")
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
    seccomp: bool = False          # the seccomp filter is available (`probe`) or loaded (`confine`)
    seccomp_why: str = ""          # why not
    denied_syscalls: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The provenance value: ``"landlock-abi<N>+seccomp"`` (or without ``+seccomp`` where
        the filter is unavailable) when confined, else ``"false"``."""
        if not self.active:
            return "false"
        return f"landlock-abi{self.abi}" + ("+seccomp" if self.seccomp else "")

    @property
    def complete(self) -> bool:
        """Both mechanisms: what ``os_sandbox="require"`` asks for."""
        return self.active and self.seccomp

    @property
    def incomplete_why(self) -> str:
        """Why the confinement is not `complete` (empty when it is)."""
        if not self.active:
            return self.why
        return "" if self.seccomp else self.seccomp_why


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
    why = _seccomp_unusable()
    return Report(True, abi=abi, seccomp=not why, seccomp_why=why)


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


def _script_parts(path: str) -> list[str]:
    """What running `path` also executes when it is a script: its interpreter, the binary a
    distribution's wrapper hands on to (Ubuntu's /sbin/ldconfig is a shell script that runs
    /sbin/ldconfig.real; Triton runs ``ldconfig -p`` to find libcuda), and every executable file
    the script names by absolute path (a wrapper such as ``exec /opt/x/bin/gcc-13 "$@"``)."""
    parts = [path + ".real"] if os.path.exists(path + ".real") else []
    try:
        with open(path, "rb") as fh:
            text = fh.read(65536)
    except OSError:
        return parts
    if not text.startswith(b"#!"):
        return parts
    words = text[2:].split(b"\n", 1)[0].decode(errors="replace").split()
    if words:
        parts.append(words[0])
    for m in _ABS_PATH.finditer(text):
        named = m.group(1).decode(errors="replace")
        if named not in parts and os.path.isfile(named) and os.access(named, os.X_OK):
            parts.append(named)
    return parts


def _c_compiler() -> str | None:
    """The C compiler Triton builds its launcher and driver utilities with (Triton's own order:
    ``$CC``, then gcc, then clang)."""
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc) or cc
    return shutil.which("gcc") or shutil.which("clang")


def _compiler_parts(cc: str) -> list[str]:
    """What the C compiler `cc` executes besides itself: its passes and linker wrapper (cc1,
    collect2, lto-wrapper, found in the program folders it reports) and, for a compiler installed
    under its own prefix (``/opt/gcc/bin/gcc``), that prefix, whose libexec holds those passes. A
    GPU image with gcc in /opt/gcc failed every launcher build under confinement without it."""
    parts: list[str] = []
    real = os.path.realpath(cc)
    bindir = os.path.dirname(real)
    prefix = os.path.dirname(bindir)
    if os.path.basename(bindir) == "bin" and prefix not in _GENERIC_DIRS:
        parts.append(prefix)
    try:
        out = subprocess.run([cc, "-print-search-dirs"], capture_output=True, text=True, timeout=20,
                             stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        key, _, dirs = line.partition(":")
        if key not in ("install", "programs"):
            continue
        for d in dirs.strip().lstrip("=").split(os.pathsep):
            d = os.path.normpath(d) if d else ""
            if d and os.path.isdir(d) and os.path.realpath(d) not in _GENERIC_DIRS and d not in parts:
                parts.append(d)
    return parts


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
    for var in ("TRITON_PTXAS_PATH", "TRITON_CUOBJDUMP_PATH", "TRITON_NVDISASM_PATH"):
        v = os.environ.get(var)
        if v:
            found.append(shutil.which(v) or v)
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin"])
    cc = _c_compiler()   # usually also one of _TOOLS: each executable's script is read once
    for w in dict.fromkeys([*(shutil.which(tool, path=search) for tool in _TOOLS), cc]):
        if w:
            found += [w, *_script_parts(w)]
    if cc:
        found += _compiler_parts(cc)
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
    readable: list[str] = []
    if gpu_devices:   # a GPU candidate worker: it reads what was precompiled for its candidates
        root = triton_cache.precompiled_root()   # from the shared cache's path, before it is replaced below
        with contextlib.suppress(OSError):
            os.makedirs(root, exist_ok=True)
        if os.path.isdir(root):
            readable.append(root)
    # Every temporary file of this process (Triton's compiles, tempfile) goes to its scratch folder,
    # and kernels compiled here go to a cache of its own, never to the shared one.
    os.environ["TMPDIR"] = scratch
    os.environ["TRITON_HOME"] = scratch
    os.environ["CUDA_CACHE_PATH"] = os.path.join(scratch, "nv-cache")   # the driver's PTX JIT cache
    triton_cache.fresh_triton_cache(scratch)
    import tempfile

    tempfile.tempdir = scratch
    if mode == "require" and not rep.seccomp:
        raise RuntimeError(f"os_sandbox='require' but the {role} process cannot load a seccomp filter: "
                           f"{rep.seccomp_why}")
    try:
        _restrict(rep, scratch, writable, gpu_tools, gpu_devices, readable)
        _CONFINED[:] = [rep]
        triton_cache.allow_precompiled(readable)
    except Exception as exc:  # noqa: BLE001 - the kernel refused: say so rather than die silently
        if mode == "require":
            raise RuntimeError(f"os_sandbox='require' but confining the {role} process failed: "
                               f"{type(exc).__name__}: {exc}") from exc
        return Report(False, abi=rep.abi, why=f"confining failed: {type(exc).__name__}: {exc}")
    if rep.seccomp:
        try:
            rep.denied_syscalls = _load_seccomp()
        except Exception as exc:  # noqa: BLE001 - e.g. a container's own filter forbids adding one
            rep.seccomp, rep.seccomp_why = False, f"loading the seccomp filter failed: {type(exc).__name__}: {exc}"
            if mode == "require":   # Landlock is already in force; the process must not go on
                raise RuntimeError(f"os_sandbox='require' but the {role} process: {rep.seccomp_why}") from exc
    return rep


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def _restrict(rep: Report, scratch: str, writable: Sequence[str], gpu_tools: bool, gpu_devices: bool,
              readable: Sequence[str] = ()) -> None:
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
        allow(readable, read_file)   # open by name, never list (see `triton_cache.file_precompiled`)
        allow(_DEVICES_R, read_file)
        allow(_DEVICES_RW, AccessFS.READ_FILE | AccessFS.WRITE_FILE)
        allow([scratch], write_dir)
        allow(writable, write_dir)
        if gpu_tools:
            allow(_tools(), read_dir | AccessFS.EXECUTE)
        if gpu_devices and os.path.isdir("/dev"):
            nv = [os.path.join("/dev", d) for d in os.listdir("/dev") if d.startswith("nvidia")]
            allow(nv, AccessFS.READ_FILE | AccessFS.WRITE_FILE | AccessFS.READ_DIR | AccessFS.IOCTL_DEV)
            # The CUDA driver writes into the process's own /proc entries at cuInit (without it:
            # error 304, "OS call failed", on an H100 with driver 580); "/proc/self" resolves to this
            # process's folder when the rule is made, so no other process's entries are writable.
            allow(["/proc/self"], AccessFS.READ_FILE | AccessFS.WRITE_FILE | AccessFS.READ_DIR | AccessFS.TRUNCATE)
        rs.restrict()
    rep.denied_net = [f.name for f in AccessNet if f and f in handled_net and f.name]
    rep.scoped = [f.name for f in Scope if f and f in scoped and f.name]


# ----------------------------------------------------------------------------- seccomp

# Calls no worker needs (torch, Triton, the CUDA driver, ptxas, the C compiler) and Landlock does
# not restrict: other processes' memory and file descriptors, the kernel keyring, kernel programs
# and performance counters, page-fault handling, namespaces, and the administrative calls a worker
# running as root could otherwise make (mount and module loading Landlock already blocks partly).
_DENIED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount", "mount_setattr",
    "fsopen", "fsconfig", "fsmount", "fspick", "open_by_handle_at", "quotactl", "fanotify_init",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot",
    "swapon", "swapoff", "acct", "settimeofday", "clock_settime", "clock_adjtime", "sethostname",
    "setdomainname", "iopl", "ioperm", "syslog", "vhangup", "lookup_dcookie",
)
# clone flags that make a new namespace (CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID,
# NEWNET, NEWTIME): threads and subprocesses never pass them.
_CLONE_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000,
                          0x40000000, 0x00000080)
_AF_UNIX = 1
_PERSONALITY_QUERY = 0xFFFFFFFF


def _seccomp_unusable() -> str:
    """Why a seccomp filter cannot be loaded here (empty when it can)."""
    if not sys.platform.startswith("linux"):
        return f"seccomp is Linux-only (this is {sys.platform})"
    try:
        import pyseccomp  # noqa: F401 - raises RuntimeError without the system's libseccomp
    except ImportError:
        return "the seccomp binding 'pyseccomp' is not installed (pip install pyseccomp)"
    except Exception as exc:  # noqa: BLE001 - "Unable to find libseccomp"
        return f"seccomp is unusable here: {exc} (install the system package libseccomp2)"
    return ""


def _load_seccomp() -> list[str]:
    """Load this process's seccomp filter (see the module docstring); the calls it denies.

    Everything not named stays allowed: the filter closes holes, it does not enumerate what
    Python, torch and the driver need. Denied calls fail with EPERM (ENOSYS for clone3), never
    kill, so the candidate's code sees an OSError and the worker reports it. Inherited by every
    thread and process started afterwards; it cannot be removed."""
    import pyseccomp as sc

    eperm = sc.ERRNO(errno.EPERM)
    flt = sc.SyscallFilter(sc.ALLOW)
    # Syscalls of another ABI (i386 through int 0x80, x32) bypass per-name rules: refuse them all.
    flt.set_attr(sc.Attr.ACT_BADARCH, eperm)
    denied: list[str] = []

    def deny(name: str, *args: Any, action: int = eperm) -> None:
        nr = sc.resolve_syscall(sc.Arch.NATIVE, name)
        if nr < 0:      # not a call of this architecture (e.g. iopl on arm64)
            return
        flt.add_rule(action, nr, *args)
        if name not in denied:
            denied.append(name)

    deny("socket", sc.Arg(0, sc.NE, _AF_UNIX))
    deny("socketpair", sc.Arg(0, sc.NE, _AF_UNIX))
    for name in _DENIED_SYSCALLS:
        deny(name)
    deny("personality", sc.Arg(0, sc.NE, _PERSONALITY_QUERY))
    for flag in _CLONE_NAMESPACE_FLAGS:
        deny("clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    # clone3 passes its flags in memory, out of a filter's reach; glibc falls back to clone.
    deny("clone3", action=sc.ERRNO(errno.ENOSYS))
    flt.load()
    return denied


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
            # EPERM with no path: the seccomp filter (a socket of a denied family when Python's
            # socket module raised it) or Landlock's signal scope.
            return ("network" if _raised_by_socket_module(e) else "forbidden_call"), detail
        if any(w in low for w in _NET_WORDS) and "file" not in low:
            return "network", detail
        return "file_access", detail
    return None


def _raised_by_socket_module(exc: BaseException) -> bool:
    """Whether `exc` was raised inside the standard library's socket module (socket(), socketpair())."""
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if os.path.basename(code.co_filename) == "socket.py" and code.co_filename.startswith(sys.base_prefix):
            return True
        tb = tb.tb_next
    return False


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


def warn_unconfined(rep: Report | str) -> None:
    """Say once per process that candidate code will run without OS confinement (or under Landlock
    without the seccomp filter), and why."""
    if _WARNED:
        return
    if isinstance(rep, str):
        rep = Report(False, why=rep)
    _WARNED.append(rep.incomplete_why)
    import warnings

    if rep.active:
        what = (f"candidate code runs under Landlock without the seccomp filter (os_sandbox: {rep.label}): "
                f"{rep.seccomp_why}. UDP, raw and netlink sockets stay open to it")
    else:
        what = f"candidate code runs without an OS sandbox (os_sandbox: false): {rep.why}"
    warnings.warn(f"kernelgym: {what}. The Python-level guards still run; pass os_sandbox='require' to "
                  "refuse instead.", RuntimeWarning, stacklevel=3)
