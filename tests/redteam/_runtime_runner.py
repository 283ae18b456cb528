"""Run candidates under `RuntimeGuard` directly (no static layer, no EVAL pipeline), one forked
child per case so that a hack that patches or poisons the process cannot affect the next case.

Usage: python -m tests.redteam._runtime_runner CASES.json OUT.json
CASES.json: [{"id", "task", "candidate", "mode"}] (paths); OUT.json: {id: {"findings", "correct", "error"}}.
Sets TRITON_INTERPRET=1 before Triton is imported (CPU interpreter). With KG_PROBE_ALL=1 every
storage's write check is a probe of block sums and every comparison goes in small slices (the
large-storage paths of `guards.runtime.storage`, at the red team's tiny sizes).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import traceback

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import triton  # noqa: E402,F401

from kernelgym.evaluation.guards.runtime import RuntimeGuard, _Recorder, record_torch_ops  # noqa: E402
from kernelgym.task import exec_source  # noqa: E402

TRIALS = 3


def run_case(case: dict, tmpdir: str) -> dict:
    torch.manual_seed(0)
    ref_mod = exec_source(open(case["task"]).read(), "redteam_task")
    init = ref_mod.get_init_inputs()
    ref = ref_mod.Model(*init)
    trials = []
    ops = None
    for t in range(TRIALS):
        torch.manual_seed(100 + t)
        inputs = ref_mod.get_inputs()
        with torch.no_grad():
            out, ops_t = record_torch_ops(ref, *[x.clone() for x in inputs])
        ops = ops_t if ops is None else ops
        trials.append((inputs, out))
    source = open(case["candidate"]).read()
    filename = os.path.join(tmpdir, "candidate_%s.py" % case["id"].replace("/", "_"))
    with open(filename, "w") as fh:
        fh.write(source)
    guard = RuntimeGuard(case["mode"], ops, filename, "cpu")
    guard.install()
    result = {"correct": False, "error": ""}
    try:
        module = type(sys)("kernelgym_candidate_redteam")
        module.__file__ = filename
        sys.modules[module.__name__] = module
        code = compile(source, filename, "exec")
        with guard.sandboxed():
            exec(code, module.__dict__)  # noqa: S102
            model = module.ModelNew(*init)
        model.load_state_dict(ref.state_dict())
        correct = True
        for inputs, expected in trials:
            inputs = [x.clone() for x in inputs]
            got = None
            with guard.sandboxed():
                with torch.no_grad(), guard.forward_call(inputs, module=model) as rec:
                    got = model(*inputs)
            if got is None:
                correct = False
                break
            outs = list(got) if isinstance(got, (tuple, list)) else [got]
            guard.after_forward(rec, outs)
            outs = [o.detach().clone() for o in outs]
            exp = list(expected) if isinstance(expected, (tuple, list)) else [expected]
            correct = correct and len(outs) == len(exp) and all(
                o.shape == e.shape and torch.allclose(o, e, atol=1e-4, rtol=1e-4) for o, e in zip(outs, exp))
        result["correct"] = correct
    except BaseException as exc:  # noqa: BLE001 - a failing candidate is a result
        result["error"] = "".join(traceback.format_exception_only(type(exc), exc)).strip()[-500:]
    finally:
        try:
            guard.finish()
        except BaseException as exc:  # noqa: BLE001
            result["error"] += f" | finish: {exc!r}"
    result["findings"] = [[f.name, f.detail] for f in guard.findings]
    result["launches"] = [dataclasses.asdict(r) for r in guard.launches]
    return result


def main(cases_path: str, out_path: str, jobs: int = 2) -> None:
    cases = json.load(open(cases_path))
    if os.environ.get("KG_PROBE_ALL") == "1":
        from kernelgym.evaluation.guards.runtime import storage

        storage.PROBE_COPY_BYTES, storage.COMPARE_CHUNK_BYTES, storage.PROBE_BLOCK_WORDS = 0, 64, 8
    with _Recorder():  # the first dispatch mode imports torch._dynamo: pay it once, before forking
        torch.ones(1).add_(1)
    tmpdir = tempfile.mkdtemp(prefix="kg_redteam_")
    results: dict[str, dict] = {}
    running: dict[int, tuple[str, str]] = {}
    pending = list(cases)
    while pending or running:
        while pending and len(running) < jobs:
            case = pending.pop(0)
            path = os.path.join(tmpdir, "res_%d.json" % len(results) + "_" + str(len(pending)))
            pid = os.fork()
            if pid == 0:  # child: run one case, never return into the parent's loop
                code = 0
                try:
                    res = run_case(case, tmpdir)
                    with open(path, "w") as fh:
                        json.dump(res, fh)
                except BaseException:  # noqa: BLE001
                    code = 1
                finally:
                    os._exit(code)
            running[pid] = (case["id"], path)
        pid, status = os.wait()
        cid, path = running.pop(pid)
        try:
            results[cid] = json.load(open(path))
        except (OSError, ValueError):
            results[cid] = {"findings": [], "correct": False, "error": f"child died (status {status})"}
    with open(out_path, "w") as fh:
        json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
