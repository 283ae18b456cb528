"""Every hydra override that the README, the configs, launch.sh and the train/ docstrings document
composes over the installed verl (skipped where verl is absent), and the ones that name a verl
object (reward manager, advantage estimator, agent loop, dataset class) resolve in verl's own code.
An override of an older verl is listed with the verl versions it applies to and checked only there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "train" / "configs"
DOCUMENTED = [ROOT / "README.md", ROOT / "train" / "launch.sh", *sorted(CONFIGS.glob("*.yaml")),
              *sorted((ROOT / "train").glob("*.py")), *sorted((ROOT / "train" / "verl").glob("*.py"))]
OVERRIDE = re.compile(r"\b((?:algorithm|data|reward_model|reward|actor_rollout_ref|trainer|critic)"
                      r"(?:\.[A-Za-z_0-9]+)+)=([^\s`),\]]+)")

# (config, overrides, verl versions the override is for: "<0.9" or ">=0.9"). Values written as
# placeholders in the docs ("<this file>", "$DATA/...") get real ones here.
CASES = [
    ("kernelgym_7b_drpo", ["trainer.total_epochs=1", "algorithm.drpo.lam=0.5"], ">=0.9"),
    ("kernelgym_tiny_1gpu", ["algorithm.adv_estimator=kernelgym_drpo"], ">=0.9"),
    ("kernelgym_7b_grpo", ["algorithm.adv_estimator=grpo", "algorithm.use_kl_in_reward=false"], ">=0.9"),
    ("kernelgym_7b_grpo", ["data.custom_cls.path=pkg://train.verl.register",
                           "data.custom_cls.name=KernelGymCurriculumDataset", "data.dataloader_num_workers=0",
                           "data.train_files=/tmp/train.parquet", "data.val_files=/tmp/val.parquet"], ">=0.9"),
    ("kernelgym_7b_grpo", ["reward.custom_reward_function.path=train/verl/reward.py",
                           "reward.custom_reward_function.name=compute_score"], ">=0.9"),
    ("kernelgym_7b_multiturn", ["actor_rollout_ref.rollout.agent.default_agent_loop=kernelgym_multiturn"], ">=0.9"),
    ("sft_7b", ["data.messages_key=messages", "data.train_files=/tmp/sft.parquet",
                "data.val_files=/tmp/sft.parquet"], ">=0.9"),
    # verl before 0.9: the sampler hook, the batch reward manager outside the reward loop, interactions.
    ("kernelgym_7b_grpo", ["data.sampler.class_path=pkg://train.verl.register",
                           "data.sampler.class_name=KernelGymCurriculumSampler"], "<0.9"),
    ("kernelgym_7b_grpo", ["reward_model.reward_manager=batch", "reward_model.use_reward_loop=false",
                           "reward.custom_reward_function.name=compute_score_batch"], "<0.9"),
    ("kernelgym_7b_multiturn", ["actor_rollout_ref.rollout.multi_turn.enable=true",
                                "actor_rollout_ref.rollout.multi_turn.interaction_config_path="
                                "train/configs/interaction.yaml",
                                "actor_rollout_ref.rollout.agent.default_agent_loop=tool_agent"], "<0.9"),
    ("sft_7b", ["data.prompt_key=prompt", "data.response_key=response", "data.multiturn.messages_key=messages"],
     "<0.9"),
]


def documented_overrides() -> dict[str, set[str]]:
    """key -> values of every `a.b=c` override written in the documentation and configs."""
    found: dict[str, set[str]] = {}
    for path in DOCUMENTED:
        for key, value in OVERRIDE.findall(path.read_text(encoding="utf-8")):
            found.setdefault(key, set()).add(value.strip("\"'"))
    return found


def test_every_documented_override_is_tested():
    tested = {o.split("=", 1)[0]: o.split("=", 1)[1] for _, overrides, _ in CASES for o in overrides}
    for key, values in documented_overrides().items():
        assert key in tested, f"{key} is documented but not composed by this test: add it to CASES"
        for value in values:   # placeholders ("<this", "$DATA/...") aside, the documented value is tested
            if not value.startswith(("<", "$")) and key not in ("data.train_files", "data.val_files"):
                assert any(o == f"{key}={value}" for _, ovs, _ in CASES for o in ovs), f"{key}={value} untested"


def _verl_version() -> tuple[int, int]:
    verl = pytest.importorskip("verl")
    major, minor = (int(x) for x in verl.__version__.split(".")[:2])
    return major, minor


def _applies(span: str, version: tuple[int, int]) -> bool:
    return version >= (0, 9) if span == ">=0.9" else version < (0, 9)


@pytest.mark.parametrize("config, overrides, span", CASES, ids=[f"{c}:{o[0]}" for c, o, _ in CASES])
def test_documented_override_composes(config, overrides, span):
    version = _verl_version()
    if not _applies(span, version):
        pytest.skip(f"documented for verl {span}; installed {version}")
    hydra = pytest.importorskip("hydra")
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with hydra.initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = hydra.compose(config_name=config, overrides=overrides)
    for o in overrides:
        key, value = o.split("=", 1)
        got = cfg
        for part in key.split("."):
            got = got[part]
        assert str(got).lower() == value.lower(), (key, got)
    if config.startswith("kernelgym_"):
        from verl.trainer.ppo.core_algos import get_adv_estimator_fn

        _register_drpo()

        # The reward manager name is one verl's reward loop registers (read from its source: the
        # reward loop's own imports need the serving stack, which this check does not).
        assert cfg.reward.reward_manager.name in _reward_loop_managers()
        if cfg.algorithm.adv_estimator not in ("grpo", "gae"):
            assert callable(get_adv_estimator_fn(cfg.algorithm.adv_estimator))


def _register_drpo() -> None:
    """What `train.verl.register` does for the estimator (that module also imports verl's agent
    loop, whose serving dependencies this check does not need)."""
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn, register_adv_est

    from train.verl.drpo import drpo_outcome_advantage

    try:
        get_adv_estimator_fn("kernelgym_drpo")
    except ValueError:
        register_adv_est("kernelgym_drpo")(drpo_outcome_advantage)
    assert 'ADV_ESTIMATOR = "kernelgym_drpo"' in (ROOT / "train" / "verl" / "register.py").read_text()


def _verl_file(module: str) -> Path:
    """The source file of a verl module, found without importing it or its packages (their
    __init__ files import the serving stack)."""
    import verl

    path = Path(verl.__file__).parent.joinpath(*module.split(".")[1:])
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _verl_source(module: str) -> str:
    return _verl_file(module).read_text(encoding="utf-8")


def _reward_loop_managers() -> set[str]:
    folder = _verl_file("verl.experimental.reward_loop.reward_manager").parent
    return {name for f in folder.glob("*.py")
            for name in re.findall(r"@register(?:_manager)?\(\"([^\"]+)\"\)", f.read_text(encoding="utf-8"))}


def test_drpo_options_reach_the_estimator_through_verls_compute_advantage():
    """algorithm.drpo sits in `algorithm`, which verl hands to the estimator as its DictConfig:
    both trainers (ray_trainer and the v1 trainer) pass ``config=self.config.algorithm`` and neither
    converts `algorithm` to AlgoConfig (read from their source; importing them needs the serving
    stack), and compute_advantage calls a registered estimator with ``config=config``. Called the
    same way here, the options arrive, with an override, and never meet AlgoConfig's constructor."""
    if _verl_version() < (0, 9):
        pytest.skip("checked against verl >= 0.9")
    hydra = pytest.importorskip("hydra")
    import numpy as np
    import torch
    from hydra.core.global_hydra import GlobalHydra
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    from train.verl.drpo import decode_scores, drpo_advantages

    _register_drpo()

    for module in ("verl.trainer.ppo.ray_trainer", "verl.trainer.ppo.v1.trainer_base"):
        src = _verl_source(module)
        assert "config=self.config.algorithm" in src, module
        assert not re.search(r"omega_conf_to_dataclass\([^)]*algorithm", src), module
    assert '"config": config' in _verl_source("verl.trainer.ppo.ray_trainer")   # compute_advantage's kwargs

    GlobalHydra.instance().clear()
    with hydra.initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = hydra.compose(config_name="kernelgym_7b_drpo", overrides=["algorithm.drpo.lam=0.5"])
    # Two groups of three: correct and fast, correct and slow, incorrect (decoupled scores).
    scores = torch.tensor([1.0 + 1.0, 1.0 - 0.25, -0.1, 1.0 + 0.5, -0.2, 1.0 + 0.0])
    mask = torch.ones(6, 4)
    rewards = torch.zeros(6, 4)
    rewards[:, -1] = scores
    uid = np.array(["a", "a", "a", "b", "b", "b"], dtype=object)
    adv, _ = get_adv_estimator_fn(cfg.algorithm.adv_estimator)(token_level_rewards=rewards, response_mask=mask,
                                                               config=cfg.algorithm, index=uid)
    correct, speed, hacked = decode_scores(scores.numpy(), 1.0)
    want = drpo_advantages(correct, speed, uid, 0.5, neg_weights=1.0 + hacked.astype(float), scale="grpo",
                           all_correct="zero")
    assert np.allclose(adv[:, 0].numpy(), want, atol=1e-6)
    other = drpo_advantages(correct, speed, uid, 1.0, neg_weights=1.0 + hacked.astype(float), scale="grpo",
                            all_correct="zero")
    assert not np.allclose(want, other)   # lam=0.5 made a difference: the override was read
