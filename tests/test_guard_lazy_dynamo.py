"""Interpreter workers start without torch._dynamo (`guards.runtime.lazy_dynamo`): torch importing it
from its own functions during a candidate's run is not the candidate's doing, but a candidate that
patches torch or compiles is still caught. Runtime layer alone (static guards off: they forbid
torch.optim, the torch function used here that imports dynamo on its first call)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.eval_cases import CAND_ADD, REF_ADD

ROOT = Path(__file__).resolve().parents[1]
B = "interpret"
# torch.optim.Optimizer.zero_grad is wrapped by torch._disable_dynamo: its first call imports dynamo.
LAZY = ("        p = nn.Parameter(torch.zeros(1))\n"
        "        torch.optim.SGD([p], lr=0.1).zero_grad()\n")


def _init(extra: str) -> str:
    src = CAND_ADD.replace("        super().__init__()\n", "        super().__init__()\n" + extra)
    assert src != CAND_ADD
    return src


def _judge(evaluator, src: str):
    return evaluator.evaluate(REF_ADD, src, backend=B, skip_static_guards=True)


def test_torch_importing_dynamo_for_the_candidate_is_not_blamed(evaluator):
    v = _judge(evaluator, _init(LAZY))
    assert v.status == "ok", (v.status, v.reasons, v.error)


def test_a_candidate_that_patches_torch_after_dynamo_loaded_is_still_caught(evaluator):
    v = _judge(evaluator, _init(LAZY + "        torch.relu = lambda x: x\n"))
    assert v.status == "hack_detected" and "guard:patching" in v.reasons, (v.status, v.reasons, v.error)


def test_a_dynamo_style_wrapper_around_another_function_is_patching(evaluator):
    """Only torch's own wrapper around the very function it replaced passes (what dynamo's import does)."""
    body = LAZY + "        torch.manual_seed = torch._disable_dynamo(lambda *a, **k: None)\n"
    v = _judge(evaluator, _init(body))
    assert v.status == "hack_detected" and "guard:patching" in v.reasons, (v.status, v.reasons, v.error)


def test_torchs_own_wrapper_around_the_same_function_is_patching_unless_the_import_made_it(evaluator):
    """The wrapper dynamo's import puts on torch.manual_seed passes; the same wrapper put on any other
    watched function by the candidate does not (it runs whatever ``fn.__dynamo_disable`` the
    candidate sets on the function: a timer's, for instance)."""
    body = LAZY + "        torch.relu = torch._disable_dynamo(torch.relu)\n"
    v = _judge(evaluator, _init(body))
    assert v.status == "hack_detected" and "guard:patching" in v.reasons, (v.status, v.reasons, v.error)
    assert "torch.relu" in v.error, v.error


GUARD_SCRIPT = textwrap.dedent('''
    import json, os, sys, tempfile
    import torch, triton
    from kernelgym.evaluation.guards.runtime import RuntimeGuard

    def run(src):
        d = tempfile.mkdtemp()
        fn = os.path.join(d, "cand.py")
        open(fn, "w").write(src)
        g = RuntimeGuard("strict", None, fn, "cpu")
        g.install()
        err = ""
        try:
            with g.sandboxed():
                exec(compile(src, fn, "exec"), {"torch": torch})
        except Exception as exc:
            err = type(exc).__name__
        g.finish()
        return sorted({f.name for f in g.findings}), err

    out = {"before": "torch._dynamo" in sys.modules}
    out["lazy"] = run("p = torch.nn.Parameter(torch.zeros(1))\\ntorch.optim.SGD([p], lr=0.1).zero_grad()\\n")
    out["after"] = "torch._dynamo" in sys.modules
    from kernelgym.evaluation.guards.runtime import snapshots
    out["accepted"] = sorted(snapshots.dynamo_installed())
    out["seed_ok"] = run("torch.manual_seed(3)\\n")
    out["optimize"] = run("getattr(torch, '_dyn' + 'amo').optimize('eager')(lambda x: x)\\n")
    print(json.dumps(out))
''')


def test_the_guard_in_a_worker_without_dynamo(tmp_path):
    """In a fresh interpreter worker's process: dynamo is not loaded; torch loading it under the guard
    leaves no finding (modules, torch.manual_seed rewrapped); dynamo's optimize is still denied."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1", "KERNELGYM_LAZY_DYNAMO": "1"}
    res = subprocess.run([sys.executable, "-c", GUARD_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["before"] is False and out["after"] is True, out
    assert out["lazy"] == [[], ""], out
    assert out["seed_ok"] == [[], ""], out
    assert "torch.manual_seed" in out["accepted"] and len(out["accepted"]) <= 3, out   # what the import rewrapped
    assert out["optimize"] == [["code_generation"], "PermissionError"], out


def test_a_candidate_importing_dynamo_itself_is_denied():
    """The exemption covers torch's own import only: the candidate's import statement is refused."""
    from kernelgym.evaluation.guards.runtime.audit import _classify_event

    assert _classify_event("import", ("torch._dynamo",))[0] == "code_generation"
