"""Reward functions: formulas, names, custom callables, bad input."""

from __future__ import annotations

import math

import pytest

from kernelgym.evaluation import Verdict
from kernelgym.rewards import REWARDS, Decoupled, KernelBench, get_reward, score


def ok(speedup=None):
    return Verdict("ok", correct=True, compiled=True, speedup=speedup)


WRONG = Verdict("incorrect", compiled=True, reasons=["check:mismatch"])
HACK = Verdict("hack_detected", compiled=True, reasons=["guard:input_mutated"])
FORMAT = Verdict("format_error")


def test_decoupled_parts():
    r = get_reward("decoupled")
    assert r.parts(ok()) == {"correctness": 1.0, "speed": 0.0} and not r.speed_valid(ok())
    assert r.parts(ok(4.0)) == {"correctness": 1.0, "speed": 2.0} and r.speed_valid(ok(4.0))
    assert r(ok(1000.0)) == 1.0 + 3.0  # clipped at speed_max
    assert r(ok(0.01)) == 1.0 - 1.0  # clipped at speed_min
    assert r(WRONG) == 0.0 and r(FORMAT) == 0.0 and r(HACK) == -1.0
    assert Decoupled(hack_penalty=2.0, speed_weight=0.5)(ok(2.0)) == 1.5
    assert Decoupled(hack_penalty=2.0)(HACK) == -2.0


def test_kernelbench_and_binary():
    kb = get_reward("kernelbench")
    assert kb(ok()) == 1.0 and kb(ok(1.2)) == 1.5 and kb(ok(3.0)) == 2.5
    assert kb(WRONG) == 0.0 and kb(HACK) == -1.0
    assert KernelBench(thresholds=(1.0,), bonus=1.0)(ok(1.1)) == 2.0
    b = get_reward("binary")
    assert b(ok(5.0)) == 1.0 and b(WRONG) == 0.0 and b(HACK) == 0.0
    assert set(REWARDS) >= {"decoupled", "kernelbench", "binary"}


def test_score_reports_every_component():
    reward, comps = score(ok(2.0), get_reward("decoupled"))
    assert reward == 2.0
    for k in ("format", "compiled", "correct", "speedup", "speedup_vs_compile", "hack"):
        assert k in comps
    assert comps["speedup"] == 1.0 and comps["reward/speed"] == 1.0
    _, comps = score(HACK, get_reward("decoupled"))
    assert comps["hack"] == 1.0 and comps["reward/correctness"] == -1.0


def test_custom_callable():
    def mine(v):
        return 2.0 * v.correct

    r = get_reward(mine)
    assert r.name == "mine" and r(ok()) == 2.0 and r(WRONG) == 0.0
    assert get_reward(r) is r
    with pytest.raises(TypeError, match="finite float"):
        get_reward(lambda v: math.nan)(ok())


def test_bad_reward_spec():
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        get_reward("nope")
    with pytest.raises(TypeError):
        get_reward(3)
