"""The Ray evaluation pool (kernelgym.cluster) on a local 2-CPU Ray instance, interpreter backend."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from kernelgym.cluster import parse_cluster
from kernelgym.cluster.ray_pool import EvalActor
from kernelgym.evaluation.reference import trial_seed
from tests._kernels import RELU, WRONG_RELU
from tests.eval_cases import CAND_ADD, CAND_LINEAR, REF_ADD, REF_LINEAR, add_variant

KILL_MARK = "# KILL_THE_ACTOR"

REF_RELU = """
import torch
import torch.nn as nn


class Model(nn.Module):
    def forward(self, x):
        return torch.relu(x)


def get_inputs():
    return [torch.randn(100)]


def get_init_inputs():
    return []
"""

PAIRS = [
    (REF_ADD, CAND_ADD),
    (REF_LINEAR, CAND_LINEAR),
    (REF_ADD, add_variant("", kernel_body="    tl.store(out_ptr + offs, x - y, mask=mask)\n")),
    (REF_ADD, add_variant("        raise IndexError('bad index in forward')\n")),
    (REF_ADD, "I could not write this kernel."),
    (REF_ADD, add_variant("        return x + y\n")),
]
EXPECTED = ["ok", "ok", "incorrect", "runtime_error", "format_error", "hack_detected"]


class ChaosActor(EvalActor):
    """An actor that dies (as on an OOM kill or a lost node) when it is handed a marked candidate."""

    def evaluate(self, reference, candidate, *args):  # type: ignore[no-untyped-def]
        if KILL_MARK in candidate:
            os._exit(1)
        return super().evaluate(reference, candidate, *args)


def _same(a, b) -> None:
    """Two verdicts agree on everything but wall times and cache provenance."""
    da, db = a.to_dict(), b.to_dict()
    for key in ("timings", "duration_s", "ptx"):
        da.pop(key), db.pop(key)
    assert da == db
    assert (a.ptx or {}).get("ok") == (b.ptx or {}).get("ok")


# ----------------------------------------------------------------------------- no Ray needed

def test_parse_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KERNELGYM_CLUSTER", raising=False)
    assert parse_cluster(None) == ("local", None)
    assert parse_cluster("local") == ("local", None)
    assert parse_cluster("ray") == ("ray", None)
    assert parse_cluster("ray://head:10001") == ("ray", "ray://head:10001")
    monkeypatch.setenv("KERNELGYM_CLUSTER", "ray://10.0.0.1:10001")
    assert parse_cluster(None) == ("ray", "ray://10.0.0.1:10001")
    assert parse_cluster("local") == ("local", None)  # an explicit argument wins over the env
    monkeypatch.setenv("KERNELGYM_CLUSTER", "slurm")
    with pytest.raises(ValueError, match="KERNELGYM_CLUSTER"):
        parse_cluster(None)
    with pytest.raises(ValueError, match="expected 'local', 'ray'"):
        parse_cluster("ray://")


def test_missing_ray_says_how_to_install(monkeypatch: pytest.MonkeyPatch, evaluator) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'kernelgym\[ray\]'"):
        evaluator.evaluate_batch([(REF_ADD, CAND_ADD)], "interpret", cluster="ray")


def test_unreachable_address_is_a_clear_error() -> None:
    pytest.importorskip("ray")
    env = {**os.environ, "RAY_CLIENT_INITIAL_CONNECTION_TIMEOUT_S": "1", "RAY_CLIENT_MAX_CONNECTION_TIMEOUT_S": "1",
           "KERNELGYM_CLUSTER": "ray://127.0.0.1:9"}
    code = ("from kernelgym.evaluation import evaluate_batch\n"
            "from kernelgym.cluster import ClusterError\n"
            "try:\n    evaluate_batch([('x', 'y')], 'interpret')\n"
            "except ClusterError as e:\n    print('CLUSTER_ERROR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert "CLUSTER_ERROR cannot connect to the Ray cluster at 'ray://127.0.0.1:9'" in out.stdout, out.stderr[-2000:]


def test_precompile_fills_the_triton_cache(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compile-ahead for sm_90 on this CPU: the kernels land in TRITON_CACHE_DIR, a second run hits them."""
    from kernelgym.evaluation.precompile import Precompiler

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    # Unconfined: under the OS sandbox a precompile process compiles into a cache of its own.
    pre = Precompiler(1, timeout=120, os_sandbox="off")
    try:
        pre.warm()   # started ahead; the first request uses that child
        warm = pre.pids()
        assert len(warm) == 1
        first = pre.precompile(REF_LINEAR, CAND_LINEAR, 90, seed=3)
        assert first["ok"], first
        assert [k["kernel"] for k in first["kernels"]] == ["scale_kernel"]
        entries = set(os.listdir(tmp_path))
        cubins = [f for d in entries for f in os.listdir(tmp_path / d) if f.endswith(".cubin")]
        assert cubins, "no cubin was written"
        pid = pre.pids()
        assert pid == warm
        second = pre.precompile(REF_LINEAR, CAND_LINEAR, 90, seed=4)
        assert second["ok"] and second["kernels"][0]["hash"] == first["kernels"][0]["hash"]
        assert set(os.listdir(tmp_path)) == entries  # a cache hit: nothing compiled again
        assert pre.pids() == pid  # the same warm child
        # Rejected by the static guards: never executed.
        hack = pre.precompile(REF_ADD, CAND_ADD.replace("import torch\n", "import torch\nimport subprocess\n"), 90)
        assert hack["skipped"] == "static_guards" and not hack["ok"]
        # A forward that raises an ordinary error: reported, and the warm child is kept.
        bad = pre.precompile(REF_ADD, add_variant("        raise IndexError('bad index in forward')\n"), 90)
        assert not bad["ok"] and "IndexError" in bad["error"] and pre.pids() == pid
        # One that leaves the process possibly unusable (out of memory) takes its child with it.
        oom = pre.precompile(REF_ADD, add_variant("        raise MemoryError('out of host memory')\n"), 90)
        assert not oom["ok"] and "MemoryError" in oom["error"] and pid[0] not in pre.pids(), oom
    finally:
        pre.close()
    assert not [p for p in pid if _alive(p)]


