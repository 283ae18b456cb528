"""Static guards (AST): every red-team hack meant for this layer is caught with its reason, every
legit kernel passes, and the individual rules behave at their edges."""

from __future__ import annotations

import pytest

from kernelgym.evaluation.guards import GUARD_NAMES, Finding
from kernelgym.evaluation.guards.static import check_source
from tests.redteam.manifest import cases

CASES = cases()

KERNEL = '''
import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def k(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)
'''


def reasons(src: str, mode: str = "strict") -> set[str]:
    return {f.reason for f in check_source(src, mode)}


@pytest.mark.parametrize("case", [c for c in CASES if c.legit], ids=lambda c: c.id)
def test_legit_passes(case):
    assert check_source(case.source, case.mode) == []


@pytest.mark.parametrize("case", [c for c in CASES if not c.legit and c.layer in ("static", "both")],
                         ids=lambda c: c.id)
def test_hack_caught(case):
    got = reasons(case.source, case.mode)
    assert set(case.expect) <= got, got


def test_findings_use_the_vocabulary():
    for case in CASES:
        for f in check_source(case.source, case.mode):
            assert isinstance(f, Finding) and f.name in GUARD_NAMES and f.reason == f"guard:{f.name}"
            assert f.line is None or f.line >= 1


def test_import_fallback_allowed_other_try_rejected():
    ok = KERNEL + "try:\n    from triton.language.extra import libdevice\nexcept ImportError:\n    libdevice = None\n"
    assert reasons(ok) == set()
    bad = KERNEL + "try:\n    x = 1\nexcept Exception:\n    x = 2\n"
    assert reasons(bad) == {"guard:try_except"}
    bare = KERNEL + "try:\n    import triton\nexcept:\n    pass\n"
    assert "guard:try_except" in reasons(bare)


def test_builtin_names_shadowed_by_arguments_are_fine():
    src = KERNEL + "\nclass ModelNew(nn.Module):\n    def forward(self, input):\n        return input\n"
    assert reasons(src) == set()
    assert "guard:forbidden_call" in reasons(KERNEL + "x = input()\n")


@pytest.mark.parametrize("line,reason", [
    ("getattr(torch, name)", "guard:forbidden_call"),
    ("getattr(torch, '__dict__')", "guard:introspection"),
    ("getattr(torch, 'os')", "guard:subprocess"),
    ("torch.matmul = None", "guard:patching"),
    ("import torch.nn.functional as F\nF.relu = None", "guard:patching"),
    ("torch.Tensor.add = None", "guard:patching"),
    ("del torch.relu", "guard:patching"),
    ("torch._dynamo.reset()", "guard:code_generation"),
    ("torch.jit.script(lambda x: x)", "guard:code_generation"),
    ("triton.compile", "guard:code_generation"),
    ("from torch import compile", "guard:code_generation"),
    ("s = torch.cuda.Stream()", "guard:side_stream"),
    ("import numpy", "guard:numpy"),
    ("import concurrent.futures", "guard:thread_started"),
    ("import multiprocessing", "guard:process_started"),
    ("import urllib.request", "guard:network"),
    ("import inspect", "guard:introspection"),
    ("import pathlib", "guard:file_access"),
    ("import yaml", "guard:forbidden_import"),
    ("from . import x", "guard:forbidden_import"),
    ("eval('1')", "guard:code_generation"),
    ("__import__('os')", "guard:code_generation"),
    ("exit()", "guard:early_exit"),
    ("globals()", "guard:introspection"),
    ("x = torch.os", "guard:subprocess"),
    ("x = (1).__class__.__mro__", "guard:introspection"),
    ("torch.save({}, 'f')", "guard:file_access"),
])
def test_rules(line, reason):
    assert reason in reasons(KERNEL + line + "\n")


def test_allowed_imports_pass():
    src = KERNEL + ("import math\nimport functools\nfrom typing import Optional\nfrom torch import nn\n"
                    "import triton.language.extra.cuda.libdevice\nfrom collections import OrderedDict\n")
    assert reasons(src) == set()


def test_no_kernel_and_kernel_detection():
    assert reasons("import torch\n") == {"guard:no_triton_kernel"}
    autotuned = ("import triton\nimport triton.language as tl\n"
                 "@triton.autotune(configs=[], key=[])\n@triton.jit\ndef k(x):\n    pass\n")
    assert reasons(autotuned) == set()
    assert reasons("from triton import jit\n@jit\ndef k(x):\n    pass\n") == set()


def test_strict_vs_lenient_torch_calls():
    src = KERNEL + "\nclass ModelNew(nn.Module):\n    def forward(self, a, b):\n        return torch.mm(a, b) @ b\n"
    assert reasons(src, "strict") == {"guard:torch_compute"}
    assert reasons(src, "lenient") == set()
    # Outside forward (weight init) torch compute is not flagged.
    init = KERNEL + "\nclass ModelNew(nn.Module):\n    def __init__(self):\n        super().__init__()\n" \
                    "        self.w = nn.Parameter(torch.randn(3).mul(2))\n"
    assert reasons(init, "strict") == set()


def test_torch_inside_kernel_flagged_in_both_modes():
    src = KERNEL + "\n@triton.jit\ndef bad(x_ptr):\n    torch.relu(x_ptr)\n"
    assert "guard:torch_compute" in reasons(src, "lenient")


def test_syntax_error_is_not_a_finding():
    assert check_source("def (:\n") == []


def test_tensor_descriptor_is_the_one_name_allowed_from_triton_tools():
    """Triton's host-side TMA descriptor may be imported (``from ... import TensorDescriptor``) and
    used with its attributes; every other triton.tools path, and the module itself, stays
    forbidden."""
    ok = ("from triton.tools.tensor_descriptor import TensorDescriptor\n"
          "d = TensorDescriptor.from_tensor(torch.zeros(16, 16), [16, 16])\n"
          "e = TensorDescriptor(torch.zeros(16, 16), [16, 16], [16, 1], [16, 16])\n")
    assert reasons(KERNEL + ok) == set()
    assert reasons(KERNEL + "from triton.tools.tensor_descriptor import TensorDescriptor as TD\n"
                            "d = TD.from_tensor(torch.zeros(16, 16), [16, 16])\n") == set()
    for bad in ("import triton.tools.disasm",
                "from triton.tools.disasm import get_sass",
                "from triton.tools import tensor_descriptor",
                "import triton.tools.tensor_descriptor",
                "from triton.tools.tensor_descriptor import TensorDescriptor, validate_block_shape",
                "from triton.tools.tensor_descriptor import *",
                "x = triton.tools.compile",
                "x = triton.tools.tensor_descriptor.canonicalize_dtype"):
        assert "guard:code_generation" in reasons(KERNEL + bad + "\n"), bad
    # the class's own dunders are still dunders
    assert "guard:introspection" in reasons(
        KERNEL + "from triton.tools.tensor_descriptor import TensorDescriptor\n"
                 "g = TensorDescriptor.from_tensor.__globals__\n")
