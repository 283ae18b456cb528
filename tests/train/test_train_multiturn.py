"""Multi-turn refinement on MultiTurn-v0: the verl interaction and the agent-loop turn loop."""

from __future__ import annotations

import asyncio

import pytest

from kernelgym.sampler import TaskSampler
from tests._kernels import RELU, WRONG_RELU
from train.verl.multiturn import KernelGymInteraction, RefinementSession, refine


@pytest.fixture(scope="module")
def task():
    return TaskSampler("tiny").sample(1, 4, ops=["relu"])


def test_interaction_feedback_then_success(evaluator, task):
    inter = KernelGymInteraction({"name": "kernelgym", "max_turns": 3, "backend": "interpret", "evaluator": evaluator})

    async def episode():
        iid = await inter.start_interaction("i1", ground_truth=task.source, task_id=task.id, difficulty=1)
        msgs = [{"role": "user", "content": inter.session(iid).prompt}, {"role": "assistant", "content": WRONG_RELU}]
        first = await inter.generate_response(iid, msgs)
        msgs += [{"role": "user", "content": first[1]}, {"role": "assistant", "content": f"```python\n{RELU}```"}]
        second = await inter.generate_response(iid, msgs)
        score = await inter.calculate_score(iid)
        await inter.finalize_interaction(iid)
        return first, second, score

    first, second, score = asyncio.run(episode())
    done, feedback, reward, extra = first
    assert not done and reward == 0.0 and "incorrect" in feedback and "Attempt 1/3" in feedback
    assert extra["correct"] == 0.0 and "score" in extra
    done, feedback, reward, extra = second
    assert done and reward == 1.0 and extra["correct"] == 1.0 and score == 1.0
    with pytest.raises(KeyError):
        inter.session("i1")
    with pytest.raises(ValueError, match="unknown KernelGymInteraction option"):
        KernelGymInteraction({"max_turn": 3})


def test_refine_token_loop(evaluator, task):
    """Fake model and tokenizer: turn 1 wrong, turn 2 right; feedback tokens are masked out."""
    session = RefinementSession(task, max_turns=3, backend="interpret", evaluator=evaluator)
    replies = iter([WRONG_RELU, RELU])
    vocab: dict[int, str] = {}

    def tok(text):
        vocab[len(vocab) + 1000] = text
        return [len(vocab) + 999, 7, 7]  # one id carrying the text, plus filler

    async def generate(ids):
        return tok(next(replies))

    async def encode(messages, continuation):
        return tok(messages[-1]["content"]) if continuation else [1, 2, 3]

    def decode(ids):
        return vocab[ids[0]]

    res = asyncio.run(refine(session, [{"role": "user", "content": session.prompt}], generate, encode, decode, 100))
    assert res.prompt_ids == [1, 2, 3] and res.success and res.reward == 1.0
    assert res.response_mask == [1, 1, 1, 0, 0, 0, 1, 1, 1] and len(res.response_ids) == 9
    assert res.turn_rewards == [0.0, 1.0] and res.scores["correct"] == 1.0
    with pytest.raises(RuntimeError, match="over"):
        session.submit(RELU)
    session.close()


def test_refine_stops_at_response_length(evaluator, task):
    session = RefinementSession(task, max_turns=5, backend="interpret", evaluator=evaluator)

    async def generate(ids):
        return [5] * 4

    async def encode(messages, continuation):
        return [9] * 10

    res = asyncio.run(refine(session, [], generate, encode, lambda ids: "not code", 6))
    assert len(res.response_ids) == 6 and res.response_mask == [1, 1, 1, 1, 0, 0] and not res.success
    session.close()