# ----------------------------------------------------------------------------- on a local Ray instance

@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    # The chaos actor class is defined here, in a module Ray's workers cannot import: ship it by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def pool(ray_session, evaluator):
    from kernelgym.cluster import RayPool, use_pool

    # One actor with one candidate worker (plus its reference and ptx workers): few processes to start.
    p = RayPool(cpu_actors=1, cpus_per_actor=1, evaluator=evaluator, actor_class=ChaosActor)
    use_pool(p)
    try:
        yield p
    finally:
        use_pool(None)
        p.close()


def test_ray_pool_matches_local_pool(pool, evaluator) -> None:
    local = evaluator.evaluate_batch(PAIRS, "interpret", seed=11)
    remote = pool.evaluate_batch(PAIRS, "interpret", seed=11)
    assert [v.status for v in remote] == EXPECTED
    for a, b in zip(remote, local):
        _same(a, b)
    assert len({s.info["node_id"] for s in pool._slots["cpu"] if s.info}) == 1  # one node here
    assert len(pool.actors()["cpu"]) == 1


def test_env_var_routes_evaluate_batch_to_ray(pool, evaluator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNELGYM_CLUSTER", "ray")
    before = pool.stats["evaluations"]
    vs = evaluator.evaluate_batch([(REF_RELU, RELU), (REF_RELU, WRONG_RELU)], "interpret", seed=5)
    assert [v.status for v in vs] == ["ok", "incorrect"]
    assert pool.stats["evaluations"] == before + 2


def test_actor_killed_mid_batch_is_replaced(pool) -> None:
    deaths = pool.stats["actor_deaths"]
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("v", pool.evaluate_batch(PAIRS * 2, "interpret",
                                                                                        seed=99)))
    thread.start()
    victim = None
    deadline = time.monotonic() + 60
    while victim is None and time.monotonic() < deadline:
        for slot in list(pool._slots["cpu"]):
            if not slot.dead and slot.info is not None and len(slot.inflight) >= 2:
                victim = slot
                break
        time.sleep(0.01)
    assert victim is not None, "no actor had evaluations in flight"
    orphans = pool.ray.get(victim.handle.worker_pids.remote())[1:]
    pool.ray.kill(victim.handle, no_restart=True)
    thread.join(timeout=240)
    assert not thread.is_alive()
    verdicts = result["v"]
    assert [v.status for v in verdicts] == EXPECTED * 2  # none lost, none duplicated, input order
    assert [v.seeds[0] for v in verdicts] == [trial_seed(99, 1000 + i) for i in range(len(PAIRS) * 2)]
    assert pool.stats["actor_deaths"] == deaths + 1
    assert pool.stats["retries"] >= 1 and pool.stats["duplicates_ignored"] == 0
    assert victim.dead and len(pool.actors()["cpu"]) == 1  # replaced
    # The dead actor's sandbox workers notice their parent is gone and exit.
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in orphans) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in orphans if _alive(pid)]


