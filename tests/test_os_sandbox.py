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

import pytest

from kernelgym.evaluation import sandbox

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_sandbox = pytest.mark.skipif(not sandbox.probe().active, reason=f"no OS sandbox: {sandbox.probe().why}")

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
    if rep.active:   # unconfined, the exec would succeed and replace this process
        attempt("exec_shell", lambda: os.execv("/bin/sh", ["/bin/sh", "-c", "true"]))
    res["tmpdir"] = __import__("tempfile").gettempdir()
    print(json.dumps(res))
""")


def _child(tmp_path, mode="require", threads=0):
    scratch, out = tmp_path / "scratch", tmp_path / "out"
    scratch.mkdir()
    out.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("the evaluator's secret")
    env = {**os.environ, "PYTHONPATH": HERE, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
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
    assert res["tcp_bind"] == errno.EACCES, res
    assert res["signal_parent"] == errno.EPERM, res
    assert res["exec_shell"] == errno.EACCES, res
    assert res["tmpdir"] == os.path.realpath(scratch), res   # its temporary files stay in its folder


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
    first = sandbox.fresh_triton_cache(str(tmp_path))
    (tmp_path / os.path.basename(first) / "planted.cubin").write_bytes(b"x")
    second = sandbox.fresh_triton_cache(str(tmp_path))
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
