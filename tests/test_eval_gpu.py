"""The cuda backend: real compile and launch, timing, baselines, poisoned contexts. Needs a GPU."""

from __future__ import annotations

import pytest
import torch

from kernelgym.evaluation import Evaluator
from tests.eval_cases import CAND_ADD, REF_ADD, add_variant

pytestmark = pytest.mark.gpu
BIG_ADD = REF_ADD.replace("torch.randn(1000)", "torch.randn(1 << 22)")


def test_cuda_ok_kernel_is_timed(evaluator):
    v = evaluator.evaluate(BIG_ADD, CAND_ADD, backend="cuda", seed=1)
    assert v.status == "ok", v.error
    assert v.backend == "cuda" and "cpu" not in v.device
    assert v.speedup is not None and v.speedup > 0, v.timings
    t = v.timings
    assert t["candidate"]["median_ms"] > 0 and t["eager"]["median_ms"] > 0 and t["candidate"]["n"] >= 10
    for series in ("candidate", "eager"):  # CUDA-graph replays, L2 flush outside the timed events
        assert t[series]["method"] == "cuda_graph", t[series]
        assert t[series]["forwards_per_replay"] >= 1 and t[series]["flush_ms"] > 0
        # R comes from the in-graph GPU times, not the eager pass's (host gaps): a replay of these
        # ~50 us forwards + flushes holds about replay_ms (1 ms) of work, or all the samples.
        per = t[series]["forwards_per_replay"] * (t[series]["forward_median_ms"] + t[series]["flush_ms"])
        assert per >= 0.5 or t[series]["replays"] == 1 or t[series]["forwards_per_replay"] >= 200, t[series]
        # the events' own cost, measured before every forward and subtracted: microseconds, not the kernel
        assert 0 < t[series]["event_overhead_ms"] < 0.01, t[series]
    assert t["gpu"] == 0
    assert len(v.trials) == 4  # 3 trials + the fresh-input trial after timing
    phases = t["phases_s"]   # the final trial runs in the timing request; its seconds are its own phase
    assert phases["timing"] > 0 and phases["final_trial"] > 0 and phases["end_candidate"] > 0, phases
    assert v.kernels == ["add_kernel"]
    # the admission's reservation against the workers' peaks: two 16 MiB inputs and a 16 MiB
    # output a trial; the reference holds its 4 trials, the candidate its 3 checked ones at least
    mem, mib16 = t["gpu_memory"], 1 << 24
    assert mem["reference_peak_bytes"] >= 4 * 3 * mib16 and mem["candidate_peak_bytes"] >= 3 * 3 * mib16, mem
    assert mem["reserved_bytes"] >= mem["reference_peak_bytes"] and mem["reserved_per_peak"] > 0, mem
    again = evaluator.evaluate(BIG_ADD, CAND_ADD, backend="cuda", seed=2)
    assert again.timings["eager"] == t["eager"]  # baseline cached per (task, device, dtype)


def test_cuda_wrong_kernel(evaluator):
    v = evaluator.evaluate(BIG_ADD, CAND_ADD.replace("x + y", "x - y"), backend="cuda")
    assert v.status == "incorrect" and v.speedup is None and "candidate" not in v.timings


def test_cuda_illegal_address_does_not_poison_next(evaluator):
    oob = "    z = tl.load(x_ptr + offs + 1099511627776)\n    tl.store(out_ptr + offs, x + z, mask=mask)\n"
    v = evaluator.evaluate(BIG_ADD, add_variant("", kernel_body=oob), backend="cuda")
    assert v.status == "crash", (v.status, v.error)
    nxt = evaluator.evaluate(BIG_ADD, CAND_ADD, backend="cuda")
    assert nxt.status == "ok", nxt.error


def test_cuda_timeout_in_kernel(evaluator):
    # The store keeps the loop alive: the compiler may delete a side-effect-free infinite loop.
    spin = "    i = 0\n    while i < n:\n        tl.store(out_ptr + offs, x + y, mask=mask)\n        i = i * 1\n"
    v = evaluator.evaluate(BIG_ADD, add_variant("", kernel_body=spin), backend="cuda", timeout=10)
    assert v.status == "timeout", v.error
    nxt = evaluator.evaluate(BIG_ADD, CAND_ADD, backend="cuda")
    assert nxt.status == "ok", nxt.error


def test_uncapturable_forward_is_timed_eagerly(evaluator):
    # .item() synchronises: illegal inside a CUDA-graph capture, so timing falls back to the eager method.
    cand = add_variant("        if x[0].item() > 1e30:\n            return out\n"
                       "        add_kernel[(triton.cdiv(n, 256),)](x, y, out, n, BLOCK=256)\n        return out\n")
    v = evaluator.evaluate(BIG_ADD, cand, backend="cuda", seed=5)
    assert v.status == "ok", (v.status, v.error)
    assert v.timings["candidate"]["method"] == "eager" and v.timings["candidate"]["graph_error"]


