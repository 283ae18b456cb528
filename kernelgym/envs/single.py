"""Single-turn environments: one task per episode, one candidate per step, one step per episode.

`KernelEnv` holds what every KernelGym env shares (spaces, evaluation, rewards, rendering); the
subclasses only choose tasks: `SyntheticEnv` from the sampler, `SuiteEnv` from a directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from kernelgym.envs.prompts import CHARSET, MAX_TEXT, build_prompt, clean, render_verdict
from kernelgym.evaluation import Evaluator, Verdict, default_evaluator
from kernelgym.evaluation.protocol import BACKEND_AUTO, BACKENDS, MODE_STRICT, MODES
from kernelgym.rewards import RewardSpec, get_reward, score
from kernelgym.sampler import default_sampler
from kernelgym.sampler.profiles import difficulty_profile
from kernelgym.task import Task, load_suite

MAX_DIFFICULTY = 16
class TextSpace(spaces.Text):
    """gymnasium's Text with a short repr: the charset (hundreds of characters) is summarised."""

    def __repr__(self) -> str:
        return f"Text({self.min_length}, {self.max_length}, charset=<{len(self.character_set)} characters>)"


def text_space(max_length: int = MAX_TEXT) -> spaces.Text:
    return TextSpace(max_length=max_length, min_length=0, charset=CHARSET)


def check_difficulty(difficulty: Any) -> int:
    """`difficulty` as an int in 1..16, or a ValueError saying what is wrong."""
    if isinstance(difficulty, bool) or not isinstance(difficulty, (int, np.integer)):
        raise ValueError(f"difficulty must be an int in 1..{MAX_DIFFICULTY}, got {difficulty!r}")
    difficulty_profile(int(difficulty))  # raises a clear ValueError when out of range
    return int(difficulty)


class KernelEnv(gym.Env):
    """Base environment: observation Dict(prompt, reference, task_id, difficulty), action Text.

    Subclasses implement `_next_task()`. `step` evaluates the action (candidate source) with
    `evaluator` (the process default when None); `prepare`/`finish` split it so that batched
    callers (`step_batch`, `BatchedSyncVectorEnv`) can judge many envs' actions in one call.
    """

    metadata = {"render_modes": ["ansi", "human"], "render_fps": 1}

    def __init__(self, *, backend: str = BACKEND_AUTO, mode: str = MODE_STRICT, reward: RewardSpec = "decoupled",
                 evaluator: Evaluator | None = None, timeout: float | None = None,
                 render_mode: str | None = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"unknown render_mode {render_mode!r}; choose one of {self.metadata['render_modes']}")
        self.backend, self.mode, self.timeout, self.render_mode = backend, mode, timeout, render_mode
        self.reward_fn = get_reward(reward)
        self._evaluator = evaluator
        self.action_space = text_space()
        self.observation_space = spaces.Dict(self._obs_spaces())
        self.task: Task | None = None
        self.last_verdict: dict[str, Any] | None = None
        self.last_reward: float | None = None
        self._pending: Verdict | None = None
        self._over = ""   # why the episode ended ("terminated", "truncated"), until reset

    # -- what subclasses change ---------------------------------------------------------------
    def _obs_spaces(self) -> dict[str, spaces.Space]:
        return {"prompt": text_space(), "reference": text_space(), "task_id": text_space(256),
                "difficulty": spaces.Discrete(MAX_DIFFICULTY + 1)}

    def _next_task(self) -> Task:
        raise NotImplementedError

    def _observation(self) -> dict[str, Any]:
        assert self.task is not None
        return {"prompt": clean(build_prompt(self.task, self.backend, self.mode)),
                "reference": clean(self.task.source), "task_id": clean(self.task.id, 256),
                "difficulty": int(self.task.difficulty or 0)}

    def _done(self, verdict: Verdict) -> tuple[bool, bool]:
        return True, False

    # -- gymnasium API ------------------------------------------------------------------------
    @property
    def evaluator(self) -> Evaluator:
        return self._evaluator or default_evaluator()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """New episode; `options={"task": Task}` forces the task instead of drawing one."""
        super().reset(seed=seed)
        task = (options or {}).get("task")
        if task is not None and not isinstance(task, Task):
            raise TypeError(f"options['task'] must be a kernelgym.Task, got {type(task).__name__}")
        self.task = task if task is not None else self._next_task()
        self.last_verdict, self.last_reward, self._pending, self._over = None, None, None, ""
        return self._observation(), self._task_info()

    def _task_info(self) -> dict[str, Any]:
        assert self.task is not None
        return {"task_id": self.task.id, "difficulty": int(self.task.difficulty or 0), "ops": list(self.task.ops)}

    def prepare(self, action: Any) -> tuple[Task, str, int]:
        """Check the action and draw the evaluation seed: (task, candidate source, seed)."""
        if self.task is None:
            raise RuntimeError("call reset() before step()")
        if self._over:
            # gymnasium: steps after terminated/truncated are undefined; judging again would cost an
            # evaluation and report a transition of an episode that has ended.
            raise RuntimeError(f"episode is over ({self._over}); call reset() before step()")
        if not isinstance(action, str):
            raise TypeError(f"action must be the candidate source as a str, got {type(action).__name__}")
        # The evaluation seed comes from the env's RNG so that a seeded episode is reproducible.
        return self.task, action, int(self.np_random.integers(0, 2**62))

    def evaluate(self, action: str, seed: int) -> Verdict:
        assert self.task is not None
        return self.evaluator.evaluate(self.task, action, self.backend, self.mode, seed=seed,
                                       timeout=self.timeout, task_id=self.task.id)

    def step(self, action: Any):
        _, source, seed = self.prepare(action)
        verdict, self._pending = self._pending, None
        if verdict is None:
            verdict = self.evaluate(source, seed)
        return self.finish(verdict)

    def finish(self, verdict: Verdict):
        """Turn a verdict for the current task into (obs, reward, terminated, truncated, info)."""
        reward, comps = score(verdict, self.reward_fn)
        self.last_verdict, self.last_reward = verdict.to_dict(), reward
        terminated, truncated = self._done(verdict)
        self._over = "terminated" if terminated else "truncated" if truncated else ""
        info = {**self._task_info(), "status": verdict.status, "verdict": self.last_verdict,
                "reward_components": comps}
        return self._observation(), reward, terminated, truncated, info

    def render(self) -> str | None:
        text = render_verdict(self.task, self.last_verdict, self.last_reward)
        if self.render_mode == "human":
            print(text)
            return None
        return text


