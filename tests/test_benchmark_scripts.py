"""The policy benchmark scripts run end to end on tiny tasks under the interpreter and write the
JSON their notes are made from; bad arguments fail with a message naming them."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("policies.compiler")
BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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
    assert "== candidate: 1 workers" in summary and "run_candidate" in summary and "== reference" in summary
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


def test_trace_coverage_counts_traced_problems_and_reasons(tmp_path, capsys, monkeypatch):
    tc = load("trace_coverage")
    good = "import torch\nimport torch.nn as nn\n\n\nclass Model(nn.Module):\n    def forward(self, x):\n" \
           "        return torch.relu(x)\n\n\ndef get_inputs():\n    return [torch.randn(4, 8)]\n\n\n" \
           "def get_init_inputs():\n    return []\n"
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