@pytest.mark.skipif("torch.cuda.device_count() < 2", reason="needs 2 GPUs")
def test_batch_spreads_over_gpus():
    wrong = CAND_ADD.replace("x + y", "x - y")
    pairs = [(BIG_ADD, CAND_ADD if i % 3 else wrong) for i in range(8)]
    with Evaluator(workers=4, reference_workers=2, devices=[0, 1], timeout=60) as ev:
        alone = [ev.evaluate(r, c, backend="cuda", seed=i).status for i, (r, c) in enumerate(pairs[:2])]
        vs = ev.evaluate_batch(pairs, backend="cuda", seed=1)
        assert [v.status for v in vs] == ["incorrect" if i % 3 == 0 else "ok" for i in range(8)]
        assert alone == ["incorrect", "ok"]
        assert {v.timings["gpu"] for v in vs if v.ok} == {0, 1}
        assert len(ev.shared.baselines) == 2  # one eager baseline per GPU


def test_fingerprints_are_the_same_on_the_gpu_and_the_host():
    """Workers fingerprint seeded inputs where they live (no copy to the host): the sums must not
    depend on the device, for every dtype and layout an input can have."""
    from kernelgym.evaluation.jobs import fingerprint

    g = torch.Generator().manual_seed(0)
    values = [torch.randn(1001, generator=g), torch.randn(7, 3, generator=g).half(), torch.randn(5, 4, generator=g).t(),
              torch.randint(0, 9, (13,), generator=g), torch.rand(9, generator=g) > 0.5,
              torch.randn(6, generator=g).bfloat16(), torch.empty(0)]
    assert fingerprint([v.cuda() for v in values]) == fingerprint(values)


@pytest.mark.parametrize("host_only", [False, True])
def test_inputs_drawn_on_the_gpu_or_on_the_host_give_the_same_verdict(evaluator, host_only):
    """On the cuda backend both workers draw get_inputs() on the GPU; a get_inputs() that needs host
    tensors (.numpy()) falls back to the CPU in both. Either way the fingerprints agree and the
    candidate is judged ok."""
    ref = BIG_ADD
    if host_only:
        ref = ref.replace("torch.randn(1 << 22)", "torch.from_numpy(torch.randn(1 << 22).numpy())")
        assert "numpy()" in ref
    v = evaluator.evaluate(ref, CAND_ADD, backend="cuda", seed=4)
    assert v.status == "ok", (v.status, v.error[:500])


def test_a_failed_capture_leaves_the_worker_able_to_draw_inputs():
    """A forward that fails inside the timing graph's capture used to leave torch's CUDA generator in
    capture mode, so the same worker's next seeded get_inputs() on the GPU failed, fell back to the
    host and no longer matched the reference worker's: the next task was judged invalid. Same for a
    reference whose baseline cannot be captured. One worker of each role, so the next evaluation
    reuses them."""
    uncapturable = add_variant("        if x[0].item() > 1e30:\n            return out\n"
                               "        add_kernel[(triton.cdiv(n, 256),)](x, y, out, n, BLOCK=256)\n"
                               "        return out\n")
    ref_uncapturable = BIG_ADD.replace("return x + y", "return x + y if x[0].item() < 1e30 else y")
    assert ref_uncapturable != BIG_ADD
    with Evaluator(workers=1, reference_workers=1, timeout=120) as ev:
        first = ev.evaluate(ref_uncapturable, uncapturable, backend="cuda", seed=5)
        assert first.status == "ok", (first.status, first.error[:500])
        assert first.timings["candidate"]["method"] == "eager"
        assert first.timings["eager"]["method"] == "eager"
        for seed in (6, 7):
            v = ev.evaluate(BIG_ADD, CAND_ADD, backend="cuda", seed=seed)
            assert v.status == "ok", (v.status, v.error[:500])