class SyntheticEnv(KernelEnv):
    """`KernelGym/Synthetic-v0`: each reset samples a task at `difficulty` (tiny or bench `sizes`).

    The task seed is drawn from the env's RNG, so `reset(seed=s)` always gives the same task.
    `ops` forces the sampler's op choice (tests and curricula over chosen ops).
    """

    def __init__(self, difficulty: int = 1, sizes: str = "tiny", backend: str = "auto", reward: RewardSpec = "decoupled",
                 seed: int | None = None, *, mode: str = "strict", dtype: str = "float32",
                 evaluator: Evaluator | None = None, timeout: float | None = None, ops: list[str] | None = None,
                 render_mode: str | None = None) -> None:
        super().__init__(backend=backend, mode=mode, reward=reward, evaluator=evaluator, timeout=timeout,
                         render_mode=render_mode)
        self.difficulty = check_difficulty(difficulty)
        self.sampler = default_sampler(sizes, dtype)
        self.ops = list(ops) if ops else None
        self._initial_seed = seed

    def set_difficulty(self, difficulty: int) -> None:
        """Difficulty of the tasks drawn from the next reset on (used by the curriculum)."""
        self.difficulty = check_difficulty(difficulty)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is None and self._initial_seed is not None:
            seed, self._initial_seed = self._initial_seed, None
        if options and "difficulty" in options:
            self.set_difficulty(options["difficulty"])
        return super().reset(seed=seed, options=options)

    def _next_task(self) -> Task:
        task_seed = int(self.np_random.integers(0, 2**31 - 1))
        return self.sampler.sample(self.difficulty, task_seed, self.ops)


class SuiteEnv(KernelEnv):
    """`KernelGym/Suite-v0`: the tasks of a KernelBench-format directory, in order or shuffled.

    In order, episode i gets task i mod n; shuffled, each pass uses a permutation drawn from the
    env's RNG. A seeded reset restarts from the first task of a fresh order.
    """

    def __init__(self, path: str | Path | None = None, shuffle: bool = False, backend: str = "auto",
                 reward: RewardSpec = "decoupled", seed: int | None = None, *, mode: str = "strict",
                 evaluator: Evaluator | None = None, timeout: float | None = None,
                 render_mode: str | None = None) -> None:
        super().__init__(backend=backend, mode=mode, reward=reward, evaluator=evaluator, timeout=timeout,
                         render_mode=render_mode)
        if path is None:
            raise ValueError("Suite-v0 needs path= (a directory of KernelBench-format files)")
        self.suite = load_suite(path)
        if not self.suite.tasks:
            problems = "; ".join(str(e) for e in self.suite.errors[:3])
            raise ValueError(f"no loadable tasks in {path}" + (f": {problems}" if problems else ""))
        self.shuffle = shuffle
        self._initial_seed = seed
        self._order: list[int] = []
        self._pos = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is None and self._initial_seed is not None:
            seed, self._initial_seed = self._initial_seed, None
        if seed is not None:
            self._order, self._pos = [], 0
        return super().reset(seed=seed, options=options)

    def _next_task(self) -> Task:
        if self._pos >= len(self._order):
            n = len(self.suite)
            self._order = [int(i) for i in self.np_random.permutation(n)] if self.shuffle else list(range(n))
            self._pos = 0
        task = self.suite[self._order[self._pos]]
        self._pos += 1
        return task
