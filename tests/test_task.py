"""Task format, loader and `kernelgym sample` output."""

from __future__ import annotations

import json
import pickle

import pytest

from kernelgym.cli import main as cli_main
from kernelgym.graph import Graph, InputSpec, Node
from kernelgym.task import Task, TaskFormatError, check_source, load_suite

GOOD = '''import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        return torch.relu(x)


def get_inputs():
    return [torch.randn(4, 8)]


def get_init_inputs():
    return []
'''


def test_check_source_accepts_kernelbench_format():
    check_source(GOOD)


@pytest.mark.parametrize(
    "source, problem",
    [
        ("", "empty"),
        ("def broken(:\n", "syntax error at line 1"),
        (GOOD.replace("def get_inputs", "def other_name"), "missing top-level definition(s): get_inputs"),
        (GOOD.replace("class Model", "class Other"), "missing top-level definition(s): Model"),
        (GOOD + "\nModel = 3\n", None),  # redefinition as non-class is still a class first; fine statically
        ("Model = 1\ndef get_inputs(): pass\ndef get_init_inputs(): pass\n", "missing top-level definition(s): Model"),
        ("class Model: pass\nget_inputs = 1\ndef get_init_inputs(): pass\n", "missing top-level definition(s): get_inputs"),
    ],
)
def test_check_source_rejects_with_clear_problem(source, problem):
    if problem is None:
        check_source(source)
        return
    with pytest.raises(TaskFormatError) as err:
        check_source(source, "t.py")
    assert problem in str(err.value)
    assert str(err.value).startswith("t.py: ")


def test_suite_loads_good_files_and_reports_broken_ones(tmp_path):
    (tmp_path / "1_relu.py").write_text(GOOD)
    (tmp_path / "2_syntax.py").write_text("class Model(:\n")
    (tmp_path / "3_missing.py").write_text(GOOD.replace("get_init_inputs", "get_init"))
    (tmp_path / "4_binary.py").write_bytes(b"\xff\xfe\x00garbage")
    (tmp_path / "5_relu.py").write_text(GOOD)
    (tmp_path / "5_relu.json").write_text("{not json")
    (tmp_path / "6_relu.py").write_text(GOOD)
    (tmp_path / "notes.txt").write_text("ignored")
    suite = load_suite(tmp_path)
    assert [t.id for t in suite] == ["1_relu", "6_relu"]
    problems = {e.where.rsplit("/", 1)[-1]: e.problem for e in suite.errors}
    assert set(problems) == {"2_syntax.py", "3_missing.py", "4_binary.py", "5_relu.json"}
    assert "syntax error" in problems["2_syntax.py"]
    assert "get_init_inputs" in problems["3_missing.py"]
    assert "cannot read" in problems["4_binary.py"]
    assert "unreadable metadata" in problems["5_relu.json"]
    with pytest.raises(TaskFormatError, match="2_syntax.py"):
        load_suite(tmp_path, strict=True)


def test_suite_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_suite(tmp_path / "nope")


def test_task_write_and_load_round_trip(tmp_path):
    task = Task(id="t1", source=GOOD, name="Relu", difficulty=1, ops=("relu",), seed=3,
                graph={"inputs": [], "nodes": [], "outputs": []}, meta={"flops": 32})
    path = task.write(tmp_path)
    loaded = Task.from_file(path)
    assert loaded.source == task.source
    assert (loaded.difficulty, loaded.ops, loaded.seed, loaded.graph) == (1, ("relu",), 3, task.graph)
    assert loaded.meta["flops"] == 32 and loaded.meta["path"] == str(path)
    assert Task.from_dict(task.to_dict()) == task


