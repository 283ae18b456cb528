"""The sandbox: crashes, timeouts, memory limits, worker replacement, no orphans.

Static guards would reject most of these candidates before they run, so these tests call
`evaluate(..., skip_static_guards=True)` to reach the worker processes themselves.
"""

from __future__ import annotations

import os
from pathlib import Path

from kernelgym.evaluation import Evaluator
from tests._procs import alive as _alive
from tests.eval_cases import CAND_ADD, REF_ADD, add_variant

B = "interpret"


def _run(evaluator, cand, **kw):
    return evaluator.evaluate(REF_ADD, cand, backend=B, skip_static_guards=True, **kw)



def test_os_exit_crash_then_worker_replaced_and_next_ok(evaluator):
    pool = evaluator.pool("candidate", B)
    pool.warm()  # all workers up, so the only new start is the replacement
    started = pool.started
    v = _run(evaluator, add_variant("        import os\n        os._exit(3)\n"))
    assert v.status == "crash" and "exited with code 3" in v.error and v.reasons == ["sandbox:crash"]
    assert pool.started == started + 1  # killed and replaced
    assert _run(evaluator, CAND_ADD).status == "ok"


def test_segfault_is_crash(evaluator):
    # The interpreter dereferences raw pointers: an unmasked load 1 TB past the input segfaults.
    oob = "    z = tl.load(x_ptr + offs + 1099511627776)\n    tl.store(out_ptr + offs, x + z, mask=mask)\n"
    v = evaluator.evaluate(REF_ADD, add_variant("", kernel_body=oob), backend=B)
    assert v.status == "crash" and "SIGSEGV" in v.error, v.error
    assert _run(evaluator, CAND_ADD).status == "ok"


def test_system_exit_is_hack(evaluator):
    # The sandbox catches SystemExit (guard finding early_exit): a hack, not a crash (os._exit stays crash).
    v = _run(evaluator, add_variant("        raise SystemExit(0)\n"))
    assert v.status == "hack_detected" and "SystemExit" in v.error and "guard:early_exit" in v.reasons


def test_infinite_loop_at_import_times_out(evaluator):
    v = _run(evaluator, "while True:\n    pass\n" + CAND_ADD, timeout=3)
    assert v.status == "timeout" and "'import'" in v.error and not v.compiled


def test_infinite_loop_in_kernel_times_out(evaluator):
    spin = "    i = 0\n    while i < n:\n        i = i * 1\n    tl.store(out_ptr + offs, x + y, mask=mask)\n"
    v = _run(evaluator, add_variant("", kernel_body=spin), timeout=3)
    assert v.status == "timeout" and "trial 0" in v.error


def test_huge_allocations(evaluator):
    v = _run(evaluator, add_variant("        return torch.ones(1 << 30)\n"))  # 4 GB, limit is 2 GB
    assert v.status == "crash" and "memory limit" in v.error and v.reasons == ["sandbox:memory"]
    v = _run(evaluator, add_variant("        return torch.empty(1 << 50)\n"))  # refused by the allocator
    assert v.status == "runtime_error" and "allocate" in v.error


def test_thread_left_running_recycles_worker(evaluator):
    pool = evaluator.pool("candidate", B)
    pool.warm()
    started = pool.started
    cand = add_variant("        import threading, time\n"
                       "        threading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n"
                       "        add_kernel[(triton.cdiv(n, 256),)](x, y, out, n, BLOCK=256)\n        return out\n")
    v = _run(evaluator, cand)
    assert v.status != "ok"
    assert pool.started == started + 1


def test_no_orphan_processes_after_close():
    ev = Evaluator(workers=1, reference_workers=1, ptx_workers=1)
    assert ev.evaluate(REF_ADD, CAND_ADD, backend=B).status == "ok"
    pids = ev.worker_pids()
    assert len(pids) >= 3 and all(_alive(p) for p in pids)
    ev.close()
    assert not any(_alive(p) for p in pids)
    mine = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.split(")")[-1].split()[1]) == os.getpid() and b"kernelgym.evaluation.worker" in cmd:
                mine.append(d.name)
    assert not [p for p in mine if _alive(int(p)) and int(p) in pids]
