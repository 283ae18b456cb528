"""Difficulty curriculum from a moving success rate: a plain object, and a gymnasium wrapper."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from typing import Any

import gymnasium as gym

from kernelgym.envs.single import MAX_DIFFICULTY, check_difficulty
from kernelgym.evaluation import Verdict

log = logging.getLogger(__name__)


class Curriculum:
    """Moves difficulty up when the success rate over the last `window` results reaches `promote`,
    down when it falls to `demote` or below; the window restarts after each move.

    Trainers that don't step an env call `update(verdict_or_bool)` and read `difficulty`.
    `schedule` logs every move as {"step", "from", "to", "success_rate"}.
    """

    def __init__(self, start: int = 1, min_difficulty: int = 1, max_difficulty: int = MAX_DIFFICULTY,
                 window: int = 20, promote: float = 0.8, demote: float = 0.2) -> None:
        self.min_difficulty, self.max_difficulty = check_difficulty(min_difficulty), check_difficulty(max_difficulty)
        if self.min_difficulty > self.max_difficulty:
            raise ValueError("min_difficulty must not exceed max_difficulty")
        start = check_difficulty(start)
        if not self.min_difficulty <= start <= self.max_difficulty:
            raise ValueError(f"start {start} is outside [{min_difficulty}, {max_difficulty}]")
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an int >= 1, got {window!r}")
        if not 0.0 <= demote < promote <= 1.0:
            raise ValueError(f"need 0 <= demote < promote <= 1, got demote={demote}, promote={promote}")
        self.difficulty, self.window, self.promote, self.demote = start, window, promote, demote
        self.results: deque[bool] = deque(maxlen=window)
        self.steps = 0
        self.schedule: list[dict[str, Any]] = []

    @property
    def success_rate(self) -> float | None:
        return sum(self.results) / len(self.results) if self.results else None

    def update(self, result: Verdict | Mapping[str, Any] | bool) -> int:
        """Record one result (a verdict, its dict, or success as a bool); return the difficulty."""
        if isinstance(result, Verdict):
            success = result.ok
        elif isinstance(result, Mapping):
            success = result.get("status") == "ok"
        elif isinstance(result, bool):
            success = result
        else:
            raise TypeError(f"update takes a Verdict, a verdict dict or a bool, got {type(result).__name__}")
        self.steps += 1
        self.results.append(success)
        if len(self.results) == self.window:
            rate = self.success_rate
            new = self.difficulty
            if rate >= self.promote and self.difficulty < self.max_difficulty:
                new = self.difficulty + 1
            elif rate <= self.demote and self.difficulty > self.min_difficulty:
                new = self.difficulty - 1
            if new != self.difficulty:
                self.schedule.append({"step": self.steps, "from": self.difficulty, "to": new, "success_rate": rate})
                self.difficulty = new
                self.results.clear()
        return self.difficulty

    def state(self) -> dict[str, Any]:
        return {"difficulty": self.difficulty, "success_rate": self.success_rate, "steps": self.steps,
                "moves": len(self.schedule)}


class CurriculumWrapper(gym.Wrapper):
    """Sets the wrapped env's difficulty from a `Curriculum` at each reset and updates it from each
    verdict; `info["curriculum"]` holds its state, `schedule` the moves (the env needs `set_difficulty`)."""

    def __init__(self, env: gym.Env, curriculum: Curriculum | None = None, **params: Any) -> None:
        super().__init__(env)
        if not hasattr(env.unwrapped, "set_difficulty"):
            raise TypeError(f"{type(env.unwrapped).__name__} has no set_difficulty (use a Synthetic env)")
        self.curriculum = curriculum or Curriculum(**params)

    @property
    def schedule(self) -> list[dict[str, Any]]:
        return self.curriculum.schedule

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self.env.unwrapped.set_difficulty(self.curriculum.difficulty)
        obs, info = self.env.reset(seed=seed, options=options)
        return obs, {**info, "curriculum": self.curriculum.state()}

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            before = len(self.curriculum.schedule)
            self.curriculum.update(info["verdict"])
            if len(self.curriculum.schedule) > before:
                log.info("curriculum: %s", self.curriculum.schedule[-1])
        return obs, reward, terminated, truncated, {**info, "curriculum": self.curriculum.state()}
