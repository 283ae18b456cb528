"""Reward functions: small named objects that turn a `Verdict` into a scalar reward.

The evaluator reports the decoupled components (`kernelgym.evaluation.verdict.components`):
`format`, `compiled`, `correct`, `speedup` (log2 of eager speedup), `speedup_vs_compile`, `hack`.
A reward function combines them; `parts(verdict)` returns its named terms (their sum is the reward)
so that trainers can use them separately (DRPO uses the speed term only among correct rollouts).
Select one by name with `get_reward("decoupled")` or pass any callable `fn(verdict) -> float`.
Formulas and parameters are documented in README.md, section "Rewards".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kernelgym.evaluation.verdict import Verdict, components

COMPONENT_NAMES = ("format", "compiled", "correct", "speedup", "speedup_vs_compile", "hack")


def reward_components(verdict: Verdict) -> dict[str, float]:
    """Every component, always all present (recomputed when the verdict carries none)."""
    comps = dict(verdict.reward_components or components(verdict))
    for name, value in components(verdict).items():
        comps.setdefault(name, value)
    return {k: float(v) for k, v in comps.items()}


class Reward:
    """Base of the named reward functions: `parts` gives the terms, calling gives their sum."""

    name = "reward"

    def parts(self, verdict: Verdict) -> dict[str, float]:
        raise NotImplementedError

    def __call__(self, verdict: Verdict) -> float:
        return float(sum(self.parts(verdict).values()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


@dataclass(frozen=True, repr=False)
class Decoupled(Reward):
    """DRTriton-style: a correctness reward and a separate speed reward for correct kernels only.

    correctness = 1 if correct, -hack_penalty if a guard fired, else 0.
    speed = speed_weight * clip(log2(speedup), speed_min, speed_max) if correct and timed, else 0.
    `speed_valid` (a part worth 0) is 1 when the speed term is defined, so a trainer can mask it.
    """

    hack_penalty: float = 1.0
    speed_weight: float = 1.0
    speed_min: float = -1.0
    speed_max: float = 3.0
    name = "decoupled"

    def parts(self, verdict: Verdict) -> dict[str, float]:
        c = reward_components(verdict)
        correct = c["correct"] > 0
        correctness = 1.0 if correct else (-self.hack_penalty if c["hack"] > 0 else 0.0)
        timed = correct and verdict.speedup is not None and verdict.speedup > 0
        speed = self.speed_weight * min(max(c["speedup"], self.speed_min), self.speed_max) if timed else 0.0
        return {"correctness": correctness, "speed": speed}

    def speed_valid(self, verdict: Verdict) -> bool:
        """Whether the speed term exists for this verdict (correct and timed)."""
        return bool(verdict.correct and verdict.status == "ok" and verdict.speedup is not None
                    and verdict.speedup > 0)


@dataclass(frozen=True, repr=False)
class KernelBench(Reward):
    """KernelBench fast_p style: 1 for correct, plus `bonus` for each threshold p with speedup > p.

    reward = correct * (1 + bonus * #{p in thresholds : speedup > p}) - hack_penalty * hack.
    """

    thresholds: tuple[float, ...] = (1.0, 1.5, 2.0)
    bonus: float = 0.5
    hack_penalty: float = 1.0
    name = "kernelbench"

    def parts(self, verdict: Verdict) -> dict[str, float]:
        c = reward_components(verdict)
        correct = c["correct"] > 0
        s = verdict.speedup if (correct and verdict.speedup is not None) else 0.0
        fast = sum(1 for p in self.thresholds if s > p) if correct else 0
        return {"correctness": float(correct), "fast_p": self.bonus * fast,
                "hack": -self.hack_penalty * c["hack"]}


@dataclass(frozen=True, repr=False)
class Binary(Reward):
    """1 if the candidate is correct (status ok), else 0."""

    name = "binary"

    def parts(self, verdict: Verdict) -> dict[str, float]:
        return {"correctness": reward_components(verdict)["correct"]}


@dataclass(frozen=True, repr=False)
class FunctionReward(Reward):
    """A user's `fn(verdict) -> float` wrapped as a Reward with one part, `reward`."""

    fn: Callable[[Verdict], float]

    @property
    def name(self) -> str:  # type: ignore[override]
        return getattr(self.fn, "__name__", "custom")

    def parts(self, verdict: Verdict) -> dict[str, float]:
        value = self.fn(verdict)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise TypeError(f"reward function {self.name!r} must return a finite float, got {value!r}")
        return {"reward": float(value)}


REWARDS: dict[str, Callable[..., Reward]] = {"decoupled": Decoupled, "kernelbench": KernelBench, "binary": Binary}

RewardSpec = str | Reward | Callable[[Verdict], float]


def get_reward(spec: RewardSpec = "decoupled", **params: Any) -> Reward:
    """A Reward from a name in `REWARDS` (with `params`), a Reward, or a callable of the verdict."""
    if isinstance(spec, Reward):
        return spec
    if isinstance(spec, str):
        if spec not in REWARDS:
            raise ValueError(f"unknown reward {spec!r}; choose one of {sorted(REWARDS)} or pass a callable")
        return REWARDS[spec](**params)
    if callable(spec):
        return FunctionReward(spec)
    raise TypeError(f"reward must be a name, a Reward or a callable, got {type(spec).__name__}")


def score(verdict: Verdict, reward: Reward) -> tuple[float, dict[str, float]]:
    """(reward, info components): the evaluator's components plus the reward's parts as `reward/<part>`."""
    parts = reward.parts(verdict)
    comps: dict[str, float] = reward_components(verdict)
    comps.update({f"reward/{k}": float(v) for k, v in parts.items()})
    return float(sum(parts.values())), comps


def verdict_from(data: Verdict | Mapping[str, Any]) -> Verdict:
    """Accept a Verdict or its dict form (as found in `info["verdict"]`)."""
    return data if isinstance(data, Verdict) else Verdict.from_dict(dict(data))


__all__ = ["COMPONENT_NAMES", "REWARDS", "Binary", "Decoupled", "FunctionReward", "KernelBench", "Reward",
           "RewardSpec", "get_reward", "reward_components", "score", "verdict_from"]
