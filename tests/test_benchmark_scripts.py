"""The policy benchmark scripts run end to end on tiny tasks under the interpreter and write the
JSON their notes are made from; bad arguments fail with a message naming them."""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
from pathlib import Path

import pytest

from tests._tasks import model_source

pytest.importorskip("policies.compiler")
BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    """The benchmark as `python -m benchmarks.NAME` imports it: a module of the benchmarks package."""
    return importlib.import_module(f"benchmarks.{name}")


def test_compiler_variants_table_and_json(tmp_path, capsys):
    cv = load("compiler_variants")
    out = tmp_path / "cv.json"
    configs = [{}, {"num_warps": 2}, {"BLOCK_M": 8}]
    assert cv.main(["--tasks", "d1_tiny_s0", "--configs", json.dumps(configs), "--backend", "interpret",
                    "--workers", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["backend"] == "interpret" and report["configs"] == configs
    assert [r["task_id"] for r in report["rows"]] == ["d1_tiny_s0"] * 3
    assert all(r["status"] == "ok" and r["speedup"] is None for r in report["rows"])  # untimed
    assert "d1_tiny_s0 |" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "d1_huge_s0"], "d1_huge_s0"),
    (["--tasks", " , "], "names no task id"),
    (["--tasks", "d1_tiny_s0", "--configs", "{"], "not JSON"),
    (["--tasks", "d1_tiny_s0", "--configs", '{"a": 1}'], "JSON list of objects"),
])
def test_compiler_variants_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        load("compiler_variants").main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_search_gain_keeps_the_search_log(tmp_path):
    sg = load("search_gain")
    out = tmp_path / "sg.json"
    assert sg.main(["-d", "1", "-n", "1", "--sizes", "tiny", "--backend", "interpret", "--budget-evals", "2",
                    "--workers", "1", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["tasks"][0]
    assert row["base_status"] == row["search_status"] == "ok"
    assert row["search_log"] and row["search_log"][0]["origin"] == "default"
    assert row["search_log"][0]["status"] == "ok"
    assert row["base_timings"] is None   # the interpreter times nothing


def test_kernel_profile_breakdown_and_cpu_exit(capsys):
    kp = load("kernel_profile")
    fw = [[(0.0, 10.0, "a"), (12.0, 5.0, "b"), (20.0, 1.0, "a")],
          [(0.0, 12.0, "a"), (14.0, 7.0, "b")],
          [(0.0, 8.0, "a"), (9.0, 6.0, "b"), (16.0, 2.0, "a")]]
    got = kp.breakdown(fw)
    assert got["total_us"] == 16.0 and got["span_us"] == 21.0
    assert got["kernels"] == [{"name": "a", "us": 11.0}, {"name": "b", "us": 6.0}]
    with pytest.raises(ValueError):
        kp.breakdown([])
    text = kp.table([{"task_id": "d1_bench_s0", "model": "eager", **got},
                     {"task_id": "d1_bench_s0", "model": "c0", "error": "RuntimeError: boom"}])
    assert "a" in text and "69%" in text and "ERROR RuntimeError: boom" in text
    with pytest.raises(SystemExit):
        kp.main(["--tasks", "d1_bad"])
    assert "d1_bad" in capsys.readouterr().err
    import torch
    if not torch.cuda.is_available():
        assert kp.main(["--tasks", "d1_bench_s0"]) == 0
        assert "needs a CUDA GPU" in capsys.readouterr().out


def test_eval_throughput_reports_cpu_seconds_per_evaluation(tmp_path, capsys):
    """The throughput benchmark runs both harnesses under the interpreter and reports each one's
    host cost: CPU seconds an evaluation (the pool's split by worker role)."""
    et = load("eval_throughput")
    out, prof = tmp_path / "et.json", tmp_path / "prof"
    before_cache = os.environ.get("TRITON_CACHE_DIR")   # a fresh cache for the run, then restored
    assert et.main(["--backend", "interpret", "--n", "4", "--workers", "1", "--out", str(out),
                    "--profile-workers", str(prof), "--steady", "2", "--cuda-sync", "block",
                    "--switch-interval", "0.001"]) == 0
    # --profile-workers: each role's CPU profile of the steady batch, verdicts unchanged by it
    summary = (prof / "summary.txt").read_text()
    # one candidate worker per interpreted evaluation (each runs in a fresh process)
    assert re.search(r"== candidate: \d+ workers", summary) and "run_candidate" in summary and "== reference" in summary
    assert "KERNELGYM_WORKER_PROFILE" not in os.environ
    r = json.loads(out.read_text())
    assert r["serial"]["cpu_s_per_eval"] > 0 and r["pool_steady"]["cpu_s_per_eval"] > 0
    assert {"candidate", "reference", "parent"} <= set(r["pool_steady"]["cpu_s"])
    assert r["pool_steady"]["cpu_s"]["candidate"] > 0
    assert r["pool_steady"]["statuses_by_kind"]["correct"] == {"ok": sum(r["pool_steady"]["statuses_by_kind"]
                                                                          ["correct"].values())}
    assert r["timing_under_load"] == []  # nothing is timed under the interpreter
    assert r["triton_cache"] == "fresh" and os.environ.get("TRITON_CACHE_DIR") == before_cache
    assert len(r["pool_steady_evals_per_s"]) == 2 and r["pool_steady"]["evals_per_s"] in r["pool_steady_evals_per_s"]
    assert r["cuda_sync"] == "block" and "KERNELGYM_CUDA_SYNC" not in os.environ   # set for the pool only
    assert r["switch_interval_s"] == 0.001 and sys.getswitchinterval() == pytest.approx(0.005)
    for bad, says in ((["--steady", "0"], "--steady must be >= 1"),
                      (["--switch-interval", "0"], "--switch-interval must be > 0")):
        with pytest.raises(SystemExit):
            et.main(["--backend", "interpret", *bad])
        assert says in capsys.readouterr().err


def test_set_env_restores_the_variable(monkeypatch):
    et = load("eval_throughput")
    monkeypatch.setenv("KERNELGYM_TEST_VAR", "before")
    with et.set_env("KERNELGYM_TEST_VAR", "inside"):
        assert os.environ["KERNELGYM_TEST_VAR"] == "inside"
    assert os.environ["KERNELGYM_TEST_VAR"] == "before"
    with et.set_env("KERNELGYM_TEST_VAR", None):   # None: left as it is
        assert os.environ["KERNELGYM_TEST_VAR"] == "before"
    monkeypatch.delenv("KERNELGYM_TEST_VAR")
    with et.set_env("KERNELGYM_TEST_VAR", "inside"):
        pass
    assert "KERNELGYM_TEST_VAR" not in os.environ


def test_timing_spread_names_inductor_choices_and_rejects_bad_arguments(capsys):
    ts = load("timing_spread")
    line = ts.autotune_summary({"autotune": [
        {"kernel": "triton_red_fused_0", "configs_ms": {"XBLOCK: 1, R0_BLOCK: 2048": 0.0121,
                                                        "XBLOCK: 64, R0_BLOCK: 8": 0.0402},
         "chosen": "XBLOCK: 1, R0_BLOCK: 2048"}]})
    assert line == "triton_red_fused_0: kept XBLOCK: 1, R0_BLOCK: 2048 12.10 us, next best 40.20 us of 2 configs"
    assert ts.autotune_summary({}) == ""
    with pytest.raises(SystemExit):
        ts.main(["--tasks", "d3_s2"])
    assert "not of the form d<difficulty>_<tiny|bench>_s<seed>" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ts.main(["--numel", "16M"])
    assert "--numel needs positive integers" in capsys.readouterr().err


def test_eval_throughput_timeline_of_the_timings():
    tp = load("eval_throughput")
    spans = {0: [(10.5, 10.6), (10.7, 10.8), (9.0, 9.5)], 1: [(10.3, 10.4)], 2: []}
    got = tp.timeline(spans, 10.0, 11.0)    # the span that ended before the batch is not its own
    assert got["first_timing_s"] == pytest.approx(0.3) and got["after_last_timing_s"] == pytest.approx(0.2)
    assert got["gaps_s"] == pytest.approx(0.1) and got["longest_gap_s"] == pytest.approx(0.1)
    assert tp.timeline({0: [(9.0, 9.5)]}, 10.0, 11.0) is None and tp.timeline({}, 0.0, 1.0) is None


def test_eval_throughput_gap_free_ceiling():
    tp = load("eval_throughput")
    tl = {"first_timing_s": 0.3, "after_last_timing_s": 0.05, "gaps_s": 0.5, "longest_gap_s": 0.1}
    got = tp.gap_free_ceiling(64, 1.3, tl, 1, 8.0)
    assert got["seconds"] == pytest.approx(0.8) and got["evals_per_s"] == pytest.approx(80.0)
    assert got["vs_serial"] == pytest.approx(10.0)
    assert tp.gap_free_ceiling(64, 1.3, None, 1, 8.0) is None and tp.gap_free_ceiling(64, 1.3, tl, 2, 8.0) is None


def test_fresh_dir_env_sets_a_new_folder_and_restores_the_variable(monkeypatch):
    et = load("eval_throughput")
    monkeypatch.setenv("KERNELGYM_TEST_DIR", "before")
    with et.fresh_dir_env("KERNELGYM_TEST_DIR", "kg-test-") as d:
        assert os.environ["KERNELGYM_TEST_DIR"] == d and os.path.isdir(d) and os.listdir(d) == []
    assert os.environ["KERNELGYM_TEST_DIR"] == "before" and not os.path.exists(d)
    monkeypatch.delenv("KERNELGYM_TEST_DIR")
    with et.fresh_dir_env("KERNELGYM_TEST_DIR", "kg-test-"):
        pass
    assert "KERNELGYM_TEST_DIR" not in os.environ


KB_RELU = model_source("return torch.relu(x)", inputs="return [torch.randn(4, 16)]")
KB_ITEM = KB_RELU.replace("return torch.relu(x)", "return x * float(x.sum().item())")   # data-dependent
KB_LINEAR = model_source("return torch.relu(self.linear(x))", inputs="return [torch.randn(8, 16)]",
                         init="self.linear = nn.Linear(n, m)", init_params=", n, m", init_inputs="[16, 16]")


def kernelbench_dir(tmp_path: Path) -> Path:
    """A hand-made folder shaped like a KernelBench checkout: levelN/<n>_<Name>.py and the
    published timings JSON."""
    kb = tmp_path / "kb"
    (kb / "level1").mkdir(parents=True)
    (kb / "level2").mkdir()
    (kb / "level1" / "1_Relu.py").write_text(KB_RELU)
    (kb / "level1" / "2_Item_scale.py").write_text(KB_ITEM)
    (kb / "level2" / "1_Linear_ReLU.py").write_text(KB_LINEAR)
    timing = kb / "results" / "timing" / "H100_Modal"
    timing.mkdir(parents=True)
    rec = {"std": 0.001, "min": 0.01, "max": 0.02, "num_trials": 100, "hardware": "NVIDIA H100 80GB HBM3"}
    (timing / "baseline_time_torch.json").write_text(json.dumps({
        "level1": {"1_Relu.py": {"mean": 0.0123, **rec}, "2_Item_scale.py": {"mean": 0.02, **rec}},
        "level2": {"1_Linear_ReLU.py": {"mean": 0.05, **rec}}}))
    return kb


def test_kernelbench_trace_only_coverage(tmp_path, capsys):
    kbm = load("kernelbench")
    kb = kernelbench_dir(tmp_path)
    assert kbm.main([str(kb), "--levels", "1,2", "--trace-only", "--jobs", "1", "--task-timeout", "120",
                     "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "kernelbench_trace.json").read_text())
    one, two = report["levels"]["1"], report["levels"]["2"]
    assert (one["problems"], one["traced"], one["compiled_strict"], one["compiled_lenient"]) == (2, 1, 1, 1)
    assert (two["problems"], two["traced"], two["compiled_strict"]) == (1, 1, 1)
    item = next(r for r in report["rows"] if r["problem"] == "2_Item_scale.py")
    assert not item["traced"] and item["error"].startswith("trace:")
    assert "coverage" in capsys.readouterr().out


def test_kernelbench_judges_a_level_under_the_interpreter(tmp_path):
    kbm = load("kernelbench")
    kb = kernelbench_dir(tmp_path)
    assert kbm.main([str(kb), "--levels", "1", "--backend", "interpret", "--mode", "both", "--workers", "1",
                     "--jobs", "1", "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "kernelbench.json").read_text())
    strict = report["levels"]["1"]["strict"]
    assert (strict["problems"], strict["traced"], strict["compiled"], strict["ok"]) == (2, 1, 1, 1)
    assert strict["fast_1"] == 0.0 and strict["geomean_speedup"] is None   # untimed: nothing is fast
    lenient = [r for r in report["rows"] if r["mode"] == "lenient"]
    assert [r["status"] for r in lenient] == ["ok", "no_candidate"]
    assert lenient[0]["lenient_from"] == "strict"                           # not judged twice


def test_kernelbench_config_reaches_the_compiler(tmp_path):
    """--config: the compiler's launch config (here TMA descriptor loads of the linear's operands)
    is what every candidate is compiled with, and the report names it."""
    kbm = load("kernelbench")
    kb = kernelbench_dir(tmp_path)
    assert kbm.main([str(kb), "--levels", "2", "--backend", "interpret", "--mode", "strict", "--workers", "1",
                     "--jobs", "1", "--config", '{"tma": true}', "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "kernelbench.json").read_text())
    assert report["config"] == {"tma": True}
    line = json.loads((tmp_path / "out" / "kernelbench.progress.jsonl").read_text().splitlines()[0])
    assert line["row"]["status"] == "ok" and "TensorDescriptor.from_tensor(" in line["source"]


def test_kernelbench_summary_counts_failures_as_not_fast(tmp_path):
    kbm = load("kernelbench")
    rows = [
        {"status": "ok", "traced": True, "compiled": True, "speedup": 2.0, "speedup_vs_compile": 0.5,
         "eager_ratio": 1.02, "compile_ratio": None, "phases_s": {"reference": 1.0, "baseline": 3.0, "total": 5.0}},
        {"status": "ok", "traced": True, "compiled": True, "speedup": 0.5, "speedup_vs_compile": 0.25,
         "eager_ratio": 0.8, "compile_ratio": None, "phases_s": {"baseline": 2.5, "candidate": 0.5}},
        {"status": "incorrect", "traced": True, "compiled": True, "speedup": None},
        {"status": "no_candidate", "traced": False, "compiled": False, "speedup": None},
    ]
    rows[0]["gpu_memory"] = {"reserved_per_peak": 2.5}
    rows[1]["gpu_memory"] = {"reserved_per_peak": 1.5}
    s = kbm.summarize(rows)
    assert (s["problems"], s["traced"], s["compiled"], s["ok"]) == (4, 3, 3, 2)
    assert s["reserved_per_peak"] == {"n": 2, "median": 2.0, "max": 2.5}
    assert s["fast_1"] == 0.25 and s["fast_1_vs_compile"] == 0.0
    assert s["geomean_speedup"] == pytest.approx(1.0)
    assert s["eager_vs_published"] == {"n": 2, "median_ratio": pytest.approx(0.91), "within_10pct": 1}
    assert s["phases_s_sum"] == {"baseline": 5.5, "reference": 1.0, "candidate": 0.5}   # largest first, no total
    assert list(s["phases_s_sum"]) == ["baseline", "reference", "candidate"]
    pub = kbm.published_timings(kernelbench_dir(tmp_path), "H100_Modal")
    assert pub["eager"][(1, "1_Relu.py")] == 0.0123 and pub["compile"] == {}


def test_kernelbench_status_line_names_what_is_in_flight():
    kbm = load("kernelbench")

    class FakeEvaluator:
        stats = {"memory_waited": 2, "memory_alone": 1}

        def in_flight(self):
            return [("baseline", 40.2), ("candidate", 3.0), ("baseline", 12.0)]

        def gpu_memory(self):
            return {0: {"used": 12 << 30, "budget": 60 << 30}}

    line = kbm.status_line(FakeEvaluator(), 17, 95.4)
    assert line == ("[95 s] judged 17; in flight: baseline 2 (longest 40 s), candidate 1 (longest 3 s); "
                    "memory_waited 2, memory_alone 1, rejudged_alone 0; GPU 0: 12.0/60.0 GiB")
    # with nvidia-smi's figures: what the GPU's processes hold beside what was reserved
    assert kbm.status_line(FakeEvaluator(), 17, 95.4, {0: (30.25, 79.6)}).endswith(
        "GPU 0: 12.0/60.0 GiB reserved, 30.2/79.6 GiB in use")


def test_kernelbench_device_memory_reads_nvidia_smi(tmp_path, monkeypatch):
    kbm = load("kernelbench")
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '0, 40960, 81559'\necho '1, 1024, 81559'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert kbm.device_memory() == {0: (40.0, 81559 / 1024), 1: (1.0, 81559 / 1024)}
    smi.write_text("#!/bin/sh\necho 'No devices were found'\n")
    assert kbm.device_memory() == {}
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert kbm.device_memory() == {}


def test_kernelbench_heartbeat_beside_forked_children(tmp_path, capsys):
    """Children forked while the heartbeat writes (every millisecond here) never inherit a held
    lock: every one finishes, each writing to stderr itself."""
    import sys as _sys

    from benchmarks._children import in_children

    kbm = load("kernelbench")

    class Quiet:
        stats: dict = {}

        def in_flight(self):
            return []

        def gpu_memory(self):
            return {}

    def job():
        print("child says hello", file=_sys.stderr, flush=True)
        return {"ok": True}

    progress = kbm.Progress(tmp_path / "p.jsonl")
    with kbm.heartbeat(Quiet(), progress, 0.001):
        results = in_children([job] * 24, 20.0, 4)
    assert all(r.get("ok") for r in results), results
    assert "judged 0; in flight: none" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["/no/such/kernelbench"], "is not a directory"),
    (["{kb}", "--levels", "1,x"], "--levels"),
    (["{kb}", "--levels", "3"], "no level3 folder"),
    (["{kb}", "--limit", "0"], "--limit must be >= 1"),
    (["{kb}", "--filter", "("], "not a regular expression"),
    (["{kb}", "--policy", "search", "--search-losers", "/no/such/progress.jsonl"], "is not a file"),
    (["{kb}", "--search-losers", "{kb}/level1/1_Relu.py"], "it needs --policy search"),
    (["{kb}", "--config", "{{tma: 1}}"], "--config is not JSON"),
    (["{kb}", "--config", '{{"tma": 3}}'], "config['tma'] must be true or false"),
])
def test_kernelbench_bad_arguments(tmp_path, argv, message, capsys):
    kb = kernelbench_dir(tmp_path)
    with pytest.raises(SystemExit) as info:
        load("kernelbench").main([a.format(kb=kb) for a in argv])
    assert info.value.code not in (0, None)
    assert message in capsys.readouterr().err + str(info.value.code)


def test_kernelbench_search_lenient_extern_anchor_under_the_interpreter(tmp_path):
    """--policy search --mode lenient: the compiler traces in children, the search runs in this
    process; a Conv2d + scale + min problem's candidate is ok with the convolution as the vendor
    call (its row counts it), and the report names commit, device and versions."""
    from tests.policies.test_compiler_extern import CONV_SCALE_MIN

    kbm = load("kernelbench")
    kb = tmp_path / "kb"
    (kb / "level2").mkdir(parents=True)
    (kb / "level2" / "1_Conv2d_Scale_Min.py").write_text(CONV_SCALE_MIN)
    (kb / "level2" / "2_Linear_ReLU.py").write_text(KB_LINEAR)
    (kb / "level2" / "3_Item_scale.py").write_text(KB_ITEM)
    assert kbm.main([str(kb), "--levels", "2", "--backend", "interpret", "--mode", "lenient", "--policy", "search",
                     "--budget-evals", "2", "--workers", "1", "--jobs", "2", "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "kernelbench.json").read_text())
    rows = {r["problem"]: r for r in report["rows"]}
    conv, lin, item = rows["1_Conv2d_Scale_Min.py"], rows["2_Linear_ReLU.py"], rows["3_Item_scale.py"]
    assert conv["status"] == "ok" and conv["vendor_calls"] == 1 and conv["search"]["best_origin"] == "default"
    assert lin["status"] == "ok" and lin["vendor_calls"] == 0        # products stay in Triton by default
    assert not item["traced"] and item["status"] == "no_candidate" and item["error"].startswith("trace:")
    s = report["levels"]["2"]["lenient"]
    assert (s["problems"], s["traced"], s["ok"], s["ok_with_vendor_calls"]) == (3, 2, 2, 1)
    assert set(report["env"]) >= {"commit", "device", "torch", "triton"}
    progress = [json.loads(x) for x in (tmp_path / "out" / "kernelbench.progress.jsonl").read_text().splitlines()]
    assert sorted(p["problem"] for p in progress) == ["1_Conv2d_Scale_Min.py", "2_Linear_ReLU.py"]


def test_kernelbench_both_modes_judge_a_lenient_candidate_that_differs(tmp_path):
    """--mode both with the compiler: a convolution problem's lenient candidate (a vendor call
    plus one fused kernel) is not the strict one, so lenient mode judges it rather than reusing
    the strict verdict; a candidate with nothing extern reuses it."""
    from tests.policies.test_compiler_extern import CONV_SCALE_MIN

    kbm = load("kernelbench")
    assert kbm.same_candidate("x (mode lenient) y", "x (mode strict) y")
    assert not kbm.same_candidate("x (mode lenient) F.conv2d", "x (mode strict) k0")
    assert not kbm.same_candidate(None, None)
    kb = tmp_path / "kb"
    (kb / "level2").mkdir(parents=True)
    (kb / "level2" / "1_Conv2d_Scale_Min.py").write_text(CONV_SCALE_MIN)
    (kb / "level2" / "2_Relu.py").write_text(KB_RELU)
    assert kbm.main([str(kb), "--levels", "2", "--backend", "interpret", "--mode", "both", "--workers", "1",
                     "--jobs", "1", "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "kernelbench.json").read_text())
    lenient = {r["problem"]: r for r in report["rows"] if r["mode"] == "lenient"}
    assert lenient["1_Conv2d_Scale_Min.py"]["status"] == "ok" and lenient["1_Conv2d_Scale_Min.py"]["vendor_calls"] == 1
    assert "lenient_from" not in lenient["1_Conv2d_Scale_Min.py"]
    assert lenient["2_Relu.py"]["lenient_from"] == "strict"

def test_trace_coverage_counts_traced_problems_and_reasons(tmp_path, capsys, monkeypatch):
    tc = load("trace_coverage")
    good = model_source("return torch.relu(x)", inputs="return [torch.randn(4, 8)]")
    (tmp_path / "a_relu.py").write_text(good)
    (tmp_path / "b_sort.py").write_text(good.replace("torch.relu(x)", "torch.sort(x).values + torch.fft.fft(x).real"))
    out = tmp_path / "cov.json"
    monkeypatch.setattr(sys, "argv", ["trace_coverage.py", str(tmp_path), "--limit", "300", "--json", str(out)])
    assert tc.main() == 0
    text = capsys.readouterr().out
    assert "2 problems, traced 1, compiled 1, timeouts 0" in text
    assert "function torch.sort has no catalog op" in text
    rows = {Path(r["path"]).name: r for r in json.loads(out.read_text())}
    assert rows["a_relu.py"]["ok"] and not rows["b_sort.py"]["ok"] and rows["b_sort.py"]["stage"] == "trace"
    assert tc.reasons("TraceError: unsupported calls in Model.forward (no catalog op): sort (call_function sort): "
                      "function torch.sort has no catalog op; view (call_method view): reshape (4, 8) -> (2, 2, 8)") \
        == ["function torch.sort has no catalog op", "reshape (N, N) -> (N, N, N)"]


def test_every_benchmark_is_a_module_of_the_package_without_path_hacks():
    """Each benchmark `kernelgym bench` lists imports as benchmarks.NAME and has a main(); none edits
    sys.path; the shared `_` modules are not listed."""
    from kernelgym.benchmarks_cli import available

    names = available()
    assert "kernelbench" in names and "trace_coverage" in names
    assert not [n for n in names if n.startswith("_")]
    for path in sorted(BENCH.glob("*.py")):
        assert "sys.path.insert" not in path.read_text(), path.name
    for name in names:
        assert callable(load(name).main), name


def test_benchmarks_run_with_dash_m_and_through_kernelgym_bench(tmp_path):
    """`python -m benchmarks.NAME` from the checkout, and `kernelgym bench NAME` from any folder."""
    import subprocess

    root = BENCH.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    direct = subprocess.run([sys.executable, "-m", "benchmarks.kernelbench", "--help"], cwd=root, env=env,
                            capture_output=True, text=True, timeout=120)
    assert direct.returncode == 0 and "--trace-only" in direct.stdout, direct.stderr
    listed = subprocess.run([sys.executable, "-m", "kernelgym", "bench"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    names = listed.stdout.strip().removeprefix("benchmarks: ").split(", ")
    assert listed.returncode == 0 and "kernelbench" in names and not [n for n in names if n.startswith("_")]
    bench = subprocess.run([sys.executable, "-m", "kernelgym", "bench", "trace_coverage", "--help"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=120)
    assert bench.returncode == 0 and "python -m benchmarks.trace_coverage DIR" in bench.stdout, bench.stderr


def test_sandbox_overhead_judges_a_fresh_copy_of_each_kernel():
    """Each evaluation's kernels get a new Triton cache key (their source), nothing else changes."""
    from benchmarks.sandbox_overhead import fresh_copy
    from tests.redteam.manifest import cases

    src = next(c.source for c in cases() if c.id == "legit/row_softmax")
    a, b = fresh_copy(src, 1), fresh_copy(src, 2)
    assert a != b and a.replace("    # copy 1\n", "") == src
    body = a.split("def softmax_kernel", 1)[1]
    assert body.index("# copy 1") < body.index("tl.program_id")


def test_kernelbench_resume_keeps_what_a_cut_run_judged(tmp_path, capsys):
    """--resume: problems the progress file holds whole rows for are kept as they were (not judged
    again), the rest are judged; a line cut short by a kill is named and judged again."""
    kbm = load("kernelbench")
    kb = kernelbench_dir(tmp_path)
    (kb / "level1" / "3_Relu_again.py").write_text(KB_RELU)
    out = tmp_path / "out"
    argv = [str(kb), "--levels", "1", "--backend", "interpret", "--mode", "strict", "--workers", "1", "--jobs", "1",
            "--out", str(out)]
    assert kbm.main(argv) == 0
    path = out / "kernelbench.progress.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert sorted(x["problem"] for x in lines) == ["1_Relu.py", "3_Relu_again.py"]
    assert all(x["row"]["status"] == "ok" and "class ModelNew" in x["source"] for x in lines)
    kept = next(x for x in lines if x["problem"] == "1_Relu.py")
    kept["row"]["candidate_ms"] = 12345.0   # a marker: only a kept row carries it
    path.write_text(json.dumps(kept) + "\n" + '{"level": 1, "mode": "strict", "problem": "3_Re')
    assert kbm.main([*argv, "--resume"]) == 0
    assert "not JSON, judged again" in capsys.readouterr().err
    report = json.loads((out / "kernelbench.json").read_text())
    rows = {r["problem"]: r for r in report["rows"]}
    assert rows["1_Relu.py"]["candidate_ms"] == 12345.0
    assert rows["3_Relu_again.py"]["status"] == "ok" and rows["3_Relu_again.py"]["candidate_ms"] != 12345.0
    assert rows["2_Item_scale.py"]["status"] == "no_candidate"
    assert report["levels"]["1"]["strict"]["ok"] == 2
    assert [json.loads(x)["problem"] for x in path.read_text().splitlines()] == ["1_Relu.py", "3_Relu_again.py"]
    # a row judged for another candidate (the compiler changed since) is judged again
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    for x in lines:
        x["row"]["candidate_ms"] = 12345.0
    lines[1]["source"] += "# written by an older compiler\n"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert kbm.main([*argv, "--resume"]) == 0
    assert "1 resumed row(s) judged again, their candidate changed: 3_Relu_again.py" in capsys.readouterr().err
    rows = {r["problem"]: r for r in json.loads((out / "kernelbench.json").read_text())["rows"]}
    assert rows["1_Relu.py"]["candidate_ms"] == 12345.0
    assert rows["3_Relu_again.py"]["status"] == "ok" and rows["3_Relu_again.py"]["candidate_ms"] != 12345.0


def test_kernelbench_search_losers_searches_only_what_the_compiler_did_not_win(tmp_path, capsys):
    """--search-losers FILE: a problem the compiler run judged faster than eager and torch.compile
    keeps its row (marked, not judged again); the others are searched; the summary counts them."""
    kbm = load("kernelbench")
    kb = tmp_path / "kb"
    (kb / "level2").mkdir(parents=True)
    (kb / "level2" / "1_Linear_ReLU.py").write_text(KB_LINEAR)
    (kb / "level2" / "2_Relu.py").write_text(KB_RELU)
    common = [str(kb), "--levels", "2", "--backend", "interpret", "--mode", "lenient", "--workers", "1", "--jobs", "1"]
    assert kbm.main([*common, "--out", str(tmp_path / "compiler")]) == 0
    path = tmp_path / "compiler" / "kernelbench.progress.jsonl"
    lines = {x["problem"]: x for x in map(json.loads, path.read_text().splitlines())}
    assert set(lines) == {"1_Linear_ReLU.py", "2_Relu.py"}
    won = lines["1_Linear_ReLU.py"]   # the interpreter times nothing: as a GPU run would have it
    won["row"].update(speedup=1.5, speedup_vs_compile=1.2, candidate_ms=777.0)
    lost = lines["2_Relu.py"]
    lost["row"].update(speedup=1.5, speedup_vs_compile=0.9)   # not faster than torch.compile: searched
    path.write_text(json.dumps(won) + "\n" + json.dumps(lost) + "\n{cut")
    assert kbm.main([*common, "--policy", "search", "--budget-evals", "2", "--search-losers", str(path),
                     "--out", str(tmp_path / "search")]) == 0
    report = json.loads((tmp_path / "search" / "kernelbench.json").read_text())
    rows = {r["problem"]: r for r in report["rows"]}
    kept, searched = rows["1_Linear_ReLU.py"], rows["2_Relu.py"]
    assert kept["candidate_ms"] == 777.0 and "faster than eager and torch.compile" in kept["search_skipped"]
    assert "search" not in kept
    assert searched["status"] == "ok" and searched["search"]["evaluations"] >= 1 and not searched.get("search_skipped")
    assert report["levels"]["2"]["lenient"]["search_skipped"] == 1
    assert "1 problem(s) kept from the compiler run (--search-losers), 1 searched" in capsys.readouterr().out
    progress = [json.loads(x)["problem"] for x in (tmp_path / "search" / "kernelbench.progress.jsonl").read_text().splitlines()]
    assert progress == ["2_Relu.py"]
    # --search-losers-vs eager: a problem faster than eager is kept though torch.compile beat it
    kept = kbm.compiler_winners(path, 2, "lenient", "eager")
    assert set(kept) == {"1_Linear_ReLU.py", "2_Relu.py"}
    assert kept["2_Relu.py"]["row"]["search_skipped"].endswith("is faster than eager")
    assert kbm.compiler_winners(path, 1, "lenient") == {} and kbm.compiler_winners(path, 2, "strict") == {}


def test_registers_reports_spills_of_each_launch(tmp_path, capsys, monkeypatch):
    """Each distinct launch compiled for sm_90 on this CPU (Triton bundles ptxas): registers and
    spill bytes per row, the summary and the JSON."""
    pytest.importorskip("triton.backends.nvidia")
    reg = load("registers")
    probs = tmp_path / "level"
    probs.mkdir()
    (probs / "1_Linear_BN.py").write_text(model_source(
        "return self.bn(self.fc(x))", "x", "return [torch.randn(64, 256)]",
        "self.fc = nn.Linear(256, 128)\n        self.bn = nn.BatchNorm1d(128)"))
    (probs / "2_Bad.py").write_text("this is not python")
    monkeypatch.setattr(sys, "argv", ["registers", str(probs), "--json", str(tmp_path / "r.json"), "--timeout", "240"])
    try:
        assert reg.main() == 0
    except Exception as exc:  # noqa: BLE001 - no sm_90 toolchain here
        pytest.skip(f"sm_90 compile unavailable: {type(exc).__name__}: {exc}")
    out = json.loads((tmp_path / "r.json").read_text())
    (row,) = out["rows"]
    assert row["problem"] == "1_Linear_BN" and row["kernel"].startswith("k0_linear")
    assert 0 < row["registers"] <= reg.MAX_REGISTERS and row["spill_stores"] == 0 and row["shared"] > 0
    assert out["summary"]["launches"] == 1 and out["summary"]["spilling"] == 0
    # 64 x 128 outputs in 128 x 64 tiles: 2 programs, named among the launches leaving SMs idle
    assert row["programs"] == 2 and out["summary"]["few_programs"] == [f"1_Linear_BN {row['kernel']} (2)"]
    assert [name for name, _ in out["failed"]] == ["2_Bad"]
    text = capsys.readouterr().out
    assert "1 launches compiled for sm_90" in text and "not measured: 2_Bad" in text


KB_CONVS = '''
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=1, groups=2)
        self.up = nn.ConvTranspose2d(6, 3, 2, stride=2, bias=False)

    def forward(self, x):
        return self.up(torch.relu(self.conv(x)))


def get_inputs():
    return [torch.randn(2, 4, 5, 5)]


def get_init_inputs():
    return []
'''


def test_conv_layout_reads_each_convolution_of_a_problem(tmp_path, capsys, monkeypatch):
    """conv_layout's calls: every convolution's op, input and weight shapes and call keywords, from
    the traced program (what it then times in NCHW and channels-last on a GPU)."""
    cl = load("conv_layout")
    path = tmp_path / "1_Conv_ConvT.py"
    path.write_text(KB_CONVS)
    calls = cl.conv_calls(str(path))
    assert [(c["op"], c["x"], c["w"], c["bias"]) for c in calls] == [
        ("conv2d", (2, 4, 5, 5), (6, 2, 3, 3), True), ("conv_transpose2d", (2, 6, 5, 5), (6, 3, 2, 2), False)]
    assert calls[0]["kw"]["groups"] == 2 and calls[0]["kw"]["padding"] == (1, 1)
    assert calls[1]["kw"]["stride"] == (2, 2)
    import torch

    if not torch.cuda.is_available():
        monkeypatch.setattr(sys, "argv", ["conv_layout", str(tmp_path)])
        assert cl.main() == 2 and "needs a CUDA GPU" in capsys.readouterr().err


def test_kernelbench_reports_a_hash_of_the_code_it_ran(tmp_path):
    """`source_hash`: the same for the same .py files under kernelgym/, policies/ and benchmarks/,
    another when one changes (a report's provenance where git metadata is stale)."""
    kbm = load("kernelbench")
    for sub in ("kernelgym", "policies", "benchmarks"):
        (tmp_path / sub / "pkg").mkdir(parents=True)
        (tmp_path / sub / "pkg" / "m.py").write_text(f"X = '{sub}'\n")
    (tmp_path / "kernelgym" / "notes.txt").write_text("not code")
    first = kbm.source_hash(tmp_path)
    assert first == kbm.source_hash(tmp_path) and len(first) == 12
    (tmp_path / "kernelgym" / "notes.txt").write_text("changed, still not code")
    assert kbm.source_hash(tmp_path) == first
    (tmp_path / "policies" / "pkg" / "m.py").write_text("X = 'changed'\n")
    assert kbm.source_hash(tmp_path) != first
    assert len(kbm.source_hash()) == 12    # this checkout


def test_progress_files_are_read_by_each_problems_last_line(tmp_path):
    """A row judged again (its candidate changed) is appended: `read_progress`, and so --resume and
    --search-losers, take a problem's last line; a cut line is skipped."""
    kbm = load("kernelbench")

    def line(problem: str, speedup: float) -> str:
        row = {"problem": problem, "status": "ok", "speedup": speedup, "speedup_vs_compile": speedup}
        return json.dumps({"level": 2, "mode": "lenient", "problem": problem, "row": row, "source": "s"}) + "\n"

    path = tmp_path / "kernelbench.progress.jsonl"
    path.write_text(line("1_A.py", 1.5) + line("2_B.py", 0.7) + line("1_A.py", 0.9) + line("2_B.py", 1.2)
                    + '{"level": 2, "mode": "len')
    got = kbm.read_progress(path)
    assert {k: v["row"]["speedup"] for k, v in got.items()} == {(2, "lenient", "1_A.py"): 0.9,
                                                                 (2, "lenient", "2_B.py"): 1.2}
    assert sorted(kbm.compiler_winners(path, 2, "lenient")) == ["2_B.py"]   # 1_A's last row loses
    assert kbm.compiler_winners(path, 1, "lenient") == {}


@pytest.mark.parametrize("name", ["dot_smem", "registers"])
def test_problem_folder_scripts_name_a_missing_folder(name, tmp_path, monkeypatch):
    """The scripts over KernelBench-format folders (`dot_smem.problem_paths`, conv_layout's too)
    refuse a path that is not a folder by naming it, whichever script was run."""
    missing = str(tmp_path / "no_such_level")
    monkeypatch.setattr(sys, "argv", [name, missing])
    with pytest.raises(SystemExit, match="no_such_level' is not a folder") as exc:
        load(name).main()
    assert "dot_smem" not in str(exc.value)


KB_GROUPS = '''
import torch
import torch.nn as nn

batch_size = 128  # scaled up
channels = 96
groups = 3
kernel = (3, 5)


class Model(nn.Module):
    def __init__(self, channels, groups):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)

    def forward(self, x):
        return self.norm(x)


def get_inputs():
    return [torch.rand(batch_size, channels, 224, 30)]


def get_init_inputs():
    return [channels, groups]
'''

KB_FIXED = '''
import torch
import torch.nn as nn

batch_size = 64


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4096, 4096)

    def forward(self, x):
        return self.fc(x)


def get_inputs():
    return [torch.rand(batch_size, 4096)]


def get_init_inputs():
    return []
'''


def test_kb_shrink_keeps_residues_powers_of_two_and_factors():
    """`shrink_int`: at or below the cap unchanged; above it, the residue mod 8 and the powers of two
    up to the cap stay, and with `factors` 3, 5 and 7 too."""
    from benchmarks.kb_shrink import shrink_int

    assert shrink_int(7, 16) == 7 and shrink_int(16, 16) == 16
    assert shrink_int(4096, 16) == 16 and shrink_int(131072, 8) == 8
    assert shrink_int(8205, 16) == 21 and shrink_int(8205, 16) % 8 == 8205 % 8   # odd stays odd
    assert shrink_int(96, 16) == 16 and shrink_int(96, 16, factors=True) == 48
    assert shrink_int(1000, 16, factors=True) == 40


def test_kb_shrink_source_changes_only_size_literals():
    """Module-level and get_inputs literals above the cap shrink; small ones, comments, and literals
    inside the model do not."""
    from benchmarks.kb_shrink import shrink_source

    text, changes = shrink_source(KB_GROUPS, 16)
    assert changes == [(128, 16), (96, 16), (224, 16), (30, 22)]
    assert "batch_size = 16  # scaled up" in text and "groups = 3\n" in text and "kernel = (3, 5)" in text
    assert "torch.rand(batch_size, channels, 16, 22)" in text
    fixed, _ = shrink_source(KB_FIXED, 16)
    assert "nn.Linear(4096, 4096)" in fixed and "torch.rand(batch_size, 16)" in fixed


def test_kb_shrink_writes_copies_that_run_and_names_what_does_not_fit(tmp_path, capsys):
    """A problem whose groups need factor 3 kept is written at the first attempt that builds and runs;
    one with sizes fixed inside its model is shrunk there too; one that does not run is named with
    its error and not written; OUT inside the checkout is refused."""
    kbs = load("kb_shrink")
    level = tmp_path / "kb" / "level1"
    level.mkdir(parents=True)
    (level / "1_GroupNorm.py").write_text(KB_GROUPS)
    (level / "2_Fixed.py").write_text(KB_FIXED)
    (level / "3_Missing.py").write_text("import kb_shrink_no_such_module\n" + KB_FIXED)
    out = tmp_path / "small"
    assert kbs.main([str(tmp_path / "kb"), str(out), "--levels", "1", "--jobs", "1", "--timeout", "60"]) == 0
    text = capsys.readouterr().out
    copy = (out / "level1" / "1_GroupNorm.py").read_text()
    # cap 16: 16 channels do not divide by 3 groups, keeping factor 3 (48 channels, 112 x 30) is over
    # the element limit; cap 8 keeping factors fits
    assert "channels = 24" in copy and "batch_size = 8" in copy
    assert "nn.Linear(16, 16)" in (out / "level1" / "2_Fixed.py").read_text()
    rows = {r["problem"]: r for r in json.loads((out / "kb_shrink.json").read_text())["levels"]["1"]}
    assert rows["1_GroupNorm.py"]["cap"] == 8 and [128, 8] in rows["1_GroupNorm.py"]["changes"]
    assert rows["3_Missing.py"]["cap"] is None and "ModuleNotFoundError" in rows["3_Missing.py"]["error"]
    assert not (out / "level1" / "3_Missing.py").exists()
    assert "3_Missing.py: cap 64, inside the model too: ModuleNotFoundError" in text
    # 2_Fixed at cap 16 inside its model, 1_GroupNorm at cap 8, 3_Missing not fitted
    assert re.search(r"^\s+1\s+3\s+1\s+1\s+0\s+0\s+1\s+1$", text, re.M), text
    ns: dict = {}
    exec(compile(copy, "copy", "exec"), ns)
    assert tuple(ns["get_inputs"]()[0].shape) == (8, 24, 56, 30)
    with pytest.raises(SystemExit, match="inside the checkout"):
        kbs.main([str(tmp_path / "kb"), str(level / "x"), "--levels", "1"])


def test_forked_children_compute_after_the_parent_used_openmp():
    """`in_children` after this process ran parallel torch ops (as pytest has by then): a forked
    child's CPU op must not wait for the parent's OpenMP threads (it hung until killed)."""
    import torch

    from benchmarks._children import in_children

    x = torch.randn(256, 256)
    assert torch.isfinite(x @ x).all()

    def job() -> dict:
        y = torch.nn.functional.group_norm(torch.randn(4, 24, 32, 32), 3)
        return {"ok": bool(torch.isfinite(y).all())}

    assert in_children([job], timeout=60, parallel=1)[0].get("ok") is True


@pytest.mark.parametrize("argv, message", [
    (["--max-elements", "0"], "--max-elements must be >= 1"), (["--jobs", "0"], "--jobs must be >= 1"),
    (["--timeout", "0"], "--timeout must be > 0"), (["--filter", "("], "is not a regex"),
    (["--levels", "x"], "--levels takes numbers")])
def test_kb_shrink_bad_arguments(tmp_path, argv, message, capsys):
    """Each bad option is named before any problem is read."""
    (tmp_path / "kb" / "level1").mkdir(parents=True)
    with pytest.raises(SystemExit) as info:
        load("kb_shrink").main([str(tmp_path / "kb"), str(tmp_path / "out"), "--levels", "1", *argv])
    assert info.value.code not in (0, None)
    assert message in capsys.readouterr().err + str(info.value.code)
