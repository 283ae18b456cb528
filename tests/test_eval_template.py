"""Workers forked from a warm template process (`evaluation.template`): each has its role's
environment, session and OS sandbox; a crashed worker is replaced without importing torch again; a
dead template is replaced; a template that cannot fork leaves the pool starting workers by exec;
nothing outlives the evaluator or its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kernelgym.evaluation import Evaluator, sandbox, template
from kernelgym.evaluation.pool import Role, Worker, tree_cpu_seconds
from tests._procs import alive as _alive
from tests.eval_cases import CAND_ADD, REF_ADD, add_variant

B = "interpret"
ROOT = Path(__file__).resolve().parents[1]



def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[1])


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def _wait_dead(pids: list[int], seconds: float = 20.0) -> list[int]:
    end = time.monotonic() + seconds
    while time.monotonic() < end and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def test_forked_workers_have_their_roles_environment_session_and_sandbox(evaluator):
    assert evaluator.evaluate(REF_ADD, CAND_ADD, backend=B).status == "ok"
    cand, ref = evaluator.pool("candidate", B), evaluator.pool("reference", B)
    cw, rw = cand.acquire(), ref.acquire()
    try:
        for w in (cw, rw):
            w.wait_ready()
            assert w.forked, "the worker was exec'd, not forked from the template"
            assert _ppid(w.pid) == (cand if w is cw else ref)._template.pid
            assert os.getsid(w.pid) == w.pid and os.getpgid(w.pid) == w.pid   # its own session and group
        # Each reads its role's variables after the fork (/proc/PID/environ shows the template's, as
        # exec'd): TRITON_INTERPRET for the candidate only, each its own scratch folder.
        assert cw.info["device"] == "cpu (triton interpreter)" and rw.info["device"] == "cpu"
        assert cw.info["tmpdir"] == cw.scratch and rw.info["tmpdir"] == rw.scratch
        # The candidate confined itself after the fork; the reference runs no candidate code.
        probe = sandbox.probe()
        assert cw.info["versions"]["os_sandbox"] == probe.label
        assert rw.info["versions"]["os_sandbox"] == "false"
        # Nothing of the template's stays open in a worker: stdio (its own log) and its one socket.
        for w in (cw, rw):
            fds = {int(f): os.readlink(f"/proc/{w.pid}/fd/{f}") for f in os.listdir(f"/proc/{w.pid}/fd")}
            assert fds[1] == fds[2] == w.log_path, fds
            assert [t for f, t in fds.items() if f > 2 and not t.startswith("socket:")] == [], fds
            assert sum(t.startswith("socket:") for t in fds.values()) == 1, fds
        # The templates never ran a role (no role variables); Triton was imported interpreted in the
        # candidates' template only (it decorates tl.max and the like at import).
        tenv, renv = _environ(cand._template.pid), _environ(ref._template.pid)
        assert not set(template.ROLE_KEYS) & (set(tenv) | set(renv))
        assert tenv.get("TRITON_INTERPRET") == "1" and "TRITON_INTERPRET" not in renv
        # Reference and ptx workers share one template: one per environment. (The session's
        # evaluator made its pools in different tests, so pytest's PYTEST_CURRENT_TEST may differ.)
        ptx = evaluator.pool("ptx", B)._template

        def env(t: template.Template) -> dict[str, str]:
            return {k: v for k, v in t.env.items() if k != "PYTEST_CURRENT_TEST"}

        assert env(ptx) == env(ref._template) != env(cand._template)
        if ptx.env == ref._template.env and ptx.alive and ref._template.alive:
            assert ptx is ref._template
    finally:
        cand.release(cw)
        ref.release(rw)


def test_triton_library_functions_are_interpreted_in_forked_candidates(evaluator):
    """tl.max is a @triton.jit function of Triton's own library, decorated when triton is imported:
    interpreted only if TRITON_INTERPRET was set before, in the template (it once was not: "Cannot
    call @triton.jit'd outside of the scope of a kernel")."""
    body = "    m = tl.max(x, axis=0)\n    tl.store(out_ptr + offs, x + y + (m - m), mask=mask)\n"
    v = evaluator.evaluate(REF_ADD, add_variant("", kernel_body=body), backend=B)
    assert v.status == "ok", v.error


def test_a_cold_evaluation_starts_its_templates_side_by_side():
    """Every template of a cold evaluation starts before the first is ready (each imports torch for
    seconds): they once started one after the other, the candidates' template, then the reference's."""
    with Evaluator(workers=1, reference_workers=1, ptx_workers=1, timeout=60) as ev:
        assert ev.evaluate(REF_ADD, CAND_ADD, backend=B).status == "ok"
        ts = [ev.pool(r, B)._template for r in ("candidate", "reference", "ptx")]
        assert all(t is not None and t.ready_at is not None for t in ts)
        assert max(t.started_at for t in ts) < min(t.ready_at for t in ts), \
            [(t.started_at, t.ready_at) for t in ts]


def test_a_crashed_worker_is_replaced_by_a_fork_not_a_fresh_import(evaluator):
    pool = evaluator.pool("candidate", B)
    pool.warm()
    started = pool.started
    v = evaluator.evaluate(REF_ADD, add_variant("        import os\n        os._exit(3)\n"), backend=B,
                           skip_static_guards=True)
    assert v.status == "crash" and "exited with code 3" in v.error   # the template reported the code
    assert pool.started == started + 1
    w = pool.acquire()
    try:
        t = time.perf_counter()
        w.wait_ready()
        # An exec'd worker spends seconds of CPU importing torch, Triton and dynamo; a fork, almost none.
        assert w.forked and tree_cpu_seconds(w.pid) < 1.0, (tree_cpu_seconds(w.pid), time.perf_counter() - t)
    finally:
        pool.release(w)
    assert evaluator.evaluate(REF_ADD, CAND_ADD, backend=B).status == "ok"


def test_a_killed_template_is_replaced_and_its_workers_with_it():
    with Evaluator(workers=1, reference_workers=1, ptx_workers=1, timeout=60) as ev:
        assert ev.evaluate(REF_ADD, CAND_ADD, backend=B).status == "ok"
        pool = ev.pool("candidate", B)
        old = pool._template
        workers = [p for p in ev.worker_pids() if _ppid(p) == old.pid]
        others = [p for p in ev.worker_pids() if _ppid(p) != old.pid]   # the other template's (reference, ptx)
        assert workers and others
        os.kill(old.pid, signal.SIGKILL)
        assert not _wait_dead([old.pid, *workers]), "the workers of a dead template must not live on"
        assert all(_alive(p) for p in others)
        v = ev.evaluate(REF_ADD, CAND_ADD, backend=B)
        assert v.status == "ok", v.error
        assert pool._template is not old and pool._template.alive
        live = [p for p in pool.pids() if _alive(p)]   # a dead idle worker is replaced when next taken
        assert live and all(_ppid(p) == pool._template.pid for p in live)
        assert all(_alive(p) for p in others)
        new = pool._template.pid
    assert _wait_dead([new]) == [], "the template outlived the evaluator"


def test_a_template_that_cannot_start_leaves_workers_to_exec(tmp_path):
    env = Role("reference", B).env(None)
    # kernelgym cannot be imported there (a package of that name that fails first on the path, so
    # also where kernelgym is installed editable)
    (tmp_path / "kernelgym").mkdir()
    (tmp_path / "kernelgym" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env["PYTHONPATH"] = str(tmp_path)
    env["PYTHONSAFEPATH"] = "1"
    t = template.Template(template.template_env(env))
    try:
        assert not t.wait_ready(60) and t.state == "unusable" and "before it was ready" in t.why
        with pytest.raises(template.TemplateError):
            t.spawn("reference", env, 0, 0)
        w = Worker(Role("reference", B), None, None, t)
        try:
            assert not w.forked and w.wait_ready()["type"] == "ready"
        finally:
            w.close()
    finally:
        t.close()


def test_start_method_is_checked(monkeypatch):
    monkeypatch.setenv(template.START_ENV, "exec")
    assert template.start_method() == "exec"
    monkeypatch.setenv(template.START_ENV, "spawn")
    with pytest.raises(ValueError, match="KERNELGYM_WORKER_START"):
        template.start_method()


def test_template_and_workers_end_with_their_parent(tmp_path):
    """A parent killed outright (no close) leaves neither its template nor its workers behind."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from kernelgym.evaluation import Evaluator
        ev = Evaluator(workers=1, reference_workers=1, ptx_workers=1)
        pool = ev.pool("candidate", "interpret")
        pool.warm()
        print(pool._template.pid, *ev.worker_pids(), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) >= 2, out.stderr[-2000:]
    assert not _wait_dead(pids), "template or workers outlived their parent"


@pytest.mark.gpu
def test_forked_cuda_workers_see_their_pinned_gpu_and_the_template_never_initialises_cuda():
    """The template may have loaded libcuda (torch's imports do on some images) but never
    initialised it: its forked workers initialise CUDA themselves and judge on the GPU."""
    import torch

    with Evaluator(workers=1, reference_workers=1, timeout=120) as ev:
        assert ev.evaluate(REF_ADD, CAND_ADD, backend="cuda").status == "ok"
        pool = ev.pool("candidate", "cuda")
        w = pool.acquire()
        try:
            assert w.forked and w.info["device"] == torch.cuda.get_device_name(0)
            assert w.info["capability"] == list(torch.cuda.get_device_capability(0))
            assert pool._template.why == "", pool._template.why
        finally:
            pool.release(w)


def test_precompile_is_a_pool_role_forked_and_confined_like_the_others():
    from kernelgym.evaluation.precompile import Precompiler

    pre = Precompiler(1, timeout=60)
    try:
        pre.warm()
        w = pre._pool.acquire()
        try:
            info = w.wait_ready()
            assert w.forked and w.role.name == "precompile" and info["device"] == "cpu"
            assert info["versions"]["os_sandbox"] == sandbox.probe().label
        finally:
            pre._pool.release(w)
        pids = pre.pids()
        assert pids and pre.started == 1
    finally:
        pre.close()
    assert not _wait_dead(pids)


def test_each_interpreted_candidate_gets_a_fresh_process(evaluator):
    """The interpreter stores to host memory without bounds checks, so a candidate may corrupt its
    worker's heap (and still be judged ok): the worker is never given another candidate."""
    assert evaluator.evaluate(REF_ADD, CAND_ADD, backend=B).status == "ok"
    pool = evaluator.pool("candidate", B)
    before = set(pool.pids())
    assert evaluator.evaluate(REF_ADD, CAND_ADD, backend=B).status == "ok"
    after = set(pool.pids())
    assert before and len(before - after) == 1, (before, after)   # the one that served it is gone
    # ... and the CPU it spent still counts for its role
    assert pool.retired_cpu_s > 0 and evaluator.cpu_seconds()["candidate"] >= pool.retired_cpu_s


def test_a_loaded_but_uninitialised_cuda_driver_does_not_stop_the_fork():
    """Whether CUDA or NVML was initialised is asked of the loaded library; loaded alone is fine."""
    from kernelgym.evaluation.template import _drivers_initialised

    maps = ("7f00-7f01 r-xp 00000000 08:01 42 /usr/lib/x86_64-linux-gnu/libcuda.so.580.159.04\n"
            "7f02-7f03 r-xp 00000000 08:01 43 /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.580.159.04\n"
            "7f04-7f05 rw-p 00000000 00:00 0 \n")
    asked: list[tuple[str, str, int]] = []

    def never(path, symbol, code):
        asked.append((os.path.basename(path), symbol, code))
        return False

    assert _drivers_initialised(maps, never) == ""
    assert asked == [("libcuda.so.580.159.04", "cuDeviceGetCount", 3),
                     ("libnvidia-ml.so.580.159.04", "nvmlDeviceGetCount_v2", 1)]
    why = _drivers_initialised(maps, lambda path, symbol, code: "nvidia-ml" in path)
    assert why.startswith("libnvidia-ml.so was initialised")
    assert _drivers_initialised("", never) == ""
    # A library that cannot be asked counts as initialised: the pool then starts workers by exec.
    assert template._initialised("/nonexistent/libcuda.so.1", "cuDeviceGetCount", 3) is True
