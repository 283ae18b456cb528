"""Thin verl registrations (imports verl): the DRPO advantage estimator, the multi-turn agent loop
and the curriculum sampler. All the logic lives in verl-free modules.

verl runs the trainer and workers in Ray processes; have each of them import this module with
``VERL_USE_EXTERNAL_MODULES=train.verl.register`` (what `train/launch.sh` exports; verl imports
the listed modules on ``import verl``). Then:
- ``algorithm.adv_estimator=kernelgym_drpo`` (+ ``algorithm.drpo.lam`` ...) selects DRPO;
  ``algorithm.adv_estimator=grpo`` is plain GRPO on the summed reward, for comparison.
- ``actor_rollout_ref.rollout.agent.default_agent_loop=kernelgym_multiturn`` (or the dataset's
  ``agent_name`` column) runs multi-turn refinement on MultiTurn-v0; options under ``kernelgym.multiturn``.
- ``data.custom_cls.path=pkg://train.verl.register data.custom_cls.name=KernelGymCurriculumDataset``
  draws prompts by curriculum difficulty (verl >= 0.9: the dataset picks each row and learns from
  every batch through verl's ``on_batch_end`` hook; ``data.curriculum`` holds Curriculum
  parameters; needs ``data.dataloader_num_workers=0`` so the state lives in the trainer).
  Older verl (with ``verl.experimental.dataset.sampler``) can use the sampler hook instead:
  ``data.sampler.class_path=pkg://train.verl.register
  data.sampler.class_name=KernelGymCurriculumSampler`` with ``data.sampler.curriculum``.

Checked against verl 0.9.1 (imports, the agent-loop and advantage-estimator signatures).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput, register
from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY, register_adv_est
from verl.utils.dataset.rl_dataset import RLHFDataset

try:  # verl < 0.9 had a sampler hook; 0.9 dropped it (the dataset below works on both)
    from verl.experimental.dataset.sampler import AbstractCurriculumSampler
except ImportError:
    AbstractCurriculumSampler = None

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
            if hasattr(self, "apply_chat_template"):   # verl < 0.9
                return await self.apply_chat_template(messages, remove_system_prompt=continuation)
            if not continuation:   # verl >= 0.9 builds prompts with its Continuous Token builder
                return list(await self.ct_build_initial_tokens(messages))
            return await asyncio.to_thread(_follow_up_ids, self.tokenizer, messages,
                                           dict(getattr(self, "apply_chat_template_kwargs", {}) or {}))

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


def _follow_up_ids(tokenizer: Any, messages: list[dict[str, Any]], kwargs: dict[str, Any]) -> list[int]:
    """Chat-template ids of follow-up turns without the system prompt that templates prepend:
    the ids of `messages` minus those of an empty conversation's prefix (what verl < 0.9 did)."""
    def ids(msgs: list[dict[str, Any]], gen: bool) -> list[int]:
        out = tokenizer.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=True, **kwargs)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    full, prefix = ids(messages, True), ids([{}], False)
    return full[len(prefix):] if full[:len(prefix)] == prefix else full


def _curriculum_args(frame: Any, data_config: Any, params: Any) -> tuple[list[Any], dict[str, Any]]:
    """`CurriculumSampler` arguments for a KernelGym parquet: each row's difficulty (from its
    extra_info) and the keywords. `params`: `Curriculum` parameters (start, window, promote,
    demote, min/max_difficulty) and ``group_threshold``; the window defaults to
    ``data.train_batch_size`` (one move per step)."""
    difficulties = [(info or {}).get("difficulty") for info in frame["extra_info"]]
    params = dict(params or {})
    params.setdefault("window", int(_get(data_config, "train_batch_size", 20) or 20))
    threshold = float(params.pop("group_threshold", 0.5))
    seed = _get(data_config, "seed", 0)
    return difficulties, {"seed": int(seed or 0), "group_threshold": threshold, **params}


class KernelGymCurriculumDataset(RLHFDataset):
    """verl's RL dataset over a KernelGym parquet whose rows come at the curriculum's difficulty.

    The loader's index only paces the epoch: each item is a row drawn at the current difficulty,
    and `on_batch_end` (called by verl's trainer after every step) feeds the batch's results to
    the curriculum. ``data.curriculum`` takes the `Curriculum` parameters and ``group_threshold``.
    """

    def __init__(self, data_files: Any, tokenizer: Any, config: Any, processor: Any = None, **kwargs: Any):
        super().__init__(data_files, tokenizer, config, processor, **kwargs)
        difficulties, kw = _curriculum_args(self.dataframe, config, _get(config, "curriculum", {}))
        self.curriculum = CurriculumSampler(difficulties, **kw)

    def __getitem__(self, item: int) -> Any:
        return super().__getitem__(self.curriculum.draw())

    def on_batch_end(self, batch: Any) -> None:
        self.curriculum.update(batch)


if AbstractCurriculumSampler is not None:

    class KernelGymCurriculumSampler(CurriculumSampler, AbstractCurriculumSampler):
        """verl < 0.9's curriculum sampler hook over a KernelGym parquet (``data.sampler``); verl
        calls `update(batch)` after each step. Parameters as `KernelGymCurriculumDataset`'s, under
        ``data.sampler.curriculum``."""

        def __init__(self, data_source: Any, data_config: Any) -> None:
            frame = getattr(data_source, "dataframe", data_source)
            difficulties, kw = _curriculum_args(frame, data_config,
                                                _get(_get(data_config, "sampler", {}), "curriculum", {}))
            CurriculumSampler.__init__(self, difficulties, **kw)


__all__ = ["ADV_ESTIMATOR", "AGENT_LOOP", "KernelGymAgentLoop", "KernelGymCurriculumDataset"]
