"""Pool layout over GPUs, the GPU lock and its worker protocol, the output relay, reference rebuilds,
timing plans: everything of the throughput design that runs without a GPU."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from kernelgym.evaluation import Evaluator, Verdict, codec
from kernelgym.evaluation.jobs import Fingerprints, GpuSections, fingerprint
from kernelgym.evaluation.pool import GpuLock, Role, WorkerFailure, physical_device, split_counts
from kernelgym.evaluation.protocol import DEFAULT_BENCH, bench_budget
from kernelgym.evaluation.timing import plan, replan, summarize
from tests.eval_cases import CAND_ADD, REF_ADD

B = "interpret"


# ----------------------------------------------------------------------------- devices

def test_physical_device_mapping():
    assert physical_device(1, None) == "1"
    assert physical_device(1, "4,6") == "6"
    assert physical_device(0, "GPU-aaaa, GPU-bbbb") == "GPU-aaaa"
    with pytest.raises(ValueError, match="not visible"):
        physical_device(2, "4,6")
    with pytest.raises(ValueError):
        physical_device(-1, None)


def test_split_counts():
    assert split_counts(16, 1) == [16]
    assert split_counts(16, 3) == [6, 5, 5]
    assert split_counts(1, 2) == [1, 1]  # every GPU gets at least one worker
    assert sum(split_counts(17, 8)) == 17
    with pytest.raises(ValueError):
        split_counts(4, 0)


def test_role_env_pins_one_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    env = Role("candidate", "cuda", 1).env(0.25)
    assert env["CUDA_VISIBLE_DEVICES"] == "5" and env["KERNELGYM_GPU_FRACTION"] == "0.25"
    assert "TRITON_INTERPRET" not in env
    assert Role("ptx", "interpret").env(None)["CUDA_VISIBLE_DEVICES"] == ""
    assert Role("candidate", "interpret").env(None)["TRITON_INTERPRET"] == "1"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert Role("reference", "cuda", 3).env(None)["CUDA_VISIBLE_DEVICES"] == "3"
    assert "CUDA_VISIBLE_DEVICES" not in Role("candidate", "cuda").env(None)  # unpinned: inherits


def test_evaluator_layout_over_gpus():
    # No worker starts: pools are created lazily and spawn on acquire.
    with Evaluator(workers=5, reference_workers=3, devices=[0, 1]) as ev:
        assert ev.devices == [0, 1]
        sizes = {d: (ev.pool("candidate", "cuda", d).size, ev.pool("reference", "cuda", d).size) for d in (0, 1)}
        assert sizes == {0: (3, 2), 1: (2, 1)}
        assert ev.pool("candidate", "cuda", 1).role == Role("candidate", "cuda", 1)
        assert ev.pool("candidate", "cuda", 0).gpu_fraction == pytest.approx(2 / 3)
        assert ev.pool("candidate", "cuda") is ev.pool("candidate", "cuda", 0)
        with pytest.raises(ValueError, match="not one of"):
            ev.pool("candidate", "cuda", 2)
        assert ev.gpu_lock(0) is ev.gpu_lock(0) and ev.gpu_lock(0) is not ev.gpu_lock(1)
        # Evaluations go to the GPU with the fewest in flight.
        picks = [ev.pick_device() for _ in range(4)]
        assert picks == [0, 1, 0, 1]
        ev.done_device(1)
        ev.done_device(1)
        assert ev.pick_device() == 1
        assert ev.worker_pids() == []
    with pytest.raises(ValueError):
        Evaluator(devices=[0, 0])
    with pytest.raises(ValueError, match="unknown timing option"):
        Evaluator(bench={"reps": 3})
    with pytest.raises(ValueError, match="unknown GPU lock policy"):
        Evaluator(gpu_lock_policy="fifo")
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="precompile_workers must be an int >= 0"):
            Evaluator(precompile_workers=bad)


class _StartedGpuPool:
    """Stands in for a started cuda pool of GPU 0: its workers report an sm_90 device."""

    retired_cpu_s = 0.0

    def ready_info(self):
        return {"type": "ready", "capability": [9, 0]}

    def pids(self):
        return []

    def shutdown(self):
        pass


def test_evaluator_precompiles_for_its_gpus_target(tmp_path, monkeypatch):
    """The parent never touches CUDA: the target comes from a started worker's ready message. The
    candidate's kernels land in the Triton cache (sm_90, compiled on this CPU), the compile
    processes' CPU time is counted, and closing the evaluator ends them."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    with Evaluator(workers=1, precompile_workers=1) as off:
        off._pools[Role("candidate", "cuda", 0)] = _StartedGpuPool()
        assert off.gpu_capability(0) == (9, 0) and off.precompile(REF_ADD, CAND_ADD, 0, "strict", 1) is not None
        assert off.gpu_capability(1) is None and off.precompile(REF_ADD, CAND_ADD, 1, "strict", 1) is None
        off._pools.clear()
    with Evaluator(workers=1) as ev:   # precompile_workers=0: off
        ev._pools[Role("candidate", "cuda", 0)] = _StartedGpuPool()
        assert ev.precompile(REF_ADD, CAND_ADD, 0, "strict", 1) is None
        ev._pools.clear()
    # Unconfined: under the OS sandbox a precompile process compiles into a cache of its own.
    ev = Evaluator(workers=1, precompile_workers=1, os_sandbox="off")
    try:
        ev._pools[Role("reference", "cuda", 0)] = _StartedGpuPool()
        rep = ev.precompile(REF_ADD, CAND_ADD, 0, "strict", 1).result(timeout=180)
        assert rep["ok"] and [k["kernel"] for k in rep["kernels"]] == ["add_kernel"], rep
        assert list(tmp_path.rglob("add_kernel.cubin")), "nothing was compiled for sm_90"
        pids = ev._precompiler.pids()
        assert pids and ev.cpu_seconds()["precompile"] > 0
    finally:
        ev.close()
    assert all(not os.path.exists(f"/proc/{p}") or open(f"/proc/{p}/stat").read().split()[2] == "Z" for p in pids)


