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


PRIMARIES = ["kernelgym_7b_grpo", "kernelgym_7b_drpo", "kernelgym_7b_multiturn", "kernelgym_tiny_1gpu"]


def test_configs_reference_real_objects():
    # Hydra takes hydra.searchpath from the primary config only: shared bodies must not carry it.
    for name in PRIMARIES + ["sft_7b"]:
        assert _load(f"{name}.yaml")["hydra"]["searchpath"] == ["pkg://verl.trainer.config"], name
    for name in ("kernelgym_7b_base", "kernelgym_drpo"):
        assert "hydra" not in _load(f"{name}.yaml"), name
    assert _load("kernelgym_7b_grpo.yaml")["defaults"] == ["kernelgym_7b_base", "_self_"]
    assert _load("kernelgym_7b_drpo.yaml")["defaults"] == ["kernelgym_7b_base", "kernelgym_drpo", "_self_"]
    grpo = _load("kernelgym_7b_base.yaml")
    assert grpo["defaults"] == ["ppo_trainer", "_self_"] and grpo["algorithm"]["adv_estimator"] == "grpo"
    assert "custom_reward_function" not in grpo   # verl 0.9's main_ppo reads reward.custom_reward_function
    crf = grpo["reward"]["custom_reward_function"]
    fn = _obj(crf["path"], crf["name"])
    assert callable(fn)
    from train.verl.reward import _OPTIONS

    assert set(crf["reward_kwargs"]) <= _OPTIONS
    assert grpo["data"]["custom_cls"] == {"path": "pkg://train.verl.register", "name": "KernelGymCurriculumDataset"}
    assert "class KernelGymCurriculumDataset" in (CONFIGS.parent / "verl" / "register.py").read_text()
    assert set(grpo["data"]["curriculum"]) <= {"start", "window", "promote", "demote", "min_difficulty",
                                               "max_difficulty", "group_threshold"}
    assert grpo["data"]["dataloader_num_workers"] == 0  # the curriculum state lives in the trainer
    drpo = _load("kernelgym_drpo.yaml")
    assert drpo["algorithm"]["adv_estimator"] == "kernelgym_drpo" and set(drpo["algorithm"]["drpo"]) <= set(DRPO_DEFAULTS)
    assert drpo["algorithm"]["use_kl_in_reward"] is False
    tiny = _load("kernelgym_tiny_1gpu.yaml")
    assert tiny["trainer"]["n_gpus_per_node"] == 1 and tiny["defaults"][0] == "kernelgym_7b_base"
    assert _load("kernelgym_7b_multiturn.yaml")["actor_rollout_ref"]["rollout"]["agent"]["default_agent_loop"] \
        == "kernelgym_multiturn"
    inter = _load("interaction.yaml")["interaction"][0]
    module, cls = inter["class_name"].rsplit(".", 1)
    klass = _obj(module, cls)
    klass(inter["config"])  # options accepted
    sft = _load("sft_7b.yaml")
    assert sft["defaults"][0] == "sft_trainer_engine" and sft["data"]["messages_key"] == "messages"


def test_configs_compose_with_verls_own():
    """Hydra composes every config over verl's installed config tree, and verl's loader finds the
    reward function (needs verl and hydra: skipped where they are not installed)."""
    pytest.importorskip("verl")
    hydra = pytest.importorskip("hydra")
    from verl.trainer.ppo.reward import get_custom_reward_fn

    with hydra.initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        for name in PRIMARIES:
            cfg = hydra.compose(config_name=name)
            assert cfg.data.custom_cls.name == "KernelGymCurriculumDataset", name
            assert callable(get_custom_reward_fn(cfg)), name
        assert hydra.compose(config_name="kernelgym_7b_drpo").algorithm.adv_estimator == "kernelgym_drpo"
        multi = hydra.compose(config_name="kernelgym_7b_multiturn")
        assert multi.actor_rollout_ref.rollout.agent.default_agent_loop == "kernelgym_multiturn"
        assert hydra.compose(config_name="kernelgym_tiny_1gpu").trainer.n_gpus_per_node == 1
        assert hydra.compose(config_name="sft_7b").data.messages_key == "messages"


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
    if hasattr(reg, "KernelGymCurriculumSampler"):   # verl < 0.9's sampler hook
        sampler = reg.KernelGymCurriculumSampler({"extra_info": [{"difficulty": 2}, {"difficulty": 1}]},
                                                 {"train_batch_size": 4, "sampler": {"curriculum": {"start": 1}}})
        assert list(sampler) == [1, 1] and sampler.curriculum.window == 4


class _Batch:
    """What `on_batch_end` reads of a verl DataProto: the reward extras and the group ids."""

    def __init__(self, correct, uid):
        self.non_tensor_batch = {"correct": np.asarray(correct, dtype=float), "uid": np.asarray(uid)}
        self.batch = None


def test_curriculum_dataset_with_verl(tmp_path):
    """verl's own RLHFDataset under the curriculum: rows come at the current difficulty, and a
    batch of solved prompts (verl's on_batch_end) moves the next rows up a level."""
    pytest.importorskip("verl")
    from omegaconf import OmegaConf

    import train.verl.register as reg
    from train.build_dataset import sampled_tasks, task_row, write_parquet

    tasks = sampled_tasks([1, 2], n=3, seed=0)
    path = write_parquet([task_row(t, i, "train") for i, t in enumerate(tasks)], tmp_path / "train.parquet")
    config = OmegaConf.create({"filter_overlong_prompts": False, "train_batch_size": 2, "cache_dir": str(tmp_path),
                               "curriculum": {"start": 1, "promote": 0.5, "demote": 0.0}})
    ds = reg.KernelGymCurriculumDataset(str(path), None, config)
    assert len(ds) == 6 and {ds[i]["extra_info"]["difficulty"] for i in range(10)} == {1}
    assert ds[0]["raw_prompt"][-1]["role"] == "user"
    ds.on_batch_end(_Batch([1, 1, 1, 1], ["a", "a", "b", "b"]))   # two prompts, both solved
    assert ds.curriculum.curriculum.difficulty == 2
    assert {ds[i]["extra_info"]["difficulty"] for i in range(10)} == {2}


