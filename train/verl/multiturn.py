"""Multi-turn refinement on `KernelGym/MultiTurn-v0` for verl, without importing verl.

- `RefinementSession`: one MultiTurn-v0 episode on a given task, driven by chat replies:
  `submit(reply)` judges it and returns the environment's feedback, reward and verdict.
- `KernelGymInteraction`: a verl *interaction* (verl's ``BaseInteraction`` methods; a subclass of
  it when verl is importable) for verl's tool agent loop: each assistant turn is judged and the
  feedback becomes the next user turn. verl before 0.9 only (0.9 removed ``verl.interactions`` and
  the ``interaction_config_path`` key; use the ``kernelgym_multiturn`` agent loop there): configure
  with ``actor_rollout_ref.rollout.multi_turn.interaction_config_path=train/configs/interaction.yaml``
  and build the data with ``--multi-turn`` (rows carry ``extra_info.interaction_kwargs``).
- `refine`: the token-level turn loop of a verl *agent loop* (prompt ids, generated ids with
  mask 1, feedback ids with mask 0), written against injected `generate` / `encode` callables;
  `train.verl.register.KernelGymAgentLoop` plugs verl's server manager and tokenizer into it.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

import kernelgym  # noqa: F401  (registers the env ids)
from kernelgym.evaluation import Evaluator
from kernelgym.rewards import Reward, verdict_from
from kernelgym.task import Task
from train.verl.reward import make_reward, reference_task, verdict_score

try:  # verl is optional: subclass its base when present so isinstance checks hold
    from verl.interactions.base import BaseInteraction as _Base
except Exception:  # noqa: BLE001 - any import failure means "no verl here"
    _Base = object


@dataclass
class Turn:
    """What one judged reply produced."""

    done: bool          # terminated (success) or truncated (out of turns)
    success: bool
    feedback: str       # the env's feedback text: the next user message
    reward: float
    scores: dict[str, float]  # verl-style score dict (score + components) of this attempt
    verdict: dict[str, Any]


class RefinementSession:
    """One `KernelGym/MultiTurn-v0` episode on `task`; `submit(reply)` plays one turn."""

    def __init__(self, task: Task, *, max_turns: int = 4, target_speedup: float = 1.0, backend: str = "auto",
                 mode: str = "strict", reward: str | Reward = "decoupled",
                 reward_params: Mapping[str, Any] | None = None, evaluator: Evaluator | None = None,
                 timeout: float | None = None, seed: int | None = None) -> None:
        self.task = task
        self.reward = make_reward(reward, reward_params)
        self.env = gym.make("KernelGym/MultiTurn-v0", difficulty=task.difficulty or 1, max_turns=max_turns,
                            target_speedup=target_speedup, backend=backend, mode=mode, reward=self.reward,
                            evaluator=evaluator, timeout=timeout).unwrapped
        obs, _ = self.env.reset(seed=seed, options={"task": task})
        self.prompt: str = obs["prompt"]
        self.turns: list[Turn] = []
        self.done = False

    def submit(self, reply: str) -> Turn:
        if self.done:
            raise RuntimeError("the episode is over; start a new session")
        obs, reward, terminated, truncated, info = self.env.step(reply)
        verdict = info["verdict"]
        scores = verdict_score(verdict_from(verdict), self.reward, self.task.difficulty)
        turn = Turn(done=bool(terminated or truncated), success=bool(terminated), feedback=obs["feedback"],
                    reward=float(reward), scores=scores, verdict=verdict)
        self.turns.append(turn)
        self.done = turn.done
        return turn

    @property
    def final(self) -> Turn | None:
        return self.turns[-1] if self.turns else None

    def close(self) -> None:
        self.env.close()


class KernelGymInteraction(_Base):
    """verl interaction backed by MultiTurn-v0: judges each assistant turn, replies with feedback.

    config (from the interaction YAML): max_turns (4), target_speedup (1.0), backend ("auto"),
    mode ("strict"), reward ("decoupled"), reward_params, timeout, workers (evaluator pool size).
    `start_interaction(instance_id, ground_truth=<reference source>, task_id=..., difficulty=...)`.
    The turn score verl records is the attempt's reward; `calculate_score` gives the latest one.
    """

    _OPTIONS = frozenset({"name", "max_turns", "target_speedup", "backend", "mode", "reward", "reward_params", "timeout",
                          "workers", "evaluator"})

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        config = dict(config or {})
        unknown = set(config) - self._OPTIONS
        if unknown:
            raise ValueError(f"unknown KernelGymInteraction option(s) {sorted(unknown)}; accepted: "
                             f"{sorted(self._OPTIONS)}")
        self.config = config
        self.name = config.get("name", "kernelgym")
        self._sessions: dict[str, RefinementSession] = {}
        self._lock = threading.Lock()
        self._evaluator: Evaluator | None = config.get("evaluator")

    def _session_kwargs(self) -> dict[str, Any]:
        from train.verl.reward import get_evaluator

        c = self.config
        if self._evaluator is None:
            self._evaluator = get_evaluator(c.get("workers"), c.get("timeout"))
        return {"max_turns": int(c.get("max_turns", 4)), "target_speedup": float(c.get("target_speedup", 1.0)),
                "backend": c.get("backend", "auto"), "mode": c.get("mode", "strict"),
                "reward": c.get("reward", "decoupled"), "reward_params": c.get("reward_params"),
                "evaluator": self._evaluator, "timeout": c.get("timeout")}

    async def start_interaction(self, instance_id: str | None = None, ground_truth: str | None = None,
                                task_id: str | None = None, difficulty: int | None = None, **kwargs: Any) -> str:
        instance_id = instance_id or uuid.uuid4().hex
        task = reference_task(ground_truth, {"task_id": task_id, "difficulty": difficulty})
        session = await asyncio.to_thread(RefinementSession, task, **self._session_kwargs())
        with self._lock:
            self._sessions[instance_id] = session
        return instance_id

    def session(self, instance_id: str) -> RefinementSession:
        with self._lock:
            if instance_id not in self._sessions:
                raise KeyError(f"no interaction {instance_id!r} (start_interaction first)")
            return self._sessions[instance_id]

    async def generate_response(self, instance_id: str, messages: list[dict[str, Any]],
                                **kwargs: Any) -> tuple[bool, str, float, dict[str, Any]]:
        session = self.session(instance_id)
        reply = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "assistant"), "")
        # Judging takes seconds (worker processes): keep the rollout's event loop free meanwhile.
        turn = await asyncio.to_thread(session.submit, reply)
        return turn.done, turn.feedback, turn.reward, dict(turn.scores)

    async def calculate_score(self, instance_id: str | None = None, **kwargs: Any) -> float:
        if instance_id is None:
            return 0.0
        final = self.session(instance_id).final
        return final.reward if final else 0.0

    async def finalize_interaction(self, instance_id: str | None = None, **kwargs: Any) -> None:
        with self._lock:
            session = self._sessions.pop(instance_id, None) if instance_id else None
        if session is not None:
            session.close()


@dataclass
class RefineResult:
    """Token-level outcome of `refine`: what a verl AgentLoopOutput needs."""

    prompt_ids: list[int]
    response_ids: list[int]
    response_mask: list[int]
    reward: float
    scores: dict[str, float]
    turn_rewards: list[float] = field(default_factory=list)
    num_turns: int = 0
    success: bool = False


async def refine(session: RefinementSession, messages: list[dict[str, Any]],
                 generate: Callable[[list[int]], Awaitable[list[int]]],
                 encode: Callable[[list[dict[str, Any]], bool], Awaitable[list[int]]],
                 decode: Callable[[list[int]], str], response_length: int) -> RefineResult:
    """Run the episode: generate, judge, append the feedback as a user turn, until done.

    encode(messages, continuation) returns the chat-template ids of `messages` (with
    continuation=True: a follow-up user turn, without the system prompt). Model tokens get mask 1,
    feedback tokens 0. Stops at success, the last turn, or `response_length` tokens; the reward is
    the last attempt's (an episode cut short by length is judged on what was generated).
    """
    prompt_ids = await encode(list(messages), False)
    response_ids: list[int] = []
    mask: list[int] = []
    turn: Turn | None = None
    while True:
        out = await generate(prompt_ids + response_ids)
        room = response_length - len(response_ids)
        out = out[:room]
        response_ids += out
        mask += [1] * len(out)
        turn = await asyncio.to_thread(session.submit, decode(out))
        if turn.done or len(response_ids) >= response_length:
            break
        fb = await encode([{"role": "user", "content": turn.feedback}], True)
        fb = fb[: response_length - len(response_ids)]
        response_ids += fb
        mask += [0] * len(fb)
        if len(response_ids) >= response_length:
            break
    return RefineResult(prompt_ids=prompt_ids, response_ids=response_ids, response_mask=mask, reward=turn.reward,
                        scores=dict(turn.scores), turn_rewards=[t.reward for t in session.turns],
                        num_turns=2 * len(session.turns), success=turn.success)


__all__ = ["KernelGymInteraction", "RefineResult", "RefinementSession", "Turn", "refine"]