# ----------------------------------------------------------------------------- the GPU lock

def test_gpu_lock_shared_exclusive_writer_preference():
    lock = GpuLock()
    lock.acquire("shared")
    lock.acquire("shared")
    got = []
    writer = threading.Thread(target=lambda: (lock.acquire("exclusive"), got.append("w")))
    writer.start()
    time.sleep(0.1)
    assert got == [] and lock.state == (2, False, 1)
    reader = threading.Thread(target=lambda: (lock.acquire("shared"), got.append("r")))
    reader.start()
    time.sleep(0.1)
    assert got == []  # a waiting writer keeps new readers out
    lock.release("shared")
    lock.release("shared")
    writer.join(2)
    assert got == ["w"]
    lock.release("exclusive")
    reader.join(2)
    assert got == ["w", "r"] and lock.state == (1, False, 0)
    lock.release("shared")
    with pytest.raises(ValueError):
        lock.acquire("sideways")


@pytest.mark.parametrize("policy", ["phase_fair", "writers_first"])
def test_gpu_lock_policy_orders_a_queue_of_timings(policy):
    """Two timings queued while a correctness run waits: phase_fair lets the run in between them,
    writers_first only after both."""
    lock = GpuLock(policy)
    got, lock_log = [], threading.Lock()

    def take(mode, name):
        lock.acquire(mode)
        with lock_log:
            got.append(name)

    lock.acquire("exclusive")                                    # a timing runs
    w2 = threading.Thread(target=take, args=("exclusive", "w2"))
    w2.start()
    while lock.state[2] < 1:
        time.sleep(0.001)
    r = threading.Thread(target=take, args=("shared", "r"))
    r.start()
    time.sleep(0.1)
    assert got == []
    lock.release("exclusive")                                    # the first timing ends
    time.sleep(0.1)
    if policy == "phase_fair":
        assert got == ["r"] and lock.state == (1, False, 1)      # the run goes first; the next timing waits for it
        r.join(2)
        lock.release("shared")
        w2.join(2)
        assert got == ["r", "w2"]
        late = threading.Thread(target=take, args=("shared", "late"))
        late.start()
        time.sleep(0.1)
        assert got == ["r", "w2"]                                # one that comes during a timing waits for its end
        lock.release("exclusive")
        late.join(2)
        lock.release("shared")
    else:
        assert got == ["w2"]
        w2.join(2)
        lock.release("exclusive")
        r.join(2)
        assert got == ["w2", "r"]
        lock.release("shared")
    assert lock.state == (0, False, 0)
    with pytest.raises(ValueError, match="unknown GPU lock policy"):
        GpuLock("fifo")


@pytest.mark.parametrize("policy", ["phase_fair", "writers_first"])
def test_gpu_lock_never_mixes_timings_with_other_work_and_never_stalls(policy):
    import random

    lock, inside, errors = GpuLock(policy), {"shared": 0, "exclusive": 0, "background": 0}, []
    guard = threading.Lock()

    def worker(seed):
        rng = random.Random(seed)
        for _ in range(150):
            mode = rng.choice(["shared", "shared", "shared", "exclusive", "background"])
            lock.acquire(mode)
            with guard:
                inside[mode] += 1
                if inside["exclusive"] and (inside["exclusive"] > 1 or inside["shared"] or inside["background"]):
                    errors.append(dict(inside))
            time.sleep(rng.random() * 0.0005)
            with guard:
                inside[mode] -= 1
            lock.release(mode)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "the lock stalled"
    assert errors == [] and lock.state == (0, False, 0) and lock.background == 0


def test_gpu_lock_background_keeps_timings_out_but_not_correctness_runs():
    lock = GpuLock()
    lock.acquire("background")   # a torch.compile baseline's first call
    got = []
    writer = threading.Thread(target=lambda: (lock.acquire("exclusive"), got.append("w")))
    writer.start()
    time.sleep(0.1)
    assert got == [] and lock.state == (0, False, 1)  # a timing waits for the background section
    reader = threading.Thread(target=lambda: (lock.acquire("shared"), got.append("r")))
    reader.start()
    reader.join(2)
    assert got == ["r"]  # ... but correctness runs still go: the timing could not start anyway
    late = threading.Thread(target=lambda: (lock.acquire("background"), got.append("b")))
    late.start()
    time.sleep(0.1)
    assert got == ["r"]  # a new background section queues behind the waiting timing
    lock.release("shared")
    time.sleep(0.1)
    assert got == ["r"]  # the first background section still runs
    lock.release("background")
    writer.join(2)
    assert got == ["r", "w"] and lock.background == 0
    lock.release("exclusive")
    late.join(2)
    assert got == ["r", "w", "b"] and lock.background == 1
    lock.release("background")
    assert lock.state == (0, False, 0) and lock.background == 0


