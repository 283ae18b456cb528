"""verl glue: the configs point at things that exist; the registrations work when verl is installed."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch

from train.verl.drpo import DRPO_DEFAULTS, drpo_advantages

CONFIGS = Path(__file__).resolve().parents[2] / "train" / "configs"


def _load(name):
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((CONFIGS / name).read_text())


def _obj(path: str, name: str):
    return getattr(importlib.import_module(path.removeprefix("pkg://")), name)


def test_configs_reference_real_objects():
    grpo = _load("kernelgym_7b_grpo.yaml")
    assert grpo["defaults"] == ["ppo_trainer", "_self_"] and grpo["algorithm"]["adv_estimator"] == "grpo"
    crf = grpo["custom_reward_function"]
    fn = _obj(crf["path"], crf["name"])
    assert callable(fn)
    from train.verl.reward import _OPTIONS

    assert set(crf["reward_kwargs"]) <= _OPTIONS
    assert grpo["data"]["sampler"]["class_name"] == "KernelGymCurriculumSampler"
    assert "class KernelGymCurriculumSampler" in (CONFIGS.parent / "verl" / "register.py").read_text()
    assert grpo["data"]["dataloader_num_workers"] == 0  # verl requires it with a curriculum sampler
    drpo = _load("kernelgym_7b_drpo.yaml")
    assert drpo["algorithm"]["adv_estimator"] == "kernelgym_drpo" and set(drpo["algorithm"]["drpo"]) <= set(DRPO_DEFAULTS)
    assert drpo["algorithm"]["use_kl_in_reward"] is False
    tiny = _load("kernelgym_tiny_1gpu.yaml")
    assert tiny["trainer"]["n_gpus_per_node"] == 1 and tiny["defaults"][0] == "kernelgym_7b_grpo"
    assert _load("kernelgym_7b_multiturn.yaml")["actor_rollout_ref"]["rollout"]["agent"]["default_agent_loop"] \
        == "kernelgym_multiturn"
    inter = _load("interaction.yaml")["interaction"][0]
    module, cls = inter["class_name"].rsplit(".", 1)
    klass = _obj(module, cls)
    klass(inter["config"])  # options accepted
    assert _load("sft_7b.yaml")["data"]["response_key"] == "response"


def test_registration_with_verl():
    pytest.importorskip("verl")
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    import train.verl.register as reg

    fn = get_adv_estimator_fn(reg.ADV_ESTIMATOR)
    scores = torch.zeros(4, 3)
    scores[:, -1] = torch.tensor([2.0, 1.0, 0.0, 0.0])
    adv, _ = fn(token_level_rewards=scores, response_mask=torch.ones(4, 3), index=np.array(["a"] * 4),
                config={"drpo": {"scale": "none"}})
    np.testing.assert_allclose(adv[:, 0].numpy(), drpo_advantages([1, 1, 0, 0], [1.0, 0.0, 0, 0], [0] * 4,
                                                                   scale="none"), rtol=1e-6)
    importlib.reload(reg)  # registering twice is harmless
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry

    assert reg.AGENT_LOOP in _agent_loop_registry
    sampler = reg.KernelGymCurriculumSampler({"extra_info": [{"difficulty": 2}, {"difficulty": 1}]},
                                             {"train_batch_size": 4, "sampler": {"curriculum": {"start": 1}}})
    assert list(sampler) == [1, 1] and sampler.curriculum.window == 4
