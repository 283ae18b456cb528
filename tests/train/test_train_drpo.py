"""DRPO advantages: hand-computed values, the 'slow correct never below incorrect' property, the
GRPO equivalence at equal speeds, score decoding and the verl-signature adapter."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from train.verl.drpo import decode_scores, drpo_advantages, drpo_outcome_advantage, grpo_advantages

E = math.e


def test_hand_computed_two_correct_two_incorrect():
    # speeds 1 and 0 among the correct, lam 1: weights e/(e+1) and 1/(e+1); incorrect share -1 equally.
    adv = drpo_advantages([1, 1, 0, 0], [1.0, 0.0, 5.0, -3.0], [0, 0, 0, 0], 1.0, scale="none")
    np.testing.assert_allclose(adv, [E / (E + 1), 1 / (E + 1), -0.5, -0.5], rtol=1e-12)
    # scale="grpo": k = n p (1-p) / std = 4 * 0.25 / sqrt(1/3)
    k = 1.0 / (math.sqrt(1 / 3) + 1e-6)
    adv = drpo_advantages([1, 1, 0, 0], [1.0, 0.0, 5.0, -3.0], ["q", "q", "q", "q"], 1.0)
    np.testing.assert_allclose(adv, [k * E / (E + 1), k / (E + 1), -k / 2, -k / 2], rtol=1e-9)


def test_hand_computed_lambda_and_groups():
    # lam 0.5 doubles the exponent: weights e^2/(e^2+1), 1/(e^2+1); a second group is independent.
    adv = drpo_advantages([1, 1, 0, 1, 0, 0], [1.0, 0.0, 0.0, 2.0, 0.0, 0.0], ["a", "a", "a", "b", "b", "b"], 0.5,
                          scale="none")
    np.testing.assert_allclose(adv, [E**2 / (E**2 + 1), 1 / (E**2 + 1), -1.0, 1.0, -0.5, -0.5], rtol=1e-12)


def test_hack_weights_share_the_push_down():
    adv = drpo_advantages([1, 0, 0], [0.0, 0.0, 0.0], [0, 0, 0], neg_weights=[1.0, 2.0, 1.0], scale="none")
    np.testing.assert_allclose(adv, [1.0, -2 / 3, -1 / 3])


def test_groups_without_contrast():
    # all incorrect: no signal; all correct: zero (paper) or centred speed preference.
    assert drpo_advantages([0, 0], [0, 0], [0, 0]).tolist() == [0.0, 0.0]
    assert drpo_advantages([1, 1], [1.0, 0.0], [0, 0]).tolist() == [0.0, 0.0]
    c = drpo_advantages([1, 1], [1.0, 0.0], [0, 0], all_correct="center")
    np.testing.assert_allclose(c, [2 * E / (E + 1) - 1, 2 / (E + 1) - 1])
    assert c.sum() == pytest.approx(0.0, abs=1e-12)


def test_equal_speeds_reproduce_grpo_on_correctness():
    rng = np.random.default_rng(0)
    correct = rng.integers(0, 2, 40).astype(bool)
    index = np.repeat(np.arange(5), 8)
    drpo = drpo_advantages(correct, np.zeros(40), index)
    np.testing.assert_allclose(drpo, grpo_advantages(correct.astype(float), index), rtol=1e-9, atol=1e-12)


def test_grpo_on_summed_reward_can_push_a_slow_correct_kernel_down_drpo_does_not():
    # correct+slow (score 1 - 0.5), correct+fast (1 + 3), two incorrect (0): the slow one is below the mean.
    correct, speed = [1, 1, 0, 0], [-0.5, 3.0, 0.0, 0.0]
    summed = [1 - 0.5, 1 + 3.0, 0.0, 0.0]
    assert grpo_advantages(summed, [0] * 4)[0] < 0
    adv = drpo_advantages(correct, speed, [0] * 4)
    assert adv[0] > 0 > adv[2] and adv[1] > adv[0]


def test_nonfinite_speed_counts_as_zero_and_bad_input_raises():
    a = drpo_advantages([1, 1, 0], [float("nan"), 0.0, 0.0], [0, 0, 0], scale="none")
    np.testing.assert_allclose(a, [0.5, 0.5, -1.0])
    with pytest.raises(ValueError, match="same length"):
        drpo_advantages([1, 0], [0.0], [0, 0])
    with pytest.raises(ValueError, match="lam"):
        drpo_advantages([1, 0], [0, 0], [0, 0], lam=0)
    with pytest.raises(ValueError, match="scale"):
        drpo_advantages([1, 0], [0, 0], [0, 0], scale="bogus")
    with pytest.raises(ValueError, match="neg_weights"):
        drpo_advantages([1, 0], [0, 0], [0, 0], neg_weights=[1, -1])


rollout = st.tuples(st.booleans(), st.floats(-1.0, 3.0), st.booleans())


@settings(max_examples=200, deadline=None)
@given(st.lists(rollout, min_size=2, max_size=12).filter(lambda g: any(c for c, _, _ in g)
                                                          and not all(c for c, _, _ in g)),
       st.floats(0.05, 20.0), st.sampled_from(["grpo", "none"]))
def test_slow_correct_never_below_incorrect(group, lam, scale):
    correct = [c for c, _, _ in group]
    speed = [s for _, s, _ in group]
    hack = [1.0 + float(h and not c) for c, _, h in group]
    adv = drpo_advantages(correct, speed, [7] * len(group), lam, neg_weights=hack, scale=scale)
    pos = [a for a, c in zip(adv, correct) if c]
    neg = [a for a, c in zip(adv, correct) if not c]
    assert min(pos) > 0 > max(neg)
    # the correct rollouts share +k and the incorrect -k: correctness alone sets the balance
    assert sum(pos) == pytest.approx(-sum(neg), rel=1e-9)
    # among the correct, faster never gets less
    ranked = sorted((s, a) for a, s, c in zip(adv, speed, correct) if c)
    assert all(a1 <= a2 + 1e-12 for (_, a1), (_, a2) in itertools.pairwise(ranked))


def test_decode_scores():
    correct, speed, hacked = decode_scores([1.5, 0.5, 0.0, -1.0, 4.0])
    assert correct.tolist() == [True, True, False, False, True]
    np.testing.assert_allclose(speed, [0.5, -0.5, 0.0, 0.0, 3.0])
    assert hacked.tolist() == [False, False, False, True, False]


def _tokens(scores, length=5):
    rewards = torch.zeros(len(scores), length)
    mask = torch.ones(len(scores), length)
    for i, s in enumerate(scores):
        valid = 3 + i % 3
        rewards[i, valid - 1] = s
        mask[i, valid:] = 0
    return rewards, mask


def test_verl_signature_from_scores():
    # decoupled scores: 2.0 = correct with speed 1; 1.0 = correct speed 0; 0 incorrect; -1 hack
    rewards, mask = _tokens([2.0, 1.0, 0.0, -1.0])
    index = np.array(["u1"] * 4, dtype=object)
    adv, ret = drpo_outcome_advantage(rewards, mask, index=index, config={"drpo": {"scale": "none"}})
    expect = [E / (E + 1), 1 / (E + 1), -1 / 3, -2 / 3]  # hack weight 1: the hacked one takes twice
    assert adv.shape == rewards.shape and torch.equal(adv, ret)
    np.testing.assert_allclose((adv * mask).sum(-1).numpy() / mask.sum(-1).numpy(), expect, rtol=1e-6)
    assert torch.all(adv[mask == 0] == 0)


def test_verl_signature_prefers_reward_extras_and_checks_config():
    rewards, mask = _tokens([0.3, 0.3, 0.3])  # scores say nothing useful: the extras decide
    ntb = {"correct": np.array([1.0, 0.0, 1.0]), "reward/speed": np.array([0.0, 0.0, 1.0]),
           "hack": np.array([0.0, 0.0, 0.0])}
    adv, _ = drpo_outcome_advantage(rewards, mask, index=np.zeros(3), config={"drpo": {"scale": "none"}},
                                    non_tensor_batch=ntb)
    row = (adv.sum(-1) / mask.sum(-1)).numpy()
    np.testing.assert_allclose(row, [1 / (E + 1), -1.0, E / (E + 1)], rtol=1e-6)
    with pytest.raises(ValueError, match="use_kl_in_reward"):
        drpo_outcome_advantage(rewards, mask, index=np.zeros(3), config={"use_kl_in_reward": True})
    with pytest.raises(ValueError, match="unknown algorithm.drpo"):
        drpo_outcome_advantage(rewards, mask, index=np.zeros(3), config={"drpo": {"lamda": 1}})