# A graph with what JSON changes (tuples become lists) and what it must keep (an index bound, None).
SMALL_GRAPH = Graph(
    inputs=(InputSpec((4, 8)), InputSpec((4,), kind="index", bound=8)),
    nodes=(Node("relu", {}, (("input", 0),), (4, 8)),
           Node("sum", {"dim": (1,), "keepdim": False}, (("node", 0),), (4,), fresh={"k": 3})),
    outputs=(1,),
)
# The sidecar's "graph" as every earlier version wrote it: the on-disk format must not change.
SMALL_GRAPH_JSON = {
    "inputs": [{"bound": None, "kind": "float", "range": "real", "shape": [4, 8]},
               {"bound": 8, "kind": "index", "range": "real", "shape": [4]}],
    "nodes": [{"args": [["input", 0]], "fresh": {}, "op": "relu", "params": {}, "shape": [4, 8]},
              {"args": [["node", 0]], "fresh": {"k": 3}, "op": "sum", "params": {"dim": [1], "keepdim": False},
               "shape": [4]}],
    "outputs": [1],
}


def test_task_graph_is_a_graph_and_its_files_keep_the_json_form(tmp_path):
    task = Task(id="t2", source=GOOD, graph=SMALL_GRAPH, meta={"dtype": "float32"})
    path = task.write(tmp_path)
    assert json.loads(path.with_suffix(".json").read_text())["graph"] == SMALL_GRAPH_JSON
    loaded = Task.from_file(path)
    assert isinstance(loaded.graph, Graph) and loaded.graph.to_dict() == Graph.from_dict(SMALL_GRAPH_JSON).to_dict()
    assert loaded.graph.inputs == SMALL_GRAPH.inputs and loaded.graph.outputs == (1,)
    assert loaded.graph.nodes[1].params == {"dim": [1], "keepdim": False} and loaded.graph.nodes[1].fresh == {"k": 3}
    # through JSON text (dataset rows), the Task constructor (the JSON form is read into a Graph) and pickle
    via_json = Task.from_dict(json.loads(json.dumps(task.to_dict())))
    assert isinstance(via_json.graph, Graph) and json.loads(json.dumps(via_json.to_dict()))["graph"] == SMALL_GRAPH_JSON
    assert Task(id="t2", source=GOOD, graph=SMALL_GRAPH_JSON).graph == Graph.from_dict(SMALL_GRAPH_JSON)
    assert pickle.loads(pickle.dumps(task)) == task and pickle.loads(pickle.dumps(task)).graph == SMALL_GRAPH
    assert Task(id="t3", source=GOOD).to_dict()["graph"] is None


def test_sampled_task_graph_round_trips_through_files_and_json(tmp_path):
    from kernelgym.sampler import sample_task

    task = sample_task(2, 0)
    assert isinstance(task.graph, Graph) and task.graph.ops == task.ops
    loaded = Task.from_file(task.write(tmp_path))
    as_json = json.dumps(task.graph.to_dict(), sort_keys=True)
    assert json.dumps(loaded.graph.to_dict(), sort_keys=True) == as_json
    assert loaded.graph.expression() == task.graph.expression() == task.meta["dag"]
    assert loaded.graph.estimate() == task.graph.estimate()
    row = json.loads(json.dumps(task.to_dict(with_source=False)))   # as train/build_dataset stores it
    assert json.dumps(Task.from_dict({**row, "source": task.source}).graph.to_dict(), sort_keys=True) == as_json


@pytest.mark.parametrize("graph, problem", [
    ({"inputs": [], "nodes": []}, "graph has no outputs"),
    ({"inputs": [{"shape": [4], "colour": "red"}], "nodes": [], "outputs": []}, "malformed graph"),
    ({"inputs": [], "nodes": [{"op": "relu", "args": [["input", 0]], "shape": [4]}], "outputs": [0]},
     "missing key 'params'"),
    ([1, 2], "graph must be a Graph or its JSON form, got list"),
])
def test_a_malformed_graph_is_a_task_format_error(tmp_path, graph, problem):
    with pytest.raises(TaskFormatError, match=problem):
        Task(id="bad", source=GOOD, graph=graph)
    (tmp_path / "bad.py").write_text(GOOD)
    (tmp_path / "bad.json").write_text(json.dumps({"graph": graph}))
    with pytest.raises(TaskFormatError, match=f"bad.json: .*{problem}"):
        Task.from_file(tmp_path / "bad.py")


