"""The OS sandbox (`kernelgym.evaluation.sandbox`): what a confined process may and may not do, how
the OS's refusals become guard findings, and how the evaluator degrades or refuses without it.
The end-to-end escapes are in tests/redteam/test_redteam_os.py."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from kernelgym.evaluation import sandbox, triton_cache

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_sandbox = pytest.mark.skipif(not sandbox.probe().active, reason=f"no OS sandbox: {sandbox.probe().why}")
needs_seccomp = pytest.mark.skipif(not sandbox.probe().complete,
                                   reason=f"no Landlock + seccomp: {sandbox.probe().incomplete_why}")

_CHILD = textwrap.dedent("""
    import json, os, socket, sys, threading
    scratch, out, secret, mode, threads = sys.argv[1:6]
    for _ in range(int(threads)):
        threading.Thread(target=threading.Event().wait, daemon=True).start()
    import importlib.util
    spec = importlib.util.spec_from_file_location("sandbox", os.path.join(sys.argv[6], "sandbox.py"))
    sandbox = sys.modules["sandbox"] = importlib.util.module_from_spec(spec)   # alone: no torch here
    spec.loader.exec_module(sandbox)
    try:
        rep = sandbox.confine("candidate", scratch, [out], mode=mode)
    except RuntimeError as exc:
        print(json.dumps({"refused": str(exc)}))
        sys.exit(0)
    res = {"active": rep.active, "label": rep.label, "why": rep.why}
    def attempt(name, fn):
        try:
            fn()
            res[name] = "ok"
        except OSError as exc:
            res[name] = exc.errno
    attempt("write_scratch", lambda: open(os.path.join(scratch, "a"), "w").write("x"))
    attempt("write_output", lambda: open(os.path.join(out, "0.bin"), "wb").write(b"x"))
    attempt("read_secret", lambda: open(secret).read())
    attempt("write_beside", lambda: open(secret + ".new", "w").write("x"))
    attempt("read_stdlib", lambda: open(json.__file__).read())
    attempt("tcp_bind", lambda: socket.create_server(("127.0.0.1", 0)))
    attempt("signal_parent", lambda: os.kill(os.getppid(), 0))
    attempt("udp_socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close())
    attempt("udp6_socket", lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close())
    attempt("netlink_socket", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close())
    attempt("packet_socket", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close())
    attempt("unix_socketpair", lambda: [s.close() for s in socket.socketpair()])
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    def via_libc(fn, *args):
        if fn(*args) == -1:
            raise OSError(ctypes.get_errno(), "")
    pid = os.fork()
    if pid == 0:
        __import__("time").sleep(60)
        os._exit(0)
    attempt("ptrace_child", lambda: via_libc(libc.ptrace, 0x4206, pid, 0, 0))   # PTRACE_SEIZE: no stop
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    attempt("keyctl", lambda: via_libc(libc.syscall, 250, 0, -3, 0))   # x86_64 keyctl(GET_KEYRING_ID, session)
    attempt("personality", lambda: via_libc(libc.personality, 0x0400000))   # READ_IMPLIES_EXEC
    attempt("thread", lambda: [t.start() or t.join() for t in [threading.Thread(target=int)]])
    import subprocess
    attempt("subprocess", lambda: subprocess.run([sys.executable, "-c", "pass"], check=True))
    res["denied_syscalls"] = rep.denied_syscalls
    if rep.active:   # unconfined, the exec would succeed and replace this process
        attempt("exec_shell", lambda: os.execv("/bin/sh", ["/bin/sh", "-c", "true"]))
    res["tmpdir"] = __import__("tempfile").gettempdir()
    print(json.dumps(res))
""")


# "require" asks for Landlock and seccomp; where only Landlock is here the Landlock tests run under "auto".
REQUIRE = "require" if sandbox.probe().complete else "auto"


def _child(tmp_path, mode=REQUIRE, threads=0):
    scratch, out = tmp_path / "scratch", tmp_path / "out"
    scratch.mkdir()
    out.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("the evaluator's secret")
    path = os.pathsep.join(p for p in (HERE, os.environ.get("PYTHONPATH", "")) if p)   # keeps the bindings'
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", _CHILD, str(scratch), str(out), str(secret), mode, str(threads),
                        os.path.dirname(sandbox.__file__)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1]), str(scratch)


@needs_sandbox
def test_confined_process_reaches_only_its_own_folders(tmp_path):
    res, scratch = _child(tmp_path)
    assert res["active"] and res["label"].startswith("landlock-abi"), res
    assert res["write_scratch"] == "ok" and res["write_output"] == "ok" and res["read_stdlib"] == "ok", res
    assert res["read_secret"] == errno.EACCES and res["write_beside"] == errno.EACCES, res
    # seccomp refuses the socket itself (EPERM); Landlock alone, the bind (EACCES).
    assert res["tcp_bind"] == (errno.EPERM if res["label"].endswith("+seccomp") else errno.EACCES), res
    assert res["signal_parent"] == errno.EPERM, res
    assert res["exec_shell"] == errno.EACCES, res
    assert res["tmpdir"] == os.path.realpath(scratch), res   # its temporary files stay in its folder


@needs_seccomp
def test_seccomp_closes_what_landlock_leaves_open(tmp_path):
    """UDP, IPv6, netlink and packet sockets, ptrace, the keyring and personality changes fail with
    EPERM (the process lives on to report it); AF_UNIX pairs, threads and subprocesses still work."""
    res, _ = _child(tmp_path)
    assert res["label"].endswith("+seccomp"), res
    for name in ("udp_socket", "udp6_socket", "netlink_socket", "packet_socket", "personality", "ptrace_child"):
        assert res[name] == errno.EPERM, (name, res)
    if os.uname().machine == "x86_64":
        assert res["keyctl"] == errno.EPERM, res
    assert res["unix_socketpair"] == "ok" and res["thread"] == "ok", res
    # Landlock forbids executing the interpreter in a role without GPU tools: refused, not broken.
    assert res["subprocess"] in ("ok", errno.EACCES), res
    assert {"socket", "ptrace", "process_vm_writev", "io_uring_setup", "keyctl"} <= set(res["denied_syscalls"])


def test_unconfined_process_can_do_what_seccomp_denies(tmp_path):
    """The control: the same attempts succeed (or fail for lack of privilege, not EPERM from us)
    without the sandbox, so the test above can fail."""
    res, _ = _child(tmp_path, mode="off")
    assert res["udp_socket"] == "ok" and res["netlink_socket"] == "ok" and res["unix_socketpair"] == "ok", res
    assert res["ptrace_child"] == "ok" and res["personality"] == "ok", res
    assert res["denied_syscalls"] == []


@needs_sandbox
def test_no_confinement_claimed_once_threads_run(tmp_path):
    """Without Landlock's TSYNC the other threads would stay free: refuse ("require") or say so."""
    res, _ = _child(tmp_path, mode="require", threads=1)
    assert "threads" in res["refused"], res
    (tmp_path / "auto").mkdir()
    res, _ = _child(tmp_path / "auto", mode="auto", threads=1)
    assert res["active"] is False and res["label"] == "false" and "threads" in res["why"], res
    assert res["read_secret"] == "ok", res   # really unconfined, and reported as such


def test_off_confines_nothing(tmp_path):
    res, _ = _child(tmp_path, mode="off")
    assert res["active"] is False and res["label"] == "false" and res["read_secret"] == "ok", res


def test_probe_without_the_binding(monkeypatch):
    monkeypatch.setitem(sys.modules, "landlockpy", None)
    rep = sandbox.probe()
    assert not rep.active and "landlockpy" in rep.why and rep.label == "false"


def test_evaluator_require_refuses_and_auto_warns_once(monkeypatch):
    from kernelgym.evaluation import Evaluator

    monkeypatch.setattr(sandbox, "probe", lambda: sandbox.Report(False, why="no Landlock in this test"))
    with pytest.raises(RuntimeError, match="no Landlock in this test"):
        Evaluator(workers=1, os_sandbox="require")
    with pytest.raises(ValueError, match="os_sandbox"):
        Evaluator(workers=1, os_sandbox="sometimes")
    monkeypatch.setattr(sandbox, "_WARNED", [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Evaluator(workers=1).close()
        Evaluator(workers=1).close()
    said = [w for w in caught if "os_sandbox: false" in str(w.message)]
    assert len(said) == 1 and "no Landlock in this test" in str(said[0].message)


@pytest.mark.parametrize("exc, name", [
    (PermissionError(errno.EACCES, "Permission denied", "/etc/hostname"), "file_access"),
    (RuntimeError("unable to open file </etc/hostname> in read-only mode: Permission denied (13)"), "file_access"),
    (RuntimeError("The server socket has failed to bind. port: 0, code: -13, name: EACCES"), "network"),
    (RuntimeError("The client socket has failed to connect (errno: 13 - Permission denied)."), "network"),
    (PermissionError(errno.EPERM, "Operation not permitted"), "forbidden_call"),
    (ValueError("shapes do not match"), None),
    (FileNotFoundError(errno.ENOENT, "No such file", "/nope"), None),
])
def test_refusals_become_findings(exc, name):
    found = sandbox.denial(exc)
    assert (found[0] if found else None) == name
    wrapped = RuntimeError("candidate failed")
    wrapped.__cause__ = exc
    assert (sandbox.denial(wrapped) or (None,))[0] == name


def test_each_candidate_gets_a_fresh_triton_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", "/somewhere/shared")
    first = triton_cache.fresh_triton_cache(str(tmp_path))
    (tmp_path / os.path.basename(first) / "planted.cubin").write_bytes(b"x")
    second = triton_cache.fresh_triton_cache(str(tmp_path))
    assert first != second and os.environ["TRITON_CACHE_DIR"] == second
    assert not os.path.exists(first) and os.listdir(second) == []


def test_output_dir_is_private_and_cleared_when_its_owner_is_gone(tmp_path):
    from kernelgym.evaluation.evaluator import remove_stale_spill_dirs
    from kernelgym.evaluation.sandbox import SPILL_PREFIX

    d = sandbox.make_output_dir(str(tmp_path))
    assert os.path.basename(d).startswith(f"{SPILL_PREFIX}{os.getpid()}-w")
    assert oct(os.stat(d).st_mode & 0o777) == oct(0o700)
    assert remove_stale_spill_dirs(str(tmp_path)) == []          # its owner (us) is alive
    dead = tmp_path / f"{SPILL_PREFIX}999999999-wabc"
    dead.mkdir()
    assert remove_stale_spill_dirs(str(tmp_path)) == [dead.name]


def test_socket_refusal_is_a_network_finding():
    """seccomp's EPERM carries no path: raised inside Python's socket module it is ``network``, else
    (a signal Landlock scoped away, ptrace) ``forbidden_call``."""
    import socket

    # The frame seccomp's refusal surfaces in: socket.socket.__init__ in the standard library's socket.py.
    in_socket_py = compile("raise PermissionError(1, 'Operation not permitted')", socket.__file__, "exec")
    with pytest.raises(PermissionError) as info:
        exec(in_socket_py, {})
    assert sandbox.denial(info.value)[0] == "network"
    with pytest.raises(PermissionError) as info:
        raise PermissionError(errno.EPERM, "Operation not permitted")
    assert sandbox.denial(info.value)[0] == "forbidden_call"


def test_probe_and_require_without_seccomp(monkeypatch):
    """Landlock without the seccomp binding: "auto" confines with Landlock alone (and says so in the
    label and once in a warning); "require" refuses, naming what is missing."""
    from kernelgym.evaluation import Evaluator

    monkeypatch.setitem(sys.modules, "pyseccomp", None)
    assert "pyseccomp" in sandbox._seccomp_unusable()
    rep = sandbox.Report(True, abi=7, seccomp=False, seccomp_why=sandbox._seccomp_unusable())
    assert rep.label == "landlock-abi7" and not rep.complete and "pyseccomp" in rep.incomplete_why
    assert sandbox.Report(True, abi=7, seccomp=True).label == "landlock-abi7+seccomp"
    monkeypatch.setattr(sandbox, "probe", lambda: rep)
    with pytest.raises(RuntimeError, match="pyseccomp"):
        Evaluator(workers=1, os_sandbox="require")
    monkeypatch.setattr(sandbox, "_WARNED", [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Evaluator(workers=1).close()
    said = [str(w.message) for w in caught if "without the seccomp filter" in str(w.message)]
    assert len(said) == 1 and "landlock-abi7" in said[0], said


# ----------------------------------------------------------------------------- precompiled kernels

def _fake_child_cache(scratch):
    """A confined precompile process's scratch folder as it may look after a hostile candidate."""
    old = scratch / "triton-cache-1" / "OLDKEY"
    old.mkdir(parents=True)
    (old / "stale.cubin").write_bytes(b"from an earlier request")
    key = scratch / "triton-cache-3" / "KEY"
    key.mkdir(parents=True)
    (key / "add_kernel.cubin").write_bytes(b"\x7fELF cubin")
    (key / "__grp__add_kernel.json").write_text(json.dumps({"child_paths": {"add_kernel.cubin": str(key / "add_kernel.cubin")}}))
    (key / "secret.cubin").symlink_to("/etc/hostname")          # a link to a file the parent can read
    (scratch / "triton-cache-3" / "etc").symlink_to("/etc")      # a link to a folder
    (scratch / "triton-cache-3" / "stray").write_text("not Triton's layout")


def test_precompiled_kernels_are_filed_by_the_parent_and_unpacked_for_the_same_code(tmp_path, monkeypatch):
    import tarfile

    scratch, root = tmp_path / "child", tmp_path / "root"
    scratch.mkdir()
    _fake_child_cache(scratch)
    assert triton_cache.file_precompiled(str(scratch), "code A", root=str(root)) == 2
    archive = root / f"{triton_cache.candidate_digest('code A')}.tar"
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["KEY/__grp__add_kernel.json", "KEY/add_kernel.cubin"]
    assert oct(archive.stat().st_mode & 0o777) == oct(0o644)
    assert triton_cache.file_precompiled(str(tmp_path / "nothing"), "code B", root=str(root)) == 0

    monkeypatch.setattr(triton_cache, "_PRECOMPILED", [str(root)])
    monkeypatch.setenv("TRITON_CACHE_DIR", "/somewhere/shared")
    worker = tmp_path / "worker"
    worker.mkdir()
    mine = triton_cache.fresh_triton_cache(str(worker), "code A")
    assert sorted(p.name for p in (worker / os.path.basename(mine)).rglob("*")) == [
        "KEY", "__grp__add_kernel.json", "add_kernel.cubin"]
    assert (worker / os.path.basename(mine) / "KEY" / "add_kernel.cubin").read_bytes() == b"\x7fELF cubin"
    # the group file names the unpacked files, not the precompile process's cache (which a confined
    # GPU worker may not open: on an H100 a legitimate kernel was judged hack_detected so)
    group = json.loads((worker / os.path.basename(mine) / "KEY" / "__grp__add_kernel.json").read_text())
    assert group == {"child_paths": {"add_kernel.cubin": str(worker / os.path.basename(mine) / "KEY" / "add_kernel.cubin")}}
    other = triton_cache.fresh_triton_cache(str(worker), "code B")   # another candidate: nothing of A's
    assert os.listdir(other) == [] and not os.path.exists(mine)


def test_a_precompiled_group_file_keeps_only_names_in_its_folder():
    """A group file is written by the process that ran the candidate: its paths are reduced to
    file names in the unpacked folder, and one that does not parse makes Triton compile again."""
    moved = triton_cache._regroup(json.dumps({"child_paths": {"k.cubin": "/etc/../etc/passwd"}}).encode(), "/c/KEY")
    assert json.loads(moved) == {"child_paths": {"k.cubin": "/c/KEY/passwd"}}
    for bad in (b"not json", b"[]", b'{"child_paths": 3}', b"{}"):
        assert triton_cache._regroup(bad, "/c/KEY") == b"{}"


def test_precompiled_archives_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(triton_cache, "PRECOMPILED_KEEP", 3)
    scratch = tmp_path / "child"
    scratch.mkdir()
    _fake_child_cache(scratch)
    for i in range(5):
        triton_cache.file_precompiled(str(scratch), f"code {i}", root=str(tmp_path / "root"))
        os.utime(tmp_path / "root" / f"{triton_cache.candidate_digest(f'code {i}')}.tar", (i, i))
    left = sorted(os.listdir(tmp_path / "root"))
    assert left == sorted(f"{triton_cache.candidate_digest(f'code {i}')}.tar" for i in (2, 3, 4)), left


_GPU_CHILD = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, sys.argv[3])   # the checkout
    from kernelgym.evaluation import sandbox, triton_cache   # imports neither torch nor threads
    scratch, code = sys.argv[1:3]
    root = triton_cache.precompiled_root()
    rep = sandbox.confine("candidate", scratch, mode="auto", gpu_devices=True)
    res = {"active": rep.active}
    cache = triton_cache.fresh_triton_cache(scratch, code)
    res["unpacked"] = sorted(os.path.relpath(os.path.join(d, f), cache) for d, _, fs in os.walk(cache) for f in fs)
    for name, fn in (("list_root", lambda: os.listdir(root)),
                     ("write_root", lambda: open(os.path.join(root, "planted.tar"), "wb").write(b"x"))):
        try:
            fn()
            res[name] = "ok"
        except OSError as exc:
            res[name] = exc.errno
    print(json.dumps(res))
""")


@needs_sandbox
def test_confined_gpu_worker_reads_its_own_archive_and_nothing_else(tmp_path):
    """The archive reaches the confined worker through a folder it may open files in by name but
    neither list (other candidates' archives stay unknown to it) nor write."""
    shared = tmp_path / "cache"
    child = tmp_path / "child"
    child.mkdir()
    _fake_child_cache(child)
    # One thread, as a worker's environment keeps it (`pool.Role.env`): numpy's BLAS starts none.
    env = {**os.environ, "TRITON_CACHE_DIR": str(shared), "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    # The worker's root is derived from the shared cache's path, as the parent's is.
    root = str(shared.resolve()) + triton_cache.PRECOMPILED_SUFFIX
    assert triton_cache.file_precompiled(str(child), "code A", root=root) == 2
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    p = subprocess.run([sys.executable, "-c", _GPU_CHILD, str(scratch), "code A", str(Path(sandbox.__file__).parents[2])],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["active"] and res["unpacked"] == ["KEY/__grp__add_kernel.json", "KEY/add_kernel.cubin"], res
    assert res["list_root"] == errno.EACCES and res["write_root"] == errno.EACCES, res


@needs_sandbox
@pytest.mark.slow
def test_confined_precompile_files_its_kernels_for_the_candidates_gpu_worker(tmp_path, monkeypatch):
    """End to end on CPU: a confined precompile process compiles the softmax for sm_90 into its own
    cache; the shared cache stays empty and the parent files the cubin under the code's digest
    (the GPU side, where the worker loads it: tests/test_eval_gpu.py)."""
    import tarfile

    from kernelgym.evaluation.extract import extract_code
    from kernelgym.evaluation.precompile import Precompiler
    from tests.redteam.manifest import cases

    softmax = next(c for c in cases() if c.id == "legit/row_softmax")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))
    pre = Precompiler(1, timeout=240, os_sandbox=REQUIRE)
    try:
        rep = pre.precompile(softmax.task_source, softmax.source, 90, mode=softmax.mode)
    finally:
        pre.close()
    assert rep["ok"] and rep["filed"] >= 2, rep
    assert not list((tmp_path / "cache").rglob("*.cubin"))   # nothing written to the shared cache
    archive = tmp_path / f"cache{triton_cache.PRECOMPILED_SUFFIX}" / \
        f"{triton_cache.candidate_digest(extract_code(softmax.source).code)}.tar"
    with tarfile.open(archive) as tar:
        assert any(n.endswith("softmax_kernel.cubin") for n in tar.getnames()), tar.getnames()


def test_a_retired_triton_cache_is_gone_and_the_next_is_fresh(tmp_path, monkeypatch):
    """A worker retires its candidate's cache after the reply (off the evaluation's clock); the next
    `fresh_triton_cache` then has nothing to remove, and one never retired is removed there."""
    monkeypatch.setenv("TRITON_CACHE_DIR", "/somewhere/shared")
    first = triton_cache.fresh_triton_cache(str(tmp_path))
    (tmp_path / os.path.basename(first) / "planted.cubin").write_bytes(b"x")
    triton_cache.retire_triton_cache(str(tmp_path))
    assert not os.path.exists(first) and os.environ["TRITON_CACHE_DIR"] == first
    second = triton_cache.fresh_triton_cache(str(tmp_path))
    assert second != first and os.listdir(second) == []
    triton_cache.retire_triton_cache(str(tmp_path / "elsewhere"))   # not this scratch folder's cache: kept
    assert os.path.isdir(second)


def test_a_tool_that_is_a_script_brings_its_interpreter_and_real_binary(tmp_path):
    """Ubuntu's /sbin/ldconfig is a shell script running /sbin/ldconfig.real: a confined GPU worker
    (Triton runs ``ldconfig -p`` to find libcuda) must be allowed to execute all three."""
    wrapper = tmp_path / "ldconfig"
    wrapper.write_text('#!/bin/sh\nexec /sbin/ldconfig.real "$@"\n')
    (tmp_path / "ldconfig.real").write_bytes(b"\x7fELF")
    assert sandbox._script_parts(str(wrapper)) == [f"{wrapper}.real", "/bin/sh"]
    binary = tmp_path / "ptxas"
    binary.write_bytes(b"\x7fELF\x02\x01")
    assert sandbox._script_parts(str(binary)) == []


_COMPILER_CHILD = textwrap.dedent("""
    import json, os, subprocess, sys
    sys.path.insert(0, sys.argv[2])
    from kernelgym.evaluation import sandbox
    rep = sandbox.confine("precompile", sys.argv[1], mode="auto", gpu_tools=True)
    run = subprocess.run([os.environ["CC"], "-c", "x.c"], capture_output=True, text=True)
    print(json.dumps({"active": rep.active, "rc": run.returncode, "out": run.stdout + run.stderr}))
""")


@needs_sandbox
def test_a_compiler_under_its_own_prefix_may_run_its_passes(tmp_path):
    """The GPU image's C compiler is /opt/gcc/bin/gcc, whose passes live in /opt/gcc/libexec: with
    only the driver executable every launcher build failed with exit status 126. Here a compiler
    driver that runs its pass by a path relative to itself (no absolute path to find in it)."""
    prefix = tmp_path / "gcc"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "libexec").mkdir()
    driver, cc1 = prefix / "bin" / "gcc", prefix / "libexec" / "cc1"
    driver.write_text('#!/bin/sh\nexec "${0%/bin/gcc}/libexec/cc1" "$@"\n')
    cc1.write_text("#!/bin/sh\necho compiled\n")
    driver.chmod(0o755)
    cc1.chmod(0o755)
    assert str(prefix) in sandbox._compiler_parts(str(driver))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {**os.environ, "CC": str(driver), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", _COMPILER_CHILD, str(scratch), HERE], capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["active"] and res["rc"] == 0 and res["out"].strip() == "compiled", res


def test_a_wrapper_script_brings_the_executables_it_names(tmp_path):
    """A wrapper that hands on to a binary by absolute path (``exec /opt/x/gcc-13 "$@"``)."""
    real = tmp_path / "gcc-13"
    real.write_bytes(b"\x7fELF")
    real.chmod(0o755)
    (tmp_path / "notes.txt").write_text("x")
    wrapper = tmp_path / "gcc"
    wrapper.write_text(f'#!/bin/sh\n# see {tmp_path}/notes.txt\nexec {real} "$@"\n')
    assert sandbox._script_parts(str(wrapper)) == ["/bin/sh", str(real)]
