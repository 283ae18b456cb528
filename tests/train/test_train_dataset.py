"""Dataset builder: verl parquet round trip (pandas/pyarrow), suites, SFT from a policy, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kernelgym.sampler import TaskSampler
from tests._kernels import RELU, WRONG_RELU
from train.build_dataset import (
    load_policy,
    main,
    parse_difficulties,
    sft_rows,
    task_from_row,
    task_row,
    to_hf_dataset,
    write_parquet,
)

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

REDTEAM_TASKS = Path(__file__).resolve().parents[1] / "redteam" / "tasks"


def test_parse_difficulties():
    assert parse_difficulties("1-3") == [1, 2, 3]
    assert parse_difficulties("4,1,4") == [1, 4]
    assert parse_difficulties("7") == [7]
    for bad in ("0", "3-1", "x", "1-17", ""):
        with pytest.raises(ValueError):
            parse_difficulties(bad)


def test_cli_round_trip(tmp_path):
    assert main(["--difficulties", "1-2", "--n", "2", "--val-n", "1", "--out", str(tmp_path)]) == 0
    train = pd.read_parquet(tmp_path / "train.parquet")
    val = pd.read_parquet(tmp_path / "val.parquet")
    assert len(train) == 4 and len(val) == 2
    assert set(train.columns) == {"data_source", "prompt", "ability", "reward_model", "extra_info"}
    sampler = TaskSampler("tiny")
    for _, row in train.iterrows():
        info = row["extra_info"]
        task = task_from_row(row)
        expect = sampler.sample(int(info["difficulty"]), int(info["seed"]))
        assert task.source == expect.source and task.id == expect.id == row["reward_model"]["task_id"]
        assert task.ops == expect.ops and task.difficulty == expect.difficulty
        assert json.dumps(task.graph.to_dict(), sort_keys=True) == json.dumps(expect.graph.to_dict(), sort_keys=True)
        assert row["data_source"] == f"kernelgym/synthetic/d{info['difficulty']}"
        msgs = list(row["prompt"])
        assert len(msgs) == 1 and msgs[0]["role"] == "user" and task.source.strip() in msgs[0]["content"]
        assert row["reward_model"]["ground_truth"] == expect.source and row["ability"] == "triton_kernel"
    assert sorted(int(s) for s in train["extra_info"].map(lambda i: i["seed"])) == [0, 0, 1, 1]
    # validation seeds never overlap the training ones
    assert all(int(i["seed"]) >= 1_000_000 for i in val["extra_info"])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["written"]["train"]["rows"] == 4


def test_suite_and_multi_turn_rows(tmp_path):
    assert main(["--suite", str(REDTEAM_TASKS), "--multi-turn", "--agent", "kernelgym_multiturn",
                 "--out", str(tmp_path)]) == 0
    df = pd.read_parquet(tmp_path / "suite_tasks.parquet")
    assert len(df) == len(list(REDTEAM_TASKS.glob("*.py")))
    row = df.iloc[0]
    assert row["data_source"] == "kernelgym/suite/tasks" and row["agent_name"] == "kernelgym_multiturn"
    kw = row["extra_info"]["interaction_kwargs"]
    assert kw["name"] == "kernelgym" and kw["ground_truth"] == row["reward_model"]["ground_truth"]
    assert task_from_row(row).source == (REDTEAM_TASKS / f"{row['reward_model']['task_id']}.py").read_text()


def test_errors(tmp_path, capsys):
    assert main(["--out", str(tmp_path)]) != 0
    assert main(["--difficulties", "0", "--out", str(tmp_path)]) == 2
    assert "difficulties" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no rows"):
        write_parquet([], tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="module:attr"):
        load_policy("nonsense")


class KnownGood:
    """A policy for relu tasks: one wrong kernel, one right one (the SFT filter must keep only it)."""

    name = "known-good"

    def propose(self, task, n=1, history=()):
        return [WRONG_RELU, RELU][: max(n, 2)]


def test_sft_rows_keep_only_accepted_kernels(evaluator, tmp_path):
    sampler = TaskSampler("tiny")
    tasks = [sampler.sample(1, s, ops=["relu"]) for s in range(2)]
    rows, stats = sft_rows(tasks, KnownGood(), n=2, backend="interpret", evaluator=evaluator)
    assert stats["ok"] == 2 and stats["incorrect"] == 2 and stats["tasks_with_solution"] == 2
    assert len(rows) == 2
    for row, task in zip(rows, tasks):
        assert row["response"] == f"```python\n{RELU.strip()}\n```"
        assert row["messages"][1] == {"role": "assistant", "content": row["response"]}
        assert row["extra_info"]["task_id"] == task.id and task.source.strip() in row["prompt"]
    df = pd.read_parquet(write_parquet(rows, tmp_path / "sft_train.parquet"))
    assert list(df["response"]) == [r["response"] for r in rows]
    with pytest.raises(TypeError, match="propose"):
        sft_rows(tasks, object())


def test_hf_export():
    pytest.importorskip("datasets")
    task = TaskSampler("tiny").sample(1, 0)
    ds = to_hf_dataset([task_row(task, 0, "train")])
    assert ds[0]["reward_model"]["task_id"] == task.id and task_from_row(ds[0]).source == task.source
