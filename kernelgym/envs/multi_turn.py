"""`KernelGym/MultiTurn-v0`: several attempts at one task, with a kernel engineer's feedback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gymnasium import spaces

from kernelgym.envs.prompts import clean, feedback
from kernelgym.envs.single import KernelEnv, SuiteEnv, SyntheticEnv, text_space
from kernelgym.evaluation import Evaluator, Verdict
from kernelgym.rewards import RewardSpec


class MultiTurnEnv(KernelEnv):
    """Up to `max_turns` attempts on one task (sampled at `difficulty`, or from the suite at `path`).

    After each step the observation's `feedback` holds the status, failed checks with their numbers,
    the compiler error trimmed to its relevant lines and the timing; `last_candidate` the attempt.
    Terminates on success: correct with speedup >= `target_speedup` (on a backend that cannot time,
    such as the interpreter, correct is success); truncated after the last turn otherwise.
    """

    def __init__(self, difficulty: int | None = None, path: str | Path | None = None, max_turns: int = 4,
                 target_speedup: float = 1.0, sizes: str = "tiny", backend: str = "auto",
                 reward: RewardSpec = "decoupled", seed: int | None = None, *, shuffle: bool = False,
                 mode: str = "strict", dtype: str = "float32", evaluator: Evaluator | None = None,
                 timeout: float | None = None, ops: list[str] | None = None,
                 render_mode: str | None = None) -> None:
        if isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1:
            raise ValueError(f"max_turns must be an int >= 1, got {max_turns!r}")
        if not isinstance(target_speedup, (int, float)) or target_speedup <= 0:
            raise ValueError(f"target_speedup must be a positive number, got {target_speedup!r}")
        self.max_turns, self.target_speedup = max_turns, float(target_speedup)
        super().__init__(backend=backend, mode=mode, reward=reward, evaluator=evaluator, timeout=timeout,
                         render_mode=render_mode)
        if path is not None and difficulty is not None:
            raise ValueError("give either difficulty= (sampled tasks) or path= (a suite), not both")
        common = dict(backend=backend, mode=mode, evaluator=evaluator, timeout=timeout)
        self.source: KernelEnv = (SuiteEnv(path, shuffle=shuffle, **common) if path is not None else
                                  SyntheticEnv(difficulty or 1, sizes, dtype=dtype, ops=ops, **common))
        self._initial_seed = seed
        self.turn = 0
        self._feedback = ""
        self._last_candidate = ""

    def _obs_spaces(self) -> dict[str, spaces.Space]:
        return {**super()._obs_spaces(), "feedback": text_space(), "last_candidate": text_space(),
                "turn": spaces.Discrete(self.max_turns + 1)}

    def _observation(self) -> dict[str, Any]:
        return {**super()._observation(), "feedback": self._feedback, "last_candidate": self._last_candidate,
                "turn": self.turn}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is None and self._initial_seed is not None:
            seed, self._initial_seed = self._initial_seed, None
        self.turn, self._feedback, self._last_candidate = 0, "", ""
        if seed is not None:
            self.source.reset(seed=seed, options=options)
        else:
            self.source.reset(options=options)
        return super().reset(seed=seed, options={"task": self.source.task})

    def _next_task(self):  # reset always passes the source's task
        raise AssertionError("unreachable")

    def prepare(self, action: Any):
        out = super().prepare(action)
        if self.turn >= self.max_turns:
            raise RuntimeError("episode is over (max_turns reached); call reset()")
        return out

    def success(self, verdict: Verdict) -> bool:
        if not verdict.ok:
            return False
        return verdict.speedup is None or verdict.speedup >= self.target_speedup

    def _done(self, verdict: Verdict) -> tuple[bool, bool]:
        done = self.success(verdict)
        return done, (not done and self.turn >= self.max_turns)

    def finish(self, verdict: Verdict):
        self.turn += 1
        self._feedback = clean(feedback(verdict.to_dict(), self.turn, self.max_turns, self.target_speedup,
                                        solved=self.success(verdict)))
        obs, reward, terminated, truncated, info = super().finish(verdict)
        info.update(turn=self.turn, success=terminated, feedback=self._feedback)
        return obs, reward, terminated, truncated, info

    def step(self, action: Any):
        if isinstance(action, str):
            self._last_candidate = clean(action)
        return super().step(action)
