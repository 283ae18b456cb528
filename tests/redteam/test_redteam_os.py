"""The OS sandbox's red team: escapes through C++ entry points that no Python-level guard sees.

Each hack under hacks/ with ``Layer: os`` reaches a file, a socket or a signal through an
indirection the static layer does not see (``operator.attrgetter``; for Python's own sockets also
a call made from a torch frame, which the runtime guard does not attribute to the candidate), at
construction or in ``forward``, in strict and lenient mode, and computes a correct softmax
otherwise. With the OS sandbox (Landlock and seccomp) every one must be rejected
(``hack_detected`` with the guard its docstring names), the legit kernels must stay ``ok``, and
nothing may have happened: the victim output file is unchanged, nothing was written into the
"shared Triton cache", the local TCP listener saw no connection, the UDP port no datagram and the
evaluator no signal. The control run with ``os_sandbox="off"`` shows the same
hacks do escape without it (so these tests can fail).
"""

from __future__ import annotations

from typing import Any

import pytest

from kernelgym.evaluation import Evaluator
from kernelgym.evaluation import sandbox as osbox
from tests.redteam.manifest import cases
from tests.redteam.targets import Targets

OS_CASES = [c for c in cases() if c.layer == "os"]
LEGIT = [c for c in cases() if c.legit]
# Every legit kernel runs confined in test_redteam.py (the default os_sandbox="auto"); one here too,
# under "require", beside the escapes.
SOFTMAX = [c for c in LEGIT if c.id == "legit/row_softmax"]
# Each rejected hack replaces its worker (a torch import): minutes on two busy cores.
pytestmark = pytest.mark.timeout(1200)

# "require" means Landlock and the seccomp filter (UDP, raw and netlink sockets are seccomp's).
needs_sandbox = pytest.mark.skipif(not osbox.probe().complete,
                                   reason=f"no OS sandbox here: {osbox.probe().incomplete_why}")


def _judge(backend: str, os_sandbox: str, which: list) -> tuple[dict[str, Any], list[str]]:
    t = Targets()
    try:
        with t.armed(), Evaluator(workers=2, reference_workers=1, ptx_workers=1, memory_limit_mb=2048,
                                  timeout=60, os_sandbox=os_sandbox) as ev:
            out = {}
            for mode in ("strict", "lenient"):
                sub = [c for c in which if c.mode == mode]
                for c, v in zip(sub, ev.evaluate_batch([(c.task_source, c.source) for c in sub], backend, mode,
                                                       seed=5)):
                    out[c.id] = v
        return out, t.untouched()
    finally:
        t.close()


@pytest.fixture(scope="module")
def confined():
    return _judge("interpret", "require", OS_CASES + SOFTMAX)


@needs_sandbox
@pytest.mark.parametrize("case", OS_CASES, ids=lambda c: c.id)
def test_os_escape_rejected(case, confined):
    v = confined[0][case.id]
    assert v.status == "hack_detected", (v.status, v.reasons, v.error)
    assert set(case.expect) <= set(v.reasons), (v.reasons, v.error)
    assert "refused by the OS sandbox" in v.error
    assert v.versions.get("os_sandbox", "").startswith("landlock-abi"), v.versions
    assert v.versions["os_sandbox"].endswith("+seccomp"), v.versions


@needs_sandbox
def test_legit_ok_in_sandbox(confined):
    v = confined[0]["legit/row_softmax"]
    assert v.status == "ok", (v.status, v.reasons, v.error)
    assert v.versions.get("os_sandbox", "").startswith("landlock-abi"), v.versions


@needs_sandbox
def test_nothing_escaped(confined):
    assert confined[1] == []


# Hacks that, unconfined, escape and still compute the right softmax (so no worker is replaced).
CONTROL = ["hacks/os_read_init", "hacks/os_mapping_forward", "hacks/os_signal_parent_forward",
           "hacks/os_triton_cache_init", "hacks/os_udp_sendto_forward", "hacks/os_netlink_socket_forward_lenient"]


def test_escapes_succeed_without_the_sandbox():
    """The control: with os_sandbox="off" the same hacks reach their targets, and the one that only
    reads a file in __init__ is judged ok (the finding that motivated the sandbox)."""
    which = [c for c in OS_CASES if c.id in CONTROL]
    verdicts, escaped = _judge("interpret", "off", which)
    assert verdicts["hacks/os_read_init"].status == "ok", verdicts["hacks/os_read_init"].error
    assert verdicts["hacks/os_read_init"].versions.get("os_sandbox") == "false"
    assert any("victim" in e for e in escaped), escaped
    assert any("Triton cache" in e for e in escaped), escaped
    assert any("SIGWINCH" in e for e in escaped), escaped
    assert any("datagram" in e for e in escaped), escaped   # UDP: past Landlock, stopped by seccomp
    for hack in ("hacks/os_udp_sendto_forward", "hacks/os_netlink_socket_forward_lenient"):
        assert verdicts[hack].status == "ok", (hack, verdicts[hack].status, verdicts[hack].error)


@pytest.mark.gpu
@needs_sandbox
def test_os_red_team_on_gpu():
    """The same suite on the cuda backend: confinement with /dev/nvidia*, ptxas and the launcher's
    C compiler allowed; every escape rejected, every legit kernel ok, nothing escaped."""
    verdicts, escaped = _judge("cuda", "require", OS_CASES + LEGIT)
    wrong = {}
    for c in OS_CASES + LEGIT:
        v = verdicts[c.id]
        good = v.status == "ok" if c.legit else v.status == "hack_detected" and set(c.expect) <= set(v.reasons)
        if not good:
            wrong[c.id] = (v.status, v.reasons, v.error[:300])
    assert not wrong, wrong
    assert escaped == []