def test_resident_memory_of_a_worker_and_of_its_tree():
    import subprocess
    import sys

    from kernelgym.evaluation.pool import rss_bytes, tree_rss_bytes

    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(64 << 20); time.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while rss_bytes(child.pid) < 64 << 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        own = rss_bytes(os.getpid())
        assert rss_bytes(child.pid) >= 64 << 20
        assert tree_rss_bytes(os.getpid()) >= own + (64 << 20)   # the child's memory counts in the tree
    finally:
        child.kill()
        child.wait()
    assert rss_bytes(child.pid) == 0   # gone: nothing to read


def test_gpu_lock_occupancy_charges_each_state(monkeypatch):
    """occupancy(): seconds exclusive, draining (a timing waits for shared holders), shared, idle."""
    import kernelgym.evaluation.pool as pool_mod

    clock = [100.0]
    monkeypatch.setattr(pool_mod.time, "perf_counter", lambda: clock[0])
    lock = GpuLock()
    clock[0] += 1.0                      # idle 1
    lock.acquire("shared")
    clock[0] += 2.0                      # shared 2
    writer = threading.Thread(target=lock.acquire, args=("exclusive",))
    writer.start()
    while lock.state[2] == 0:            # the timing now waits
        time.sleep(0.001)
    clock[0] += 3.0                      # draining 3
    lock.release("shared")
    writer.join(2)
    clock[0] += 4.0                      # exclusive 4
    lock.release("exclusive")
    clock[0] += 0.5                      # idle 0.5
    assert lock.occupancy() == {"exclusive": 4.0, "draining": 3.0, "shared": 2.0, "idle": 1.5}
    # The timing's hold: from the end of the drain to its release, in perf_counter time.
    assert lock.exclusive_spans() == [(106.0, 110.0)]
    assert lock.exclusive_spans(since=110.5) == []
    lock.acquire("exclusive")
    clock[0] += 1.0
    lock.release("exclusive")
    assert lock.exclusive_spans(since=110.5) == [(110.5, 111.5)]
    lock.release("exclusive")            # a stray release records nothing
    assert len(lock.exclusive_spans()) == 2


def test_gpu_section_lets_go_when_its_sync_meets_a_faulted_context(monkeypatch):
    """A kernel fault makes every later CUDA call fail: the section's closing sync must not replace
    what the section returned (the job's `crash` result), and the lock must still be let go."""
    from kernelgym.evaluation import jobs

    sent, replies = [], []

    def send(blob):
        sent.append(codec.decode(blob)["mode"])
        if sent[-1] != "release":
            replies.append(codec.encode({"type": "granted"}))

    def faulted(device):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(jobs, "sync", faulted)
    g = GpuSections(send, lambda: replies.pop(0), enabled=True, cuda=True)

    def job():
        with g.hold("shared"):
            return {"status": "crash"}

    assert job() == {"status": "crash"}
    assert sent == ["shared", "release"] and g.mode is None and "illegal memory access" in g.fault


def test_gpu_sections_messages():
    sent, replies = [], []

    def send(blob):
        sent.append(codec.decode(blob))
        if sent[-1]["mode"] != "release":
            replies.append(codec.encode({"type": "granted"}))

    g = GpuSections(send, lambda: replies.pop(0), enabled=True, cuda=False)
    with g.hold("shared"):
        assert g.mode == "shared"
        with g.released():
            assert g.mode is None
        assert g.mode == "shared"
        with g.hold("shared"):  # nested: already covered, no message
            pass
    assert [m["mode"] for m in sent] == ["shared", "release", "shared", "release"]
    off = GpuSections(send, lambda: replies.pop(0), enabled=False)
    with off.hold("exclusive"):
        pass
    assert len(sent) == 4


LOCK_SECTIONS = r"""
import json, os, sys, tempfile
os.environ["TRITON_INTERPRET"] = "1"
from kernelgym.evaluation import candidate, codec, reference
from kernelgym.evaluation.jobs import GpuSections
from tests.eval_cases import CAND_ADD, REF_ADD

sent, replies = [], []

def send(blob):
    mode = codec.decode(blob)["mode"]
    sent.append(mode)
    if mode != "release":
        replies.append(codec.encode({"type": "granted"}))

state = {"gpu": GpuSections(send, lambda: replies.pop(0), enabled=True, cuda=False), "tmpdir": tempfile.mkdtemp()}
steps = {}
ref = reference.run_reference(state, {"key": "k", "source": REF_ADD, "seed": 1, "trials": 4, "device": "cpu",
                                      "want_ops": False}, lambda p: None)
steps["reference"], sent[:] = list(sent), []
msg = {"source": CAND_ADD, "mode": "strict", "device": "cpu", "task": REF_ADD, "seed": 1,
       "trial_seeds": ref["seeds"], "n_check": 3, "reference_ops": None, "reference_aliases_input": False}
out = candidate.run_candidate(state, msg, lambda p: None)
steps["candidate"], sent[:] = list(sent), []
fin = candidate.final_trial(state, {}, lambda p: None)
steps["final"] = list(sent)
print(json.dumps({"steps": steps, "statuses": [ref["status"], out["status"], fin["status"]]}))
"""


