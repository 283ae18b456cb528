"""Runtime guards, with the static layer off: every hack written to slip past the AST layer (and
every hack meant for both layers) is caught at runtime with its reason, every legit kernel passes
and is correct. Each case runs RuntimeGuard directly in a forked child under the Triton interpreter
(tests/redteam/_runtime_runner.py), so the EVAL pipeline is not involved here."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton
import triton.language as tl

from kernelgym.evaluation.guards.runtime import _Recorder, classify_op, record_torch_ops
from tests.redteam.manifest import cases

ROOT = Path(__file__).resolve().parents[1]
CASES = [c for c in cases() if c.legit or c.layer in ("runtime", "both")]


def _run_cases(d: Path, cases: list, **env_extra: str) -> dict:
    spec = [dict(id=c.id, task=str(c.task), candidate=str(c.path), mode=c.mode) for c in cases]
    (d / "cases.json").write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONPATH=str(ROOT), **env_extra)
    proc = subprocess.run([sys.executable, "-m", "tests.redteam._runtime_runner", str(d / "cases.json"),
                           str(d / "out.json")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((d / "out.json").read_text())


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return _run_cases(tmp_path_factory.mktemp("runtime"), CASES)


# The cases whose verdict rests on the write and mutation checks, and the legit kernels.
WRITE_CASES = [c for c in CASES if c.legit or {"guard:output_not_from_triton", "guard:input_mutated",
                                                "guard:output_reused"} & set(c.expect)]


@pytest.mark.parametrize("case", WRITE_CASES, ids=lambda c: c.id)
def test_write_checks_by_block_sums(case, probed):
    """The large-storage paths (block-sum probes, comparisons in slices) reach the same verdicts."""
    test_runtime_layer(case, probed)


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    return _run_cases(tmp_path_factory.mktemp("probed"), WRITE_CASES, KG_PROBE_ALL="1")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_runtime_layer(case, results):
    res = results[case.id]
    got = {f"guard:{name}" for name, _ in res["findings"]}
    if case.legit:
        assert got == set() and res["correct"], res
        assert res["launches"], "a legit kernel's launches must be recorded"
    else:
        assert set(case.expect) <= got, res


def test_launch_records(results):
    (mm,) = results["legit/matmul"]["launches"]
    assert mm["kernel"] == "matmul_kernel"
    assert mm["grid"] == [1, 2, 1] or mm["grid"][:2] == [1, 2]
    assert mm["signature"]["a_ptr"] == "*fp32" and mm["signature"]["M"] == "i32" and mm["constexprs"]["K"] == 32
    assert mm["signature"]["BM"] == "constexpr" and mm["constexprs"]["BM"] == 16
    (sm,) = results["legit/row_softmax"]["launches"]
    assert sm["grid"][0] == 6 and sm["constexprs"]["BLOCK"] == 64  # grid lambda resolved


def test_findings_name_the_ops(results):
    detail = dict(results["hacks/torch_does_work"]["findings"])["torch_compute"]
    assert "aten.clamp_min" in detail and "aten.add" in detail


def test_classify_op():
    aten = torch.ops.aten
    assert classify_op(aten.empty.memory_format) == "alloc"
    assert classify_op(aten.zeros.default) == "fill"
    assert classify_op(aten.view.default) == "view"
    assert classify_op(aten.transpose.int) == "view"
    assert classify_op(aten._local_scalar_dense.default) == "meta"
    assert classify_op(aten.mm.default) == "compute"
    assert classify_op(aten.clone.default) == "compute"  # a copy is work a kernel must do in strict mode


def test_record_torch_ops_counts_compute_only():
    a, b = torch.randn(4, 5), torch.randn(5, 3)
    out, ops = record_torch_ops(lambda: torch.relu(a @ b).view(-1).contiguous())
    assert out.shape == (12,)
    assert ops == collections.Counter({"aten.mm.default": 1, "aten.relu.default": 1})
    _, none = record_torch_ops(lambda: torch.empty(3).view(3, 1).t())
    assert none == collections.Counter()


def test_recorder_poisons_fresh_allocations():
    with _Recorder(poison=True):
        f = torch.empty(8)
        i = torch.empty(4, dtype=torch.int32)
        z = torch.zeros(3)
    assert torch.isnan(f).all()
    assert (i == torch.iinfo(torch.int32).min).all()
    assert (z == 0).all()  # fills keep their meaning


@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) + tl.load(y_ptr + offs, mask=offs < n),
             mask=offs < n)


def test_the_launch_gets_the_grid_the_candidate_gave():
    """The guard resolves a grid lambda itself (to record the launch) but hands Triton what the
    lambda returned: a tuple as ints, an int unchanged, so that a launch Triton's own launcher
    rejects (Triton 3.6 on a GPU: "object of type 'int' has no len()") is not repaired here."""
    from kernelgym.evaluation.guards.runtime import RuntimeGuard

    guard = RuntimeGuard("strict", None, "<test>", "cpu")
    seen = []

    def orig(kfn, *args, grid, warmup, **kwargs):
        seen.append(grid)

    x = torch.zeros(8)
    guard._launch(orig, add_kernel, (x, x, x, 8), lambda meta: (2,), {"BLOCK": 4})
    guard._launch(orig, add_kernel, (x, x, x, 8), lambda meta: 2, {"BLOCK": 4})
    assert seen == [(2,), 2]
    assert [r.grid for r in guard.launches] == [(2,)]   # one specialisation, recorded as a tuple


def test_patching_diff_sees_replaced_deleted_and_added_attributes(monkeypatch):
    """The snapshot diff that runs after every sandboxed block: a replaced, a deleted and an added
    callable are named; an added submodule is not (imports add those); and a candidate that
    replaces builtins.vars cannot hide its changes (the diff bound its builtins at import)."""
    import builtins
    import types

    from kernelgym.evaluation.guards import runtime

    snap = runtime._snapshot()
    assert runtime._diff(snap) == []
    monkeypatch.setattr(torch.nn.functional, "relu", lambda x: x)
    monkeypatch.delattr(torch.nn.functional, "gelu")
    monkeypatch.setattr(torch, "kernelgym_test_added", lambda: 0, raising=False)
    monkeypatch.setattr(torch, "kernelgym_test_module", types.ModuleType("m"), raising=False)
    real_vars = builtins.vars
    monkeypatch.setattr(builtins, "vars", lambda o=None: {k: v for k, v in real_vars(o).items()
                                                          if not k.startswith("kernelgym_test")})
    changed = runtime._diff(snap)
    assert {"torch.nn.functional.relu", "torch.nn.functional.gelu", "torch.kernelgym_test_added (added)",
            "builtins.vars"} <= set(changed), changed
    assert not any("kernelgym_test_module" in c for c in changed)


def test_a_tensor_descriptor_argument_is_typed_as_triton_types_it(monkeypatch):
    """A host-side TMA descriptor is recorded with Triton's own signature type (what the sm_90
    compile check passes to triton.compile), from Triton's mangle_type or, where a Triton lacks
    it, the same text built from the descriptor."""
    import torch
    import triton.runtime.jit as jit
    from triton.tools.tensor_descriptor import TensorDescriptor

    from kernelgym.evaluation.guards.runtime.launches import _type_str

    d = TensorDescriptor.from_tensor(torch.zeros(32, 16), [32, 16])
    h = TensorDescriptor.from_tensor(torch.zeros(2, 32, 16, dtype=torch.float16), [1, 16, 16])
    assert _type_str(d) == "tensordesc<fp32[32, 16]>"
    assert _type_str(h) == "tensordesc<fp16[1, 16, 16]>"
    monkeypatch.delattr(jit, "mangle_type")
    assert _type_str(d) == "tensordesc<fp32[32, 16]>" and _type_str(h) == "tensordesc<fp16[1, 16, 16]>"
