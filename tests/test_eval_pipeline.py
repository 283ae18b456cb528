"""The evaluation pipeline end to end on the interpreter backend (tiny shapes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kernelgym.evaluation import Verdict, evaluate
from kernelgym.task import Task
from tests.eval_cases import CAND_ADD, CAND_LINEAR, DATA, REF_ADD, REF_LINEAR, add_variant

B = "interpret"


def test_ok_kernel(evaluator):
    v = evaluator.evaluate(REF_ADD, CAND_ADD, backend=B, seed=123)
    assert v.status == "ok", v.error
    assert v.correct and v.compiled and v.speedup is None
    assert v.kernels == ["add_kernel"]
    assert v.ptx["ok"] and v.ptx["kernels"][0]["ptx_bytes"] > 0
    assert v.seeds[0] == 123 and len(v.seeds) == 4 and len(v.trials) == 3
    assert v.device == "cpu (triton interpreter)" and v.backend == "interpret"
    assert {"torch", "triton", "kernelgym", "python"} <= set(v.versions)
    assert v.tolerances == {"float32": {"atol": 0.01, "rtol": 0.01}}
    assert v.reward_components["correct"] == 1.0
    json.dumps(v.to_dict())
    again = evaluator.evaluate(REF_ADD, CAND_ADD, backend=B, seed=123)
    assert again.seeds == v.seeds  # same seed, same trial seeds


def test_task_object_and_weights_copied(evaluator):
    task = Task.from_source(REF_LINEAR, id="scale")
    v = evaluator.evaluate(task, CAND_LINEAR, backend=B)
    assert v.status == "ok", v.error  # ModelNew starts with zeros: only the copied weights pass
    assert v.task_id == "scale"


def test_wrong_kernel_is_incorrect(evaluator):
    v = evaluator.evaluate(REF_ADD, CAND_ADD.replace("x + y", "x - y"), backend=B)
    assert v.status == "incorrect" and not v.correct and v.compiled
    assert v.reasons == ["check:mismatch"]
    assert v.trials[0]["max_abs_err"] > 0.1


def test_unwritten_elements_fail(evaluator):
    half = CAND_ADD.replace("(triton.cdiv(n, 256),)](x, y, out, n,", "(triton.cdiv(n // 2, 256),)](x, y, out, n // 2,")
    v = evaluator.evaluate(REF_ADD, half, backend=B)
    assert v.status in ("incorrect", "hack_detected")
    assert "check:nan" in v.reasons or any(r.startswith("guard:") for r in v.reasons)


def test_shape_and_dtype_exact(evaluator):
    shape = add_variant("        add_kernel[(triton.cdiv(n, 256),)](x, y, out, n, BLOCK=256)\n"
                        "        return out.view(10, 100)\n")
    v = evaluator.evaluate(REF_ADD, shape, backend=B)
    assert v.status == "incorrect" and v.reasons == ["check:shape"], v.error
    dtype = add_variant("        out = torch.empty(x.shape, dtype=torch.float64)\n"
                        "        add_kernel[(triton.cdiv(n, 256),)](x, y, out, n, BLOCK=256)\n        return out\n")
    v = evaluator.evaluate(REF_ADD, dtype, backend=B)
    assert v.status == "incorrect" and v.reasons == ["check:dtype"], v.error


def test_markdown_fences_are_extracted(evaluator):
    reply = f"Sure! Here is the kernel:\n\n```python\n{CAND_ADD}```\nIt fuses the add."
    v = evaluator.evaluate(REF_ADD, reply, backend=B)
    assert v.status == "ok", v.error
    assert any("markdown fence" in n for n in v.notes)


@pytest.mark.parametrize("cand,fragment", [
    ("", "empty"),
    ("Sorry, I cannot help with that; here is some prose instead.", "syntax error"),
    ("import torch\n\nclass Model(torch.nn.Module):\n    pass\n", "ModelNew"),
    ("x = 1\n" * 400_000, "larger than"),
])
def test_bad_input_is_format_error(evaluator, cand, fragment):
    v = evaluator.evaluate(REF_ADD, cand, backend=B)
    assert v.status == "format_error" and fragment in v.error
    assert v.reward_components["format"] == 0.0


def test_wrong_constructor_is_runtime_error(evaluator):
    cand = CAND_ADD.replace("def __init__(self):", "def __init__(self, hidden, layers):")
    v = evaluator.evaluate(REF_ADD, cand, backend=B)
    assert v.status == "runtime_error" and "wrong constructor" in v.error


def test_state_dict_mismatch(evaluator):
    cand = CAND_LINEAR.replace("self.scale = nn.Parameter", "self.weight = nn.Parameter")
    cand = cand.replace("self.scale, out", "self.weight, out")
    v = evaluator.evaluate(REF_LINEAR, cand, backend=B)
    assert v.status == "incorrect" and v.reasons == ["check:state_dict_mismatch"]
    assert "scale" in v.error and "weight" in v.error


def test_import_error_is_compile_error(evaluator):
    v = evaluator.evaluate(REF_ADD, "import torch\nraise ValueError('boom at import')\nclass ModelNew: pass\n",
                           backend=B, skip_static_guards=True)
    assert v.status == "compile_error" and not v.compiled and "boom at import" in v.error


def test_forward_error_is_runtime_error(evaluator):
    cand = add_variant("        raise IndexError('bad index in forward')\n")
    v = evaluator.evaluate(REF_ADD, cand, backend=B, skip_static_guards=True)
    assert v.status == "runtime_error" and "bad index in forward" in v.error and v.compiled


def test_kernel_that_only_interprets_fails_ptx_check(evaluator):
    cand = add_variant("", kernel_body="    tl.store(out_ptr + offs, helper(x, y), mask=mask)\n",
                       prelude="def helper(a, b):\n    return a + b\n\n\n")
    v = evaluator.evaluate(REF_ADD, cand, backend=B)
    assert v.status == "compile_error" and not v.compiled, v.error
    assert v.reasons[0] == "compile:ptx" and "helper" in v.error
    assert v.ptx["ok"] is False


def test_invalid_reference(evaluator):
    bad = REF_ADD.replace("return x + y", "raise RuntimeError('reference broke')")
    v = evaluator.evaluate(bad, CAND_ADD, backend=B)
    assert v.status == "invalid_task" and "reference broke" in v.error
    nan = REF_ADD.replace("return x + y", "return (x + y) * float('nan')")
    v = evaluator.evaluate(nan, CAND_ADD, backend=B)
    assert v.status == "invalid_task" and v.reasons == ["task:reference_output"]
    assert "trial 0: reference output 0 contains NaN" in v.error
    v = evaluator.evaluate("def nothing(): pass\n", CAND_ADD, backend=B)
    assert v.status == "invalid_task"


def test_batch_preserves_order(evaluator):
    wrong = CAND_ADD.replace("x + y", "x * y")
    pairs = [(REF_ADD, CAND_ADD), (REF_ADD, wrong), (REF_ADD, ""), (REF_LINEAR, CAND_LINEAR),
             (REF_ADD, wrong), (REF_ADD, CAND_ADD)]
    verdicts = evaluator.evaluate_batch(pairs, backend=B, seed=5)
    assert [v.status for v in verdicts] == ["ok", "incorrect", "format_error", "ok", "incorrect", "ok"]
    again = evaluator.evaluate_batch(pairs[:2], backend=B, seed=5)
    assert [v.seeds for v in again] == [v.seeds for v in verdicts[:2]]


def test_module_level_evaluate_uses_given_evaluator(evaluator):
    v = evaluate(REF_ADD, CAND_ADD, backend=B, evaluator=evaluator)
    assert isinstance(v, Verdict) and v.ok


def test_cli_eval_json(tmp_path):
    cand = tmp_path / "cand.py"
    cand.write_text(f"```python\n{CAND_ADD}```\n")
    out = subprocess.run([sys.executable, "-m", "kernelgym", "eval", str(DATA / "ref_add.py"), str(cand),
                          "--backend", "interpret", "--json", "--seed", "3"],
                         capture_output=True, text=True, timeout=240, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    d = json.loads(out.stdout.strip().splitlines()[-1])
    assert d["status"] == "ok" and d["seeds"][0] == 3 and d["notes"]
    bad = tmp_path / "bad.py"
    bad.write_text("not python (")
    out = subprocess.run([sys.executable, "-m", "kernelgym", "eval", str(DATA / "ref_add.py"), str(bad), "--json"],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0 and json.loads(out.stdout.strip().splitlines()[-1])["status"] == "format_error"


def test_ptx_check_refuses_a_kernel_over_the_blocks_shared_memory(tmp_path, monkeypatch):
    """A kernel that compiles for sm_90 but needs more shared memory than a block has fails the
    check (the GPU refuses it at launch); here the limit is lowered under a small product's need."""
    pytest.importorskip("triton.backends.nvidia")
    import importlib.util

    from kernelgym.evaluation import ptx

    path = tmp_path / "dot_kernel.py"
    path.write_text(
        "import triton\nimport triton.language as tl\n\n\n@triton.jit\n"
        "def dot_kernel(a_ptr, b_ptr, c_ptr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):\n"
        "    r = tl.arange(0, BM)\n    c = tl.arange(0, BN)\n    k = tl.arange(0, BK)\n"
        "    acc = tl.zeros([BM, BN], dtype=tl.float32)\n"
        "    for i in range(0, 4):\n"
        "        a = tl.load(a_ptr + r[:, None] * BK + k[None, :] + i)\n"
        "        b = tl.load(b_ptr + k[:, None] * BN + c[None, :] + i)\n"
        "        acc += tl.dot(a, b)\n"
        "    tl.store(c_ptr + r[:, None] * BN + c[None, :], acc)\n")
    spec = importlib.util.spec_from_file_location("kg_test_dot_kernel", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    launch = {"kernel": "dot_kernel", "signature": {"a_ptr": "*fp32", "b_ptr": "*fp32", "c_ptr": "*fp32",
                                                   "BM": "constexpr", "BN": "constexpr", "BK": "constexpr"},
              "constexprs": {"BM": 32, "BN": 32, "BK": 32}, "num_warps": 4, "num_stages": 3}
    fits = ptx.compile_launch(mod.dot_kernel, launch)
    assert fits["ok"] and 0 < fits["shared_bytes"] <= ptx.SM90_SHARED_LIMIT
    monkeypatch.setattr(ptx, "SM90_SHARED_LIMIT", fits["shared_bytes"] - 1)
    over = ptx.compile_launch(mod.dot_kernel, launch)
    assert not over["ok"] and "out of resource: shared memory" in over["error"]
    assert f"required {fits['shared_bytes']} bytes" in over["error"]