def test_candidate_killing_its_actor_twice_gets_crash(pool) -> None:
    killer = CAND_ADD + "\n" + KILL_MARK + "\n"
    crashes = pool.stats["crash_verdicts"]
    vs = pool.evaluate_batch([(REF_ADD, killer), (REF_ADD, "prose, no code"), (REF_ADD, CAND_ADD)], "interpret",
                             seed=3)
    assert [v.status for v in vs] == ["crash", "format_error", "ok"]
    assert "cluster:actor_died" in vs[0].reasons and vs[0].reward_components["correct"] == 0.0
    assert pool.stats["crash_verdicts"] == crashes + 1
    assert len(pool.actors()["cpu"]) == 1


def test_close_ends_actors_and_workers(pool) -> None:
    # After the kills above, the live actor may not have needed its workers yet: make it start them.
    assert [v.status for v in pool.evaluate_batch([(REF_ADD, CAND_ADD)], "interpret", seed=8)] == ["ok"]
    handles = pool.actors()["cpu"]
    pids = [pid for pids in pool.ray.get([h.worker_pids.remote() for h in handles]) for pid in pids]
    assert len(pids) > len(handles)  # the actors and their evaluators' worker processes
    pool.close()
    deadline = time.monotonic() + 30
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in pids if _alive(pid)]
        time.sleep(0.2)
    assert not alive


def test_actor_that_cannot_start_is_a_clear_error(ray_session, pool) -> None:
    from kernelgym.cluster import ClusterError, RayPool

    pool.close()  # (closed already unless a test above failed) its CPUs are needed here

    # A typo that the actors' Evaluator rejects: no replacement is started, the error says why.
    with RayPool(cpu_actors=1, evaluator_kwargs={"wrokers": 2}) as bad, \
            pytest.raises(ClusterError, match=r"(?s)actor failed to start.*wrokers"):
        bad.evaluate_batch([(REF_ADD, CAND_ADD)], "interpret")


def test_gpu_pipeline_precompiles_on_cpu_actors(ray_session, pool, evaluator, tmp_path) -> None:
    """The cuda path's scheduling on a Ray instance that declares one (fake) GPU: the CPU actor
    compiles ahead into the node's cache, and the "GPU" actor finds the kernels there."""
    from kernelgym.cluster import RayPool
    from kernelgym.evaluation import Evaluator

    pool.close()  # its 2 CPUs go to this pool's CPU actor and GPU actor
    # The actors copy this evaluator's settings: unconfined, since under the OS sandbox a precompile
    # process compiles into a cache of its own (no evaluator process is started here).
    unconfined = Evaluator(workers=evaluator.workers, memory_limit_mb=evaluator.memory_limit_mb,
                           timeout=evaluator.timeout, os_sandbox="off")
    with RayPool(cpu_actors=1, gpu_workers=1, max_in_flight=1, evaluator=unconfined, actor_class=FakeGPUActor,
                 triton_cache_dir=str(tmp_path)) as gp:
        assert gp.resolve_backend("auto") == "cuda"
        gp.warm("cuda")  # actors up and their GPU target known before the batch: precompiles go first
        vs = gp.evaluate_batch([(REF_ADD, CAND_ADD), (REF_LINEAR, CAND_LINEAR), (REF_ADD, "prose")], "cuda",
                               seed=11)
        assert [v.backend for v in vs] == ["fake-gpu"] * 3
        assert gp.stats["precompiled"] + gp.stats["evaluated_without_precompile"] + gp.stats["precompile_failed"] == 3
        assert gp.stats["precompiled"] >= 1
        seen = [int(v.notes[0].split("=")[1]) for v in vs]
        # Each precompiled candidate's kernel was in the cache before the GPU actor got it.
        assert max(seen) >= 1 and len(os.listdir(tmp_path)) >= 1
        caches = {s.info["triton_cache_dir"] for ss in gp._slots.values() for s in ss if s.info}
        assert caches == {str(tmp_path)}


class FakeGPUActor(ChaosActor):
    """Plays a GPU actor without a GPU: reports sm_90 and, instead of judging, records how many
    compiled kernels the node's Triton cache holds when the evaluation arrives."""

    def info(self):  # type: ignore[no-untyped-def]
        out = super().info()
        if self.role == "gpu":
            out["capability"] = 90
        return out

    def warm(self, backend):  # type: ignore[no-untyped-def]
        pass

    def evaluate(self, reference, candidate, backend, mode, seed, *args):  # type: ignore[no-untyped-def]
        from kernelgym.evaluation.verdict import Verdict

        cache = os.environ["TRITON_CACHE_DIR"]
        cubins = sum(f.endswith(".cubin") for d in os.listdir(cache) for f in os.listdir(os.path.join(cache, d)))
        return Verdict("ok", backend="fake-gpu", seeds=[seed], notes=[f"cubins={cubins}"]).to_dict()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