class _TemplateTokenizer:
    """apply_chat_template with a system prefix every conversation starts with (as Qwen's)."""

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=True, **kw):
        ids = [1, 2]   # the system prompt templates prepend
        for m in messages:
            if m:
                ids += [3] + [ord(c) for c in m["content"]] + [4]
        return {"input_ids": ids + ([5] if add_generation_prompt else [])}


def test_follow_up_turn_ids_drop_the_system_prefix():
    pytest.importorskip("verl")
    from train.verl.register import _follow_up_ids

    ids = _follow_up_ids(_TemplateTokenizer(), [{"role": "user", "content": "ab"}], {})
    assert ids == [3, ord("a"), ord("b"), 4, 5]


def _byte_tokenizer():
    """A real HF fast tokenizer over bytes (no download) with a plain chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(pre_tokenizers.ByteLevel.alphabet())}, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(["<eos>", "<pad>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<pad>")
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    return tok


def test_multiturn_agent_loop_inside_verl():
    """verl's own AgentLoopBase machinery (Continuous Token prompt building, output validation)
    around KernelGym's loop, with a fake rollout server: a first reply without Triton is judged
    hack_detected and its feedback comes back as a masked user turn; the compiler's kernel in the
    second reply ends the episode with reward 1."""
    pytest.importorskip("verl")
    compiler = pytest.importorskip("policies.compiler")
    import asyncio

    from omegaconf import OmegaConf
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap
    from verl.utils.dataset.rl_dataset import RLHFDataset
    from verl.workers.rollout.replica import TokenOutput

    import train.verl.register as reg
    from train.build_dataset import sampled_tasks, task_row

    tok = _byte_tokenizer()
    task = sampled_tasks([1], 1, seed=2)[0]
    row = task_row(task, 0, "train", multi_turn=True)
    replies = ["```python\nimport torch\nclass ModelNew(torch.nn.Module):\n    pass\n```",
               "```python\n" + compiler.CompilerPolicy().compile(task) + "\n```"]
    prompts = []

    class Server:
        async def generate(self, request_id, prompt_ids, sampling_params, **kw):
            prompts.append(tok.decode(prompt_ids))
            return TokenOutput(token_ids=tok.encode(replies[len(prompts) - 1], add_special_tokens=False))

    cfg = OmegaConf.create({"actor_rollout_ref": {"rollout": {"prompt_length": 4096, "response_length": 8192}},
                            "kernelgym": {"multiturn": {"max_turns": 3, "backend": "interpret", "workers": 1}}})

    async def main():   # verl's loop binds the running event loop when it is built
        loop = reg.KernelGymAgentLoop(DictConfigWrap(cfg), Server(), tok, None, RLHFDataset,
                                      DictConfigWrap(OmegaConf.create({})))
        return await loop.run({"temperature": 1.0}, raw_prompt=row["prompt"], reward_model=row["reward_model"],
                              extra_info=row["extra_info"])

    out = asyncio.run(main())
    assert out.reward_score == 1.0 and out.extra_fields["turn_scores"] == [-1.0, 1.0]
    assert len(prompts) == 2 and "guard:no_triton_kernel" in prompts[1] and prompts[1].endswith("<assistant>")
    feedback = len(out.response_ids) - sum(out.response_mask)
    assert feedback > 0 and out.response_mask[0] == 1 and out.response_mask[-1] == 1   # feedback masked out
    assert tok.decode(out.prompt_ids).startswith("<user>")


def test_sft_parquet_reads_in_verls_sft_dataset(evaluator, tmp_path):
    """The warm-up SFT parquet (`build_dataset --sft`) goes through verl's own SFT dataset with the
    data config of `sft_7b.yaml`: the assistant turn, the accepted kernel, is what the loss sees.
    Needs a verl whose SFT dataset imports beside the installed transformers."""
    pytest.importorskip("pandas")
    hydra = pytest.importorskip("hydra")
    try:
        from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset
    except ImportError as exc:   # verl absent, or verl 0.9.1 beside transformers >= 5.11
        pytest.skip(f"verl's SFT dataset does not import here: {exc}")
    from tests._kernels import RELU
    from tests._tokenizer import char_tokenizer
    from train.build_dataset import sft_rows, write_parquet

    class KnownGood:
        def propose(self, task, n=1, history=()):
            return [RELU]

    from kernelgym.sampler import TaskSampler

    tasks = [TaskSampler("tiny").sample(1, s, ops=["relu"]) for s in range(2)]
    rows, stats = sft_rows(tasks, KnownGood(), n=1, backend="interpret", evaluator=evaluator)
    assert stats["tasks_with_solution"] == 2
    path = write_parquet(rows, tmp_path / "sft_train.parquet")
    with hydra.initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        data = hydra.compose(config_name="sft_7b").data
    tok = char_tokenizer()
    ds = MultiTurnSFTDataset(parquet_files=str(path), tokenizer=tok, config=data)
    assert len(ds) == 2
    item = ds[0]
    ids, mask = item["input_ids"], item["loss_mask"]
    assert ids.shape == mask.shape and 0 < len(ids) < data.max_length   # whole, not truncated
    learned = tok.decode(ids[mask.bool()])
    assert "class ModelNew" in learned and "@triton.jit" in learned
    assert rows[0]["extra_info"]["task_id"] not in learned and "Model(nn.Module)" not in learned
