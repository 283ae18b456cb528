"""Every non-ok verdict names a machine-readable reason, and errors point at the candidate's line."""

from __future__ import annotations

import pytest

from kernelgym.evaluation.footprint import oom_beside_others
from kernelgym.evaluation.verdict import Verdict
from kernelgym.pyast import syntax_problem
from kernelgym.task import TaskFormatError, check_source
from tests.eval_cases import CAND_ADD, REF_ADD, add_variant

B = "interpret"
KERNEL_LINE = "    tl.store(out_ptr + offs, x + y, mask=mask)\n"
UNKNOWN_TL = add_variant("", kernel_body="    tl.store(out_ptr + offs, tl.bogus_fn(x) + y, mask=mask)\n")


def _line_of(src: str, fragment: str) -> int:
    return next(i for i, line in enumerate(src.splitlines(), 1) if fragment in line)


def test_unknown_tl_function_names_the_kernel_line(evaluator):
    v = evaluator.evaluate(REF_ADD, UNKNOWN_TL, backend=B)
    assert v.status == "runtime_error" and v.reasons == ["runtime:forward"], (v.status, v.reasons, v.error)
    assert f"candidate line {_line_of(UNKNOWN_TL, 'bogus_fn')}: tl.store" in v.error
    assert f"called from line {_line_of(UNKNOWN_TL, 'add_kernel[')}" in v.error


@pytest.mark.parametrize("cand, status, reason", [
    (CAND_ADD.replace("import torch\n", "import torch\nX = torch.empty(10**14)\n", 1), "runtime_error",
     "runtime:out_of_memory"),
    (add_variant("        return torch.empty(1 << 50)\n"), "runtime_error", "runtime:out_of_memory"),
    ("import torch\nraise ValueError('boom at import')\nclass ModelNew: pass\n", "compile_error", "compile:import"),
    (CAND_ADD.replace("def __init__(self", "def __init__(self, extra", 1), "runtime_error", "runtime:construct"),
    (add_variant("        raise IndexError('bad')\n"), "runtime_error", "runtime:forward"),
    ("import torch\nModelNew = 3\n", "format_error", "format:candidate"),
])
def test_failures_carry_a_reason(evaluator, cand, status, reason):
    v = evaluator.evaluate(REF_ADD, cand, backend=B, skip_static_guards=True)
    assert v.status == status and reason in v.reasons, (v.status, v.reasons, v.error)


def test_null_byte_names_its_line(evaluator):
    v = evaluator.evaluate(REF_ADD, "import torch\nx = 1\0\n", backend=B)
    assert v.status == "format_error" and "null byte at line 2, column 6" in v.error and "None" not in v.error
    with pytest.raises(TaskFormatError, match=f"null byte at line {REF_ADD.count(chr(10)) + 1}, column 1"):
        check_source(REF_ADD + "\0", "ref.py")


def test_syntax_problem_always_has_a_line():
    try:
        compile("def f(:\n", "<x>", "exec")
    except SyntaxError as exc:
        assert syntax_problem(exc, "def f(:\n").startswith("syntax error at line 1")


def test_host_allocation_failure_is_not_rejudged_alone():
    v = Verdict(status="crash", backend="cuda", error="out of memory in import: RuntimeError: DefaultCPUAllocator: "
                "can't allocate memory: you tried to allocate 400 bytes")
    assert not oom_beside_others(v)