def test_jobs_take_the_gpu_lock_in_few_sections():
    """Each GPU-lock section is a round trip to the parent that may wait behind queued timings: the
    reference build is one section, the candidate job two (its inputs; weights, inputs and every
    trial), the final trial and graph replay one. Run in a child: the candidate job installs the
    runtime guard in its process."""
    import json
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    out = subprocess.run([sys.executable, "-c", LOCK_SECTIONS], capture_output=True, text=True, env=env, cwd=root,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["statuses"] == ["ok", "ran", "ran"]
    section = ["shared", "release"]
    assert got["steps"] == {"reference": section, "candidate": section * 2, "final": section}


def _ref_request(key: str) -> dict:
    return {"op": "reference", "key": key, "source": REF_ADD, "seed": 1, "trials": 3, "device": "cpu",
            "want_ops": False}


def test_worker_waits_for_the_lock_and_releases_it(evaluator):
    pool = evaluator.pool("reference", B)
    w = pool.acquire()
    try:
        w.wait_ready()  # a cold worker imports torch first: not what this test waits for
        lock = GpuLock()
        lock.acquire("exclusive")  # a timing in progress
        out = {}
        t = threading.Thread(target=lambda: out.update(reply=w.request(_ref_request("lock-test"), 30, gpu=lock)))
        t.start()
        time.sleep(1.0)
        assert t.is_alive() and "reply" not in out  # the reference's first GPU section waits
        lock.release("exclusive")
        t.join(60)
        assert out["reply"]["status"] == "ok", out
        assert w.lock_wait_s >= 0.9
        assert lock.state == (0, False, 0)  # released at the end of every section
        w.request({"op": "drop", "key": "lock-test"}, 30)
    finally:
        pool.release(w)


def test_lock_released_when_worker_dies(evaluator):
    pool = evaluator.pool("candidate", B)
    w = pool.acquire()
    lock = GpuLock()
    cand = CAND_ADD.replace("        out = torch.empty_like(x)\n", "        import os\n        os._exit(3)\n")
    msg = {"op": "candidate", "source": cand, "mode": "strict", "device": "cpu", "task": REF_ADD, "seed": 2,
           "trial_seeds": [11, 12, 13], "n_check": 3, "reference_ops": None, "reference_aliases_input": False}
    try:
        with pytest.raises(WorkerFailure):
            w.request(msg, 60, gpu=lock)
        assert lock.state == (0, False, 0)
    finally:
        pool.release(w, recycle=True)


# ----------------------------------------------------------------------------- relay, fingerprints, rebuilds

def test_raw_tensor_relay_roundtrip():
    value = {"outputs": [[torch.randn(3, 5), torch.arange(4)], [torch.ones(2, dtype=torch.bfloat16)]], "n": 1}
    raw = codec.decode(codec.encode(value), raw_tensors=True)
    first = raw["outputs"][0][0]
    assert isinstance(first, codec.RawTensor) and first.shape == [3, 5] and first.nbytes == 60
    back = codec.decode(codec.encode({"relayed": raw["outputs"]}))["relayed"]
    for a, b in zip([t for ts in value["outputs"] for t in ts], [t for ts in back for t in ts]):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_spilled_outputs_relay_through_a_file_the_parent_named(tmp_path):
    """A candidate worker writes its outputs to the file the parent named; the parent relays a
    reference to it; only a trusted message may name a file to read."""
    value = {"outputs": [[torch.randn(300, 5), torch.arange(4)], [torch.ones(2, dtype=torch.bfloat16)]], "n": 1}
    spill = str(tmp_path / "0.bin")
    blob = codec.encode(value, spill=spill)
    assert len(blob) < 1000 and os.path.getsize(spill) == 300 * 5 * 4 + 4 * 8 + 2 * 2
    with pytest.raises(codec.CodecError, match="none was named"):
        codec.decode(blob)                                       # the parent names the file, never the worker
    raw = codec.decode(blob, raw_tensors=True, spill=spill)
    first = raw["outputs"][0][0]
    assert first.data is None and first.file == spill and first.nbytes == 6000
    relay = codec.encode({"relayed": raw["outputs"]})            # what the parent sends the reference worker
    assert len(relay) < 1000
    with pytest.raises(codec.CodecError, match="not trusted"):
        codec.decode(relay)                                      # e.g. a worker's reply naming a file
    back = codec.decode(relay, trust_file=True)["relayed"]
    for a, b in zip([t for ts in value["outputs"] for t in ts], [t for ts in back for t in ts]):
        assert a.dtype == b.dtype and torch.equal(a, b)
    with pytest.raises(codec.CodecError, match="one spill file and nothing else"):
        codec.encode({"a": raw["outputs"][0][0], "b": torch.ones(3)})
    assert codec.decode(codec.encode({"n": 1}, spill=str(tmp_path / "none.bin"))) == {"n": 1}
    assert not (tmp_path / "none.bin").exists()                  # no tensors: no file


def test_spill_file_that_does_not_hold_its_buffers_is_refused(tmp_path):
    spill = tmp_path / "0.bin"
    blob = codec.encode({"x": torch.randn(1000)}, spill=str(spill))
    spill.write_bytes(spill.read_bytes()[:100])                   # truncated after the fact
    with pytest.raises(codec.CodecError, match="holding every buffer"):
        codec.decode(blob, spill=str(spill))
    link = tmp_path / "link.bin"
    link.symlink_to(tmp_path / "elsewhere.bin")
    (tmp_path / "elsewhere.bin").write_bytes(b"\0" * 4000)
    with pytest.raises(codec.CodecError, match="regular file"):
        codec.decode(codec.encode({"x": torch.randn(1000)}, spill=str(tmp_path / "1.bin")), spill=str(link))
    with pytest.raises(codec.CodecError, match="unreadable"):
        codec.decode(blob, spill=str(tmp_path / "missing.bin"))


def _spilled_header(spans: list[tuple[int, int]], dtype: str = "float32", itemsize: int = 4) -> bytes:
    """A spilled message as a worker writes it: tensor nodes whose buffers lie at `spans` of its file."""
    import json
    import struct

    nodes = [{"__tensor__": i, "dtype": dtype, "shape": [n // itemsize]} for i, (_, n) in enumerate(spans)]
    header = json.dumps({"v": {"__dict__": [["outputs", nodes]]}, "bufs": [list(s) for s in spans],
                         "spill": True}).encode()
    return codec.MAGIC + struct.pack("<Q", len(header)) + header


def test_spill_table_past_4_gib_decodes_and_relays(tmp_path):
    """Regression: a 4 GiB cap on the spilled buffers' total made three trials of a 1.5 GiB output
    a `crash` ("bad buffer table for the spill file"). A sparse file stands in for the outputs."""
    n = 5 << 29                                                   # 2.5 GiB a tensor, 5 GiB in all
    spill = tmp_path / "big.bin"
    with open(spill, "wb") as fh:
        fh.truncate(2 * n)                                        # sparse: no disk or memory used
        fh.seek(2 * n - 8)
        fh.write(b"kgc-tail")
    blob = _spilled_header([(0, n), (n, n)])
    raw = codec.decode(blob, raw_tensors=True, spill=str(spill))["outputs"]
    assert [(t.offset, t.nbytes) for t in raw] == [(0, n), (n, n)]
    relayed = codec.decode(codec.encode({"relayed": raw}), raw_tensors=True, trust_file=True)["relayed"]
    assert [(t.file, t.offset, t.nbytes) for t in relayed] == [(str(spill), 0, n), (str(spill), n, n)]
    # 64-bit offsets all the way to the read
    assert bytes(codec._SpillFile(str(spill), [[0, n], [n, n]], None).read(2 * n - 8, 8)) == b"kgc-tail"
    with pytest.raises(codec.CodecError, match="over the"):       # an explicit cap still holds
        codec.decode(blob, raw_tensors=True, spill=str(spill), max_spill_bytes=4 << 30)
    with pytest.raises(codec.CodecError, match="holding every buffer"):   # and the file still bounds it
        codec.decode(_spilled_header([(0, n), (n, n + 4)]), raw_tensors=True, spill=str(spill))
    with pytest.raises(codec.CodecError, match="negative"):
        codec.decode(_spilled_header([(-4, 4)]), raw_tensors=True, spill=str(spill))


@pytest.mark.slow
def test_spilled_outputs_of_several_gib_round_trip(tmp_path):
    """Real bytes: 2 x 2.25 GiB of outputs through a spill file and back, checked exactly."""
    avail = next((int(line.split()[1]) << 10 for line in open("/proc/meminfo") if line.startswith("MemAvailable")), 0)
    if avail < 24 << 30:
        pytest.skip("needs about 20 GiB of free memory")
    n = 9 << 27                                                   # int32 elements: 4.5 GiB in all
    a = torch.arange(n, dtype=torch.int32)
    b = a.flip(0)
    spill = str(tmp_path / "0.bin")
    blob = codec.encode({"outputs": [a, b]}, spill=spill)
    assert os.path.getsize(spill) == 8 * n
    relay = codec.encode({"relayed": codec.decode(blob, raw_tensors=True, spill=spill)["outputs"]})
    back = codec.decode(relay, trust_file=True)["relayed"]
    assert torch.equal(back[0], a)
    del back[0]
    assert torch.equal(back[1], b)


def test_evaluations_remove_their_output_files(evaluator):
    from tests.eval_cases import CAND_ADD, REF_ADD

    v = evaluator.evaluate(REF_ADD, CAND_ADD, backend="interpret", seed=3)
    assert v.ok, v.error
    # A candidate worker writes its outputs into its own folder (the only one its OS sandbox lets
    # it write to); each evaluation removes its files.
    folders = [w.output_dir for p in evaluator._pools.values() for w in [*p._idle, *p._busy] if w.output_dir]
    assert folders and all(os.path.isdir(f) and os.listdir(f) == [] for f in folders)
    assert all(os.path.basename(f).startswith(f"kernelgym-outputs-{os.getpid()}-w") for f in folders)
    ev = Evaluator(workers=1)
    path = ev.spill_path()                                       # no worker needed to name a file
    assert os.path.basename(os.path.dirname(path)).startswith(f"kernelgym-outputs-{os.getpid()}-")
    assert path is not None and os.path.isdir(os.path.dirname(path))
    ev.close()
    assert not os.path.exists(os.path.dirname(path))             # the folder goes with the evaluator
    import gc

    dropped = Evaluator(workers=1)
    folder = os.path.dirname(dropped.spill_path())
    del dropped
    gc.collect()
    assert not os.path.exists(folder)                            # also when dropped without close()


def test_output_folders_of_dead_evaluators_are_removed(tmp_path):
    import subprocess
    import sys

    from kernelgym.evaluation.evaluator import remove_stale_spill_dirs

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"kernelgym-outputs-{dead.pid}-abc").mkdir()
    (tmp_path / f"kernelgym-outputs-{dead.pid}-abc" / "0.bin").write_bytes(b"x" * 10)
    (tmp_path / f"kernelgym-outputs-{os.getpid()}-def").mkdir()   # a live evaluator's
    (tmp_path / "kernelgym-outputs-notapid").mkdir()
    (tmp_path / "unrelated").mkdir()
    assert remove_stale_spill_dirs(str(tmp_path)) == [f"kernelgym-outputs-{dead.pid}-abc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"kernelgym-outputs-{os.getpid()}-def", "kernelgym-outputs-notapid", "unrelated"])
    assert remove_stale_spill_dirs(str(tmp_path / "missing")) == []


def test_seed_all_draws_what_torch_manual_seed_draws():
    """seed_all skips torch.manual_seed's per-backend bookkeeping, not its effect."""
    import random

    from kernelgym.evaluation.jobs import seed_all

    torch.manual_seed(123)
    expected = (torch.randn(5), torch.randint(0, 100, (5,)))
    seed_all(123)
    got = (torch.randn(5), torch.randint(0, 100, (5,)))
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    first = random.random()
    seed_all(123)
    assert random.random() == first
    if torch.cuda.is_available():
        torch.manual_seed(7)
        on_gpu = torch.randn(5, device="cuda")
        seed_all(7)
        assert torch.equal(on_gpu, torch.randn(5, device="cuda"))


def test_fingerprint_sees_any_change():
    x = torch.randn(100)
    assert fingerprint([x, 3]) == fingerprint([x.clone(), 3])
    y = x.clone()
    y[7] += 1e-6
    assert fingerprint(x) != fingerprint(y)
    assert fingerprint(x) != fingerprint(x.double())
    assert fingerprint({"w": x}) != fingerprint({"v": x})


def test_fingerprints_are_taken_when_added_and_read_at_once():
    x, odd, empty = torch.randn(100), torch.arange(7, dtype=torch.uint8), torch.empty(0, 3)
    # The sums of a tensor's raw bits, as one tensor at a time would read them.
    by_hand = ["T", "float32", [100], int(x.view(torch.int32).sum(dtype=torch.int64))]
    assert fingerprint(x) == by_hand
    assert fingerprint(odd) == ["T", "uint8", [7], 21] and fingerprint(empty) == ["T", "float32", [0, 3], 0]
    fps = Fingerprints()
    first = fps.add([x, {"n": 3, "odd": odd}])
    x.add_(1.0)                          # after `add`: the value as it was counts
    second = fps.add((x, None, "s", empty))
    got = fps.read()
    assert (first, second) == (0, 1)
    assert got[0] == [by_hand, [["n", 3], ["odd", ["T", "uint8", [7], 21]]]]
    assert got[1] == [fingerprint(x), None, "s", ["T", "float32", [0, 3], 0]] and got[1][0] != by_hand
    assert Fingerprints().read() == []


def test_nondeterministic_inputs_are_an_invalid_task(evaluator):
    ref = REF_ADD.replace("import torch\n", "import time\nimport torch\n", 1).replace(
        "torch.randn(1000), torch.randn(1000)", "torch.randn(1000) + time.perf_counter_ns() % 7, torch.randn(1000)")
    v = evaluator.evaluate(ref, CAND_ADD, backend=B, seed=4)
    assert v.status == "invalid_task" and v.reasons == ["task:nondeterministic_inputs"], (v.status, v.error)


def test_reference_rebuilt_when_not_stored():
    with Evaluator(workers=1, reference_workers=1, ptx_workers=1, reference_cache_mb=0) as ev:
        v = ev.evaluate(REF_ADD, CAND_ADD, backend=B, seed=9, )
        assert v.status == "ok", v.error
        assert ev.stats["reference_recomputed"] == 1
        wrong = ev.evaluate(REF_ADD, CAND_ADD.replace("x + y", "x - y"), backend=B, seed=9)
        assert wrong.status == "incorrect" and wrong.reasons == ["check:mismatch"]


# ----------------------------------------------------------------------------- timing plans (no GPU)

def test_timing_plan_budget_rule():
    # 5 us forward + 35 us flush: the sample cap applies; ~1 ms of work per replay.
    assert plan(0.005, 0.035, rep_ms=20, min_reps=30, max_reps=300, replay_ms=1.0) == (25, 12)
    # 150 us forward: rep_ms / (forward + flush) samples, 6 forwards per replay.
    r, m = plan(0.15, 0.035, rep_ms=20, min_reps=30, max_reps=300, replay_ms=1.0)
    assert (r, m) == (6, 18) and r * m >= int(20 / 0.185)
    # Long forwards: the minimum sample count, one forward per replay.
    assert plan(50.0, 0.035, rep_ms=20, min_reps=30, max_reps=300, replay_ms=1.0) == (1, 30)
    with pytest.raises(ValueError):
        plan(1.0, 0.0, rep_ms=1, min_reps=0, max_reps=5, replay_ms=1)
    assert bench_budget({}) == {**DEFAULT_BENCH, "min_reps": 30, "max_reps": 300}
    for bad, says in (({"rep_ms": -5}, "rep_ms must be > 0"), ({"warmup_ms": -1}, "warmup_ms must be >= 0"),
                      ({"min_reps": 0}, "min_reps must be >= 1"), ({"replay_ms": 0}, "replay_ms must be > 0"),
                      ({"max_reps": 10}, r"max_reps \(10\) must be >= min_reps \(30\)"),
                      ({"rep_ms": float("nan")}, "rep_ms must be a finite number"),
                      ({"max_reps": "100"}, "max_reps must be a finite number")):
        with pytest.raises(ValueError, match=says):
            bench_budget(bad)
        with pytest.raises(ValueError, match=says):   # at once, not in the first timing
            Evaluator(bench=bad)
    s = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["median_ms"] == 3.0 and s["n"] == 5 and s["max_ms"] == 100.0


def test_timing_replan_only_for_a_much_larger_graph():
    budget = {"rep_ms": 20, "min_reps": 30, "max_reps": 300, "replay_ms": 1.0}
    # The eager pass saw 0.15 ms a forward (host launch gaps) and planned 6; in the graph the forward
    # takes 5 us: 25 forwards fill a replay, worth a second capture.
    assert plan(0.15, 0.035, **budget)[0] == 6
    assert replan(6, 0.005, 0.035, **budget) == 25
    # Close to the captured R (or smaller, as under a busy GPU): keep the graph.
    assert replan(6, 0.12, 0.035, **budget) is None
    assert replan(6, 1.0, 0.035, **budget) is None
    assert replan(13, 0.005, 0.035, **budget) is None


H200_OOM = ("out of memory in forward (trial 0): OutOfMemoryError: CUDA out of memory. Tried to allocate "
            "80.00 MiB. GPU 0 has a total capacity of 139.80 GiB of which 46.75 MiB is free. Process 511 has "
            "8.20 GiB memory in use.")


def test_which_gpu_out_of_memory_failures_are_judged_again_alone():
    from kernelgym.evaluation.footprint import oom_beside_others

    def v(status, error, backend="cuda", reasons=()):
        return Verdict(status=status, error=error, backend=backend, reasons=list(reasons))

    assert oom_beside_others(v("crash", H200_OOM))   # seen on an H200: neighbours held the memory
    assert oom_beside_others(v("runtime_error", "candidate result could not be returned: AcceleratorError: "
                                                 "CUDA error: out of memory"))   # size not stated
    own = H200_OOM.replace("80.00 MiB", "4.00 TiB")
    assert not oom_beside_others(v("crash", own))   # the candidate's own huge allocation
    assert not oom_beside_others(v("crash", H200_OOM.replace("80.00 MiB", "40.00 GiB")))   # > 1/4 of the GPU
    assert not oom_beside_others(v("crash", H200_OOM, backend="interpret"))
    assert not oom_beside_others(v("crash", "host memory limit", reasons=["sandbox:memory"]))
    assert not oom_beside_others(v("incorrect", H200_OOM))
    assert not oom_beside_others(v("crash", "illegal memory access"))
    # a reference that ran out beside others: judged again, not an invalid task
    assert oom_beside_others(v("invalid_task", "reference failed in reference trial 0: " + H200_OOM,
                                reasons=["task:reference_error"]))
    assert not oom_beside_others(v("invalid_task", H200_OOM, reasons=["task:reference_output"]))


def test_gpu_oom_beside_others_is_judged_again_with_the_gpu_alone(monkeypatch):
    """The retry takes the evaluator's lock exclusively (no other GPU evaluation runs meanwhile),
    uses the same seed, and says so in the verdict; a second failure stands."""
    from kernelgym.evaluation import evaluator as evmod
    from kernelgym.evaluation.pipeline import Run

    monkeypatch.setattr(evmod, "resolve_backend", lambda b: b)   # "cuda" on this CPU machine
    calls = []

    def fake_go(run, reference, candidate, task_id):
        calls.append((run.seed, run.ev._alone.state))
        if candidate == "always" or len(calls) == 1:
            return Verdict(status="crash", error=H200_OOM, backend=run.backend, reasons=["sandbox:crash"])
        return Verdict(status="ok", correct=True, backend=run.backend)

    monkeypatch.setattr(Run, "go", fake_go)
    ev = evmod.Evaluator(workers=1)
    try:
        v = ev.evaluate("ref", "cand", backend="cuda", seed=7)
        assert v.status == "ok" and "judged again alone" in v.notes[-1] and ev.stats["rejudged_alone"] == 1
        assert calls == [(7, (1, False, 0)), (7, (0, True, 0))]   # shared, then exclusive, same seed
        assert ev._alone.state == (0, False, 0)
        calls.clear()
        v = ev.evaluate("ref", "always", backend="cuda", seed=8)
        assert v.status == "crash" and len(calls) == 2 and "judged again alone" in v.notes[-1]
        calls.clear()
        ev.evaluate("ref", "cand", backend="interpret", seed=9)   # no GPU: no lock, no retry
        assert calls == [(9, (0, False, 0))]
    finally:
        ev.close()


def test_a_reference_over_its_host_memory_limit_is_judged_again_alone(monkeypatch):
    """`task:reference_memory` is judged again alone in a fresh worker before the task is called
    invalid (any backend); a second failure stands; other invalid tasks are not retried."""
    from kernelgym.evaluation import evaluator as evmod
    from kernelgym.evaluation.footprint import reference_over_host_limit
    from kernelgym.evaluation.pipeline import Run

    over = Verdict(status="invalid_task", error="reference ran out of memory: memory limit of 9216 MB exceeded",
                   backend="cuda", reasons=["task:reference_memory"])
    assert reference_over_host_limit(over)
    assert not reference_over_host_limit(Verdict(status="invalid_task", reasons=["task:reference_error"]))
    assert not reference_over_host_limit(Verdict(status="crash", reasons=["sandbox:memory"]))
    calls = []

    def fake_go(run, reference, candidate, task_id):
        calls.append(run.seed)
        if reference == "huge" or len(calls) == 1:
            return Verdict(status=over.status, error=over.error, backend=run.backend, reasons=list(over.reasons))
        return Verdict(status="ok", correct=True, backend=run.backend)

    monkeypatch.setattr(Run, "go", fake_go)
    ev = evmod.Evaluator(workers=1)
    try:
        v = ev.evaluate("ref", "cand", backend="interpret", seed=3)
        assert v.status == "ok" and calls == [3, 3] and "host-memory limit" in v.notes[-1]
        calls.clear()
        v = ev.evaluate("huge", "cand", backend="interpret", seed=4)
        assert v.status == "invalid_task" and calls == [4, 4] and v.reasons == ["task:reference_memory"]
    finally:
        ev.close()


def test_tree_cpu_seconds_counts_a_busy_process_and_its_children():
    import subprocess
    import sys

    from kernelgym.evaluation.pool import tree_cpu_seconds

    code = ("import subprocess, sys, time\n"
            "subprocess.run([sys.executable, '-c', 'import time\\nt=time.process_time()\\n"
            "while time.process_time() - t < 0.3: pass'])\n"
            "t = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
            "sys.stdout.write('done\\n'); sys.stdout.flush(); time.sleep(30)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "done\n"
        assert tree_cpu_seconds(p.pid) >= 0.5   # its own 0.3 s and its reaped child's 0.3 s
    finally:
        p.kill()
        p.wait()
    assert tree_cpu_seconds(p.pid) == 0.0   # gone: nothing to read


def test_trial_inputs_are_drawn_on_the_evaluation_device():
    """On a device, get_inputs() runs with it as torch's default device (inputs drawn there, not
    on the host); one that cannot (it needs host tensors) runs again on the CPU from the same seed."""
    import types

    from kernelgym.evaluation.jobs import trial_inputs

    mod = types.SimpleNamespace(get_inputs=lambda: [torch.randn(4, 3), 2])
    (x, k), (y, _) = trial_inputs(mod, 7, "meta"), trial_inputs(mod, 7)
    assert x.device.type == "meta" and y.device.type == "cpu" and k == 2 and x.shape == y.shape
    host = types.SimpleNamespace(get_inputs=lambda: [torch.from_numpy(torch.randn(5).numpy())])
    (a,), (b,) = trial_inputs(host, 3, "meta"), trial_inputs(host, 3)
    assert a.device.type == "cpu" and torch.equal(a, b)   # the fallback reseeds first


def test_a_candidate_ended_beside_the_final_comparison_is_always_waited_for(monkeypatch):
    """`_end_in_background` (the timed path ends the candidate while its final outputs are compared):
    the reply comes back, a phase added from both threads is not lost, and a pipeline error in the
    ending counts as a dead worker (replaced) instead of vanishing with its thread."""
    from kernelgym.evaluation.pipeline import Run
    from kernelgym.evaluation.stages import Ended

    with Evaluator(workers=1) as ev:
        run = Run(ev, "interpret", "strict", 1, 3, 10.0)
        gate = threading.Event()

        def end(w):
            gate.wait(5)
            run._add("ipc", 0.25)
            return Ended(cuda_ok=True, error=w)

        monkeypatch.setattr(run, "_end", end)
        wait = run._end_in_background("worker")
        run._add("ipc", 0.5)   # the comparison's share, from this thread
        gate.set()
        assert wait() == Ended(cuda_ok=True, error="worker")
        assert run.phases["ipc"] == pytest.approx(0.75)

        def broken(w):
            raise KeyError("lost")

        monkeypatch.setattr(run, "_end", broken)
        got = run._end_in_background("worker")()
        assert got.dead is True and "KeyError" in got.error


def test_an_evaluation_waits_only_for_a_precompile_that_is_running(monkeypatch):
    """A queued precompile is dropped when its evaluation is ready for the candidate worker (a
    backlog never holds evaluations up), a running one is waited for at most PRECOMPILE_WAIT_S, and
    each outcome is counted."""
    from concurrent.futures import Future

    from kernelgym.evaluation import pipeline

    monkeypatch.setattr(pipeline, "PRECOMPILE_WAIT_S", 0.2)
    with Evaluator(workers=1) as ev:
        run = pipeline.Run(ev, "interpret", "strict", 1, 3, 10.0)
        queued = Future()
        run._await_precompile(queued)
        assert queued.cancelled() and ev.stats["precompile_skipped"] == 1
        done = Future()
        done.set_running_or_notify_cancel()
        done.set_result({"ok": True})
        run._await_precompile(done)
        failed = Future()
        failed.set_running_or_notify_cancel()
        failed.set_result({"ok": False, "error": "forward raised"})
        run._await_precompile(failed)
        stuck = Future()
        stuck.set_running_or_notify_cancel()   # running, never ends (e.g. an endless forward on the CPU)
        t = time.perf_counter()
        run._await_precompile(stuck)
        assert 0.15 < time.perf_counter() - t < 5
        assert (ev.stats["precompiled"], ev.stats["precompile_failed"], ev.stats["precompile_late"]) == (1, 1, 1)
        assert run.phases["precompile_wait"] >= 0.15
