"""Thin verl registrations (imports verl): the DRPO advantage estimator, the multi-turn agent loop
and the curriculum sampler. All the logic lives in verl-free modules.

verl runs the trainer and workers in Ray processes; have each of them import this module with
``VERL_USE_EXTERNAL_MODULES=train.verl.register`` (what `train/launch.sh` exports; verl imports
the listed modules on ``import verl``). Then:
- ``algorithm.adv_estimator=kernelgym_drpo`` (+ ``algorithm.drpo.lam`` ...) selects DRPO;
  ``algorithm.adv_estimator=grpo`` is plain GRPO on the summed reward, for comparison.
- ``actor_rollout_ref.rollout.agent.default_agent_loop=kernelgym_multiturn`` (or the dataset's
  ``agent_name`` column) runs multi-turn refinement on MultiTurn-v0; options under ``kernelgym.multiturn``.
- ``data.sampler.class_path=pkg://train.verl.register data.sampler.class_name=KernelGymCurriculumSampler``
  draws prompts by curriculum difficulty (``data.sampler.curriculum`` holds Curriculum parameters;
  verl requires ``data.dataloader_num_workers=0`` with it).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput, register
from verl.experimental.dataset.sampler import AbstractCurriculumSampler
from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY, register_adv_est

from train.curriculum import CurriculumSampler
from train.verl.drpo import drpo_outcome_advantage
from train.verl.multiturn import RefinementSession, refine
from train.verl.reward import get_evaluator, reference_task

ADV_ESTIMATOR = "kernelgym_drpo"
AGENT_LOOP = "kernelgym_multiturn"

if ADV_ESTIMATOR not in ADV_ESTIMATOR_REGISTRY:  # re-imports (several Ray workers, reloads) are harmless
    register_adv_est(ADV_ESTIMATOR)(drpo_outcome_advantage)


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    return cfg.get(key, default) if cfg is not None and hasattr(cfg, "get") else default


@register(AGENT_LOOP)
class KernelGymAgentLoop(AgentLoopBase):
    """Multi-turn refinement: generate, judge on MultiTurn-v0, feed the feedback back, repeat.

    Options (``kernelgym.multiturn`` in the trainer config): max_turns, target_speedup, backend,
    mode, reward, reward_params, timeout, workers. The trajectory's reward is the last attempt's;
    its components go to verl's reward extras.
    """

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        opts = dict(_get(_get(self.config, "kernelgym", {}), "multiturn", {}) or {})
        extra = dict(kwargs.get("extra_info") or {})
        task = reference_task(kwargs["reward_model"]["ground_truth"], extra)
        evaluator = get_evaluator(opts.pop("workers", None), opts.get("timeout"))
        session = await asyncio.to_thread(RefinementSession, task, evaluator=evaluator, **opts)
        request_id = uuid.uuid4().hex

        async def generate(ids: list[int]) -> list[int]:
            out = await self.server_manager.generate(request_id=request_id, prompt_ids=ids,
                                                     sampling_params=sampling_params)
            return list(out.token_ids)

        async def encode(messages: list[dict[str, Any]], continuation: bool) -> list[int]:
            return await self.apply_chat_template(messages, remove_system_prompt=continuation)

        def decode(ids: list[int]) -> str:
            return self.tokenizer.decode(ids, skip_special_tokens=True)

        length = int(self.config.actor_rollout_ref.rollout.response_length)
        try:
            res = await refine(session, list(kwargs["raw_prompt"]), generate, encode, decode, length)
        finally:
            session.close()
        return AgentLoopOutput(prompt_ids=res.prompt_ids, response_ids=res.response_ids[:length],
                               response_mask=res.response_mask[:length], reward_score=res.reward,
                               num_turns=res.num_turns + 1, metrics={},
                               extra_fields={"reward_extra_info": res.scores, "turn_scores": res.turn_rewards})


class KernelGymCurriculumSampler(CurriculumSampler, AbstractCurriculumSampler):
    """verl curriculum sampler over a KernelGym parquet: difficulty from each row's extra_info.

    ``data.sampler.curriculum`` takes `Curriculum` parameters (start, window, promote, demote,
    min/max_difficulty) and ``group_threshold``; the window defaults to ``data.train_batch_size``
    (one decision per step at most). verl calls `update(batch)` after each step.
    """

    def __init__(self, data_source: Any, data_config: Any) -> None:
        frame = getattr(data_source, "dataframe", data_source)
        infos = frame["extra_info"]
        difficulties = [(info or {}).get("difficulty") for info in infos]
        params = dict(_get(_get(data_config, "sampler", {}), "curriculum", {}) or {})
        params.setdefault("window", int(_get(data_config, "train_batch_size", 20) or 20))
        threshold = float(params.pop("group_threshold", 0.5))
        seed = _get(data_config, "seed", 0)
        super().__init__(difficulties, seed=int(seed or 0), group_threshold=threshold, **params)


__all__ = ["ADV_ESTIMATOR", "AGENT_LOOP", "KernelGymAgentLoop", "KernelGymCurriculumSampler"]