def test_workers_wait_for_the_gpu_as_told(monkeypatch):
    """KERNELGYM_CUDA_SYNC sets the primary context's scheduling flag before torch makes the
    context (read back from the driver), and a whole evaluation runs under it."""
    import subprocess
    import sys

    probe = ("import ctypes, torch\n"
             "from kernelgym.evaluation.worker import set_sync_schedule\n"
             "assert set_sync_schedule('block')\n"
             "torch.zeros(1, device='cuda'); torch.cuda.synchronize()\n"
             "flags = ctypes.c_uint(0)\n"
             "assert ctypes.CDLL('libcuda.so.1').cuCtxGetFlags(ctypes.byref(flags)) == 0\n"
             "print(flags.value)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) & 0x7 == 4, out.stdout   # CU_CTX_SCHED_BLOCKING_SYNC
    monkeypatch.setenv("KERNELGYM_CUDA_SYNC", "block")
    with Evaluator(workers=1, reference_workers=1, timeout=60) as ev:
        v = ev.evaluate(BIG_ADD, CAND_ADD, backend="cuda", seed=3)
    assert v.status == "ok" and v.speedup, v.error


def test_precompiled_kernels_are_loaded_not_compiled_again(tmp_path, monkeypatch):
    """precompile_workers: the kernel is compiled once, on a CPU process for this GPU's target; the
    GPU worker finds it in Triton's cache (same source, specialisation, target and options) and
    loads it. Proof: one add_kernel.cubin in the cache after a whole evaluation. Without the OS
    sandbox: confined, each process compiles into a cache of its own (`sandbox`)."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    with Evaluator(workers=1, reference_workers=1, timeout=60, precompile_workers=1, os_sandbox="off") as ev:
        ev.warm("cuda")   # the workers report the GPU's target
        assert ev.gpu_capability(0) == torch.cuda.get_device_capability(0)
        v = ev.evaluate(BIG_ADD, CAND_ADD, backend="cuda", seed=1)
        assert v.status == "ok", v.error
        assert ev.stats["precompiled"] == 1, ev.stats
        assert "precompile_wait" in v.timings["phases_s"]
    assert len(list(tmp_path.rglob("add_kernel.cubin"))) == 1, sorted(p.name for p in tmp_path.rglob("*.cubin"))


def test_precompiled_kernels_reach_a_confined_gpu_worker(tmp_path, monkeypatch):
    """Under the OS sandbox the precompile process compiles into a cache of its own; the evaluator's
    side files it for the candidate's code and the confined GPU worker unpacks it into its fresh
    cache. Proof that it loads rather than compiles: after the evaluation its cache holds one
    add_kernel.cubin, under the key that was filed (a cache miss would add a second key)."""
    import tarfile
    from pathlib import Path

    from kernelgym.evaluation import sandbox, triton_cache

    if not sandbox.probe().complete:
        pytest.skip(f"no OS sandbox: {sandbox.probe().incomplete_why}")
    from kernelgym.evaluation.worker import KEEP_CACHE_ENV

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(KEEP_CACHE_ENV, "1")   # else retired as soon as the candidate is judged
    with Evaluator(workers=1, reference_workers=1, timeout=60, precompile_workers=1, os_sandbox="require") as ev:
        ev.warm("cuda")
        v = ev.evaluate(BIG_ADD, CAND_ADD, backend="cuda", seed=1)
        assert v.status == "ok", v.error
        assert v.versions["os_sandbox"].endswith("+seccomp"), v.versions
        assert ev.stats["precompiled"] == 1, ev.stats
        (pool,) = [p for r, p in ev._pools.items() if r.name == "candidate"]
        cubins = list(Path(pool.ready_info()["tmpdir"]).rglob("add_kernel.cubin"))
    assert len(cubins) == 1, cubins
    # the candidate's kernel was not written to the shared cache (the torch.compile baseline's
    # Inductor kernels are, by the reference worker: an H100 showed two triton_poi_fused_add_0)
    assert not list((tmp_path / "cache").rglob("add_kernel.*"))
    (archive,) = (tmp_path / f"cache{triton_cache.PRECOMPILED_SUFFIX}").glob("*.tar")
    with tarfile.open(archive) as tar:
        assert f"{cubins[0].parent.name}/add_kernel.cubin" in tar.getnames(), tar.getnames()


def test_one_trial_on_the_gpu_times_and_judges_like_the_whole_task():
    """`one_trial_on_gpu="always"` on the GPU: trials' tensors on the host, the reference compared
    there, the baselines and the candidate timed on the first trial's inputs: ok, timed, 4 trials;
    a wrong kernel is still incorrect."""
    with Evaluator(workers=1, reference_workers=1, ptx_workers=1, timeout=120, one_trial_on_gpu="always") as ev:
        v = ev.evaluate(BIG_ADD, CAND_ADD, backend="cuda", seed=3)
        bad = ev.evaluate(BIG_ADD, add_variant("", kernel_body="    tl.store(out_ptr + offs, x + y * 2.0, mask=mask)\n"),
                          backend="cuda", seed=3)
    assert v.status == "ok", v.error
    assert v.speedup is not None and v.timings["eager"]["median_ms"] > 0 and len(v.trials) == 4
    assert bad.status == "incorrect", (bad.status, bad.error)
