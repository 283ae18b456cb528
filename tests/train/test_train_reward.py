"""verl reward functions on real verdicts (interpreter backend, a tiny relu task)."""

from __future__ import annotations

import pytest

from kernelgym.sampler import TaskSampler
from tests._kernels import RELU, WRONG_RELU
from train.build_dataset import task_row
from train.verl.reward import compute_score, compute_score_batch, decodable, last_candidate, make_reward


@pytest.fixture(scope="module")
def row():
    return task_row(TaskSampler("tiny").sample(1, 3, ops=["relu"]), 0, "train")


def test_correct_and_incorrect_kernels(evaluator, row):
    kw = {"backend": "interpret", "evaluator": evaluator}
    args = (row["data_source"], row["reward_model"]["ground_truth"])
    good = compute_score(args[0], f"Here it is:\n```python\n{RELU}```", args[1], row["extra_info"], **kw)
    bad = compute_score(args[0], WRONG_RELU, args[1], row["extra_info"], **kw)
    assert good["score"] == 1.0 and good["correct"] == 1.0 and good["reward/correctness"] == 1.0, good
    assert good["speed_valid"] == 0.0 and good["reward/speed"] == 0.0  # the interpreter does not time
    assert bad["score"] == 0.0 and bad["correct"] == 0.0 and bad["compiled"] == 1.0 and bad["format"] == 1.0
    assert set(good) == set(bad) and all(isinstance(v, float) for v in good.values())
    assert good["difficulty"] == 1.0


def test_batch_form_keeps_order(evaluator, row):
    sols = ["no code here", RELU, WRONG_RELU]
    out = compute_score_batch([row["data_source"]] * 3, sols, [row["reward_model"]["ground_truth"]] * 3,
                              [row["extra_info"]] * 3, backend="interpret", evaluator=evaluator)
    assert [o["score"] for o in out] == [0.0, 1.0, 0.0], out
    assert out[0]["format"] == 0.0 and out[2]["format"] == 1.0
    assert len({frozenset(o) for o in out}) == 1


def test_bad_input(row):
    gt = row["reward_model"]["ground_truth"]
    with pytest.raises(ValueError, match="data_source"):
        compute_score("openai/gsm8k", RELU, gt, {})
    with pytest.raises(TypeError, match="unknown KernelGym reward option"):
        compute_score(row["data_source"], RELU, gt, {}, backedn="interpret")
    with pytest.raises(ValueError, match="KernelBench-format"):
        compute_score(row["data_source"], RELU, "x = 1", {})
    with pytest.raises(TypeError, match="ground_truth"):
        compute_score(row["data_source"], RELU, 42, {})
    with pytest.raises(ValueError, match="same length"):
        compute_score_batch(["kernelgym/x"], [RELU, RELU], [gt], [{}])


def test_training_reward_is_decodable():
    assert decodable(make_reward())
    assert not decodable(make_reward("decoupled", {"speed_min": -1.0}))
    assert not decodable(make_reward("binary"))


def test_last_candidate_takes_the_final_attempt():
    text = f"```python\n{WRONG_RELU}```\nAttempt 1/3: status incorrect.\n```python\n{RELU}```"
    assert RELU in last_candidate(text) and WRONG_RELU not in last_candidate(text)
    assert last_candidate("no fences") == "no fences"