def test_task_instantiate_runs_the_source():
    module = Task.from_source(GOOD).instantiate()
    out = module.Model()(*module.get_inputs())
    assert tuple(out.shape) == (4, 8)


def test_sample_cli_writes_tasks_and_index(tmp_path, capsys):
    out = tmp_path / "tasks"
    assert cli_main(["sample", "-d", "1-2", "-n", "2", "--seed", "5", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [(r["difficulty"], r["seed"]) for r in rows] == [(1, 5), (1, 6), (2, 5), (2, 6)]
    assert all(len(r["ops"]) == r["difficulty"] for r in rows)
    suite = load_suite(out)
    assert len(suite) == 4 and not suite.errors
    assert all(t.graph is not None and t.meta["flops"] >= 0 for t in suite)
    # A second run refuses to overwrite, and with --force keeps the index whole.
    assert cli_main(["sample", "-d", "1", "-n", "1", "--seed", "5", "--out", str(out)]) == 2
    assert "already exist" in capsys.readouterr().err
    assert cli_main(["sample", "-d", "3", "-n", "1", "--seed", "0", "--out", str(out)]) == 0
    assert len((out / "index.jsonl").read_text().splitlines()) == 5


def test_run_rejects_a_missing_suite(capsys):
    # The main job itself is tested in tests/test_runner.py.
    assert cli_main(["run", "--suite", "somewhere"]) == 2
    assert "'somewhere' is not a directory" in capsys.readouterr().err
    # Checked before the policy is built: an unloadable policy does not hide the bad suite.
    assert cli_main(["run", "--suite", "somewhere", "--policy", "no_such_module:Policy"]) == 2
    assert "'somewhere' is not a directory" in capsys.readouterr().err


TORCH_POLICY = '''
SOURCE = """
import torch

class ModelNew(torch.nn.Module):
    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, *xs):
        raise RuntimeError("no kernel here")
"""


class FailingPolicy:
    name = "failing"

    def propose(self, task, n=1, history=()):
        return [SOURCE]
'''


def test_sample_pairs_writes_accepted_solutions_only(tmp_path, capsys, monkeypatch):
    pytest.importorskip("policies.compiler")
    from kernelgym.evaluation import evaluate

    out = tmp_path / "pairs"
    assert cli_main(["sample", "-d", "1,2", "-n", "1", "--seed", "3", "--out", str(out), "--pairs",
                     "--backend", "interpret"]) == 0
    assert "2/2 solution(s) accepted" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [r["solution_status"] for r in rows] == ["ok", "ok"]
    for r in rows:   # each pair really is a (task, accepted kernel) pair
        solution = (out / r["solution"]).read_text()
        assert "@triton.jit" in solution
        assert evaluate((out / r["file"]).read_text(), solution, backend="interpret").status == "ok"
    assert len(load_suite(out)) == 2 and not load_suite(out).errors   # solutions/ is not read as tasks

    # A policy whose kernel is rejected leaves no solution, and a stale one from before is removed.
    (tmp_path / "failing_policy.py").write_text(TORCH_POLICY)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli_main(["sample", "-d", "1", "-n", "1", "--seed", "3", "--out", str(out), "--pairs", "--force",
                     "--backend", "interpret", "--policy", "failing_policy:FailingPolicy"]) == 0
    assert "0/1 solution(s) accepted" in capsys.readouterr().out
    row = json.loads((out / "index.jsonl").read_text().splitlines()[0])
    assert row["solution"] is None and row["solution_status"] == "hack_detected"
    assert any(r.startswith("guard:no_triton") for r in row["solution_reasons"]), row
    assert "no @triton.jit function" in row["solution_error"]
    assert not (out / "solutions" / f"{row['id']}.py").exists()

    # An unknown policy is a usage error, and nothing is written.
    before = sorted(p.name for p in out.iterdir())
    assert cli_main(["sample", "-d", "1", "-n", "1", "--seed", "9", "--out", str(out), "--pairs",
                     "--policy", "no_such_module:Policy"]) == 2
    assert "no_such_module" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before
