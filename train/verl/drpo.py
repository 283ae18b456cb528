"""Decoupled reward policy optimisation (DRPO, arXiv 2510.04474) as group advantages: pure numpy.

DRPO's objective for one prompt q with a group of rollouts is discriminative: raise the correct
rollouts, lower the incorrect ones, and let the secondary reward (here the kernel's speed; in the
paper the length) only decide *how* the raise is shared among the correct rollouts:

    J(q) = sum_{correct o} w(o|q) s(o)  -  sum_{incorrect o} v(o|q) s(o)
    w(o|q) = exp(r_s(o|q) / lam) / sum_{correct o'} exp(r_s(o'|q) / lam)

with s(o) the (length-normalised) log-likelihood of o. w is the closed-form optimum of the
KL-regularised "best positive distribution" in the paper; v is uniform over the incorrect
rollouts there (DisCO's mean form, the large-tau limit of its log-sum-exp). Read as a REINFORCE
advantage, rollout o gets  A(o) = k * w(o|q)  if correct and  A(o) = -k * v(o|q)  otherwise, so
every correct rollout, however slow, keeps a positive advantage and every incorrect one a
negative advantage: speed never pushes a correct kernel below an incorrect one. (GRPO on the
summed reward correctness + speed can: a slow correct kernel can land below the group mean.)

Choices beyond the paper, each a parameter:
- `neg_weights` (e.g. 1 + hack flag) share the push-down unevenly among incorrect rollouts
  (hacks get more of it); the default is the paper's uniform share.
- `scale="grpo"` sets k = n p (1 - p) / (std + eps), p = the group's success rate and std the
  unbiased std of its 0/1 correctness: with equal speeds and uniform `neg_weights` this reproduces
  verl's GRPO advantages on the binary correctness reward exactly, so the two are comparable at
  the same learning rate. `scale="none"` keeps k = 1 (weights summing to +1 / -1 per group).
- Groups with no incorrect rollout carry no discriminative signal: `all_correct="zero"` (the
  paper drops them) or `"center"`: A = n w - 1 (mean zero), so among all-correct groups the
  faster kernels still gain at the slower ones' expense. Groups with no correct rollout get 0.

The math is numpy (torch only inside `drpo_outcome_advantage`, the adapter with verl's
estimator signature), so it is tested without verl; `train.verl.register` registers the adapter.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

SCALES = ("grpo", "none")
ALL_CORRECT = ("zero", "center")


def speed_weights(speed: np.ndarray, lam: float) -> np.ndarray:
    """Softmax of speed / lam (numerically stable): the share of each correct rollout."""
    if not lam > 0:
        raise ValueError(f"lam must be > 0, got {lam!r}")
    z = np.asarray(speed, dtype=np.float64) / lam
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


def group_ids(index: Sequence[Hashable] | np.ndarray) -> np.ndarray:
    """Consecutive integer ids for arbitrary group labels (uids are strings in verl)."""
    ids: dict[Hashable, int] = {}
    return np.asarray([ids.setdefault(k if not isinstance(k, np.ndarray) else k.item(), len(ids))
                       for k in index], dtype=np.int64)


def drpo_advantages(correct: Sequence[bool] | np.ndarray, speed: Sequence[float] | np.ndarray,
                    index: Sequence[Hashable] | np.ndarray, lam: float = 1.0, *,
                    neg_weights: Sequence[float] | np.ndarray | None = None, scale: str = "grpo",
                    all_correct: str = "zero", eps: float = 1e-6) -> np.ndarray:
    """Per-rollout DRPO advantages (float64, shape (n,)); see the module docstring for the math.

    correct: whether each rollout is correct (status ok). speed: its speed reward (e.g. the
    clipped log2 speedup; used only for correct rollouts, non-finite values count as 0, as an
    untimed kernel gets no speed reward). index: the group (prompt) of each rollout. lam: the
    temperature of the speed weights (small: the fastest takes nearly all; large: uniform).
    neg_weights: positive weights sharing the push-down among incorrect rollouts (default uniform).
    """
    correct = np.asarray(correct, dtype=bool).reshape(-1)
    speed = np.asarray(speed, dtype=np.float64).reshape(-1)
    n = correct.shape[0]
    if speed.shape[0] != n or len(index) != n:
        raise ValueError(f"correct, speed and index must have the same length, got {n}, {speed.shape[0]}, "
                         f"{len(index)}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if all_correct not in ALL_CORRECT:
        raise ValueError(f"all_correct must be one of {ALL_CORRECT}, got {all_correct!r}")
    if not lam > 0:
        raise ValueError(f"lam must be > 0, got {lam!r}")
    if neg_weights is None:
        neg = np.ones(n)
    else:
        neg = np.asarray(neg_weights, dtype=np.float64).reshape(-1)
        if neg.shape[0] != n:
            raise ValueError(f"neg_weights must have length {n}, got {neg.shape[0]}")
        if not (np.isfinite(neg).all() and (neg > 0).all()):
            raise ValueError("neg_weights must be finite and > 0")
    speed = np.where(np.isfinite(speed), speed, 0.0)
    gid = group_ids(index)
    adv = np.zeros(n)
    for g in np.unique(gid):
        members = np.flatnonzero(gid == g)
        pos, negs = members[correct[members]], members[~correct[members]]
        size = len(members)
        if len(pos) == 0:
            continue
        w = speed_weights(speed[pos], lam)
        if len(negs) == 0:
            if all_correct == "center":
                adv[pos] = size * w - 1.0
            continue
        if scale == "grpo":
            p = len(pos) / size
            std = np.std(correct[members].astype(np.float64), ddof=1)
            k = size * p * (1.0 - p) / (std + eps)
        else:
            k = 1.0
        adv[pos] = k * w
        adv[negs] = -k * neg[negs] / neg[negs].sum()
    return adv


def grpo_advantages(scores: Sequence[float] | np.ndarray, index: Sequence[Hashable] | np.ndarray,
                    eps: float = 1e-6, norm_by_std: bool = True) -> np.ndarray:
    """GRPO's outcome advantages on one scalar score per rollout, as verl computes them
    ((r - mean) / (unbiased std + eps) per group; 0 for a group of one): the comparison baseline."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(index) != scores.shape[0]:
        raise ValueError("scores and index must have the same length")
    gid = group_ids(index)
    adv = np.zeros_like(scores)
    for g in np.unique(gid):
        m = np.flatnonzero(gid == g)
        if len(m) < 2:
            continue
        centred = scores[m] - scores[m].mean()
        adv[m] = centred / (np.std(scores[m], ddof=1) + eps) if norm_by_std else centred
    return adv


def decode_scores(scores: Sequence[float] | np.ndarray, correct_bonus: float = 1.0) -> tuple[np.ndarray, np.ndarray,
                                                                                          np.ndarray]:
    """(correct, speed, hacked) from summed decoupled rewards alone, for trainers that pass the
    estimator only the scalar score.

    Exact when every correct rollout scores above 0 and every incorrect one at most 0, i.e. the
    decoupled reward with hack_penalty >= 0 and correct_bonus + speed_weight * speed_min > 0
    (`train.verl.reward` checks this for its reward): then correct <=> score > 0,
    speed = score - correct_bonus, hacked <=> score < 0.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    correct = s > 0
    return correct, np.where(correct, s - correct_bonus, 0.0), s < 0




DRPO_DEFAULTS = {"lam": 1.0, "scale": "grpo", "all_correct": "zero", "hack_weight": 1.0, "correct_bonus": 1.0}


def drpo_outcome_advantage(token_level_rewards, response_mask, index=None, config=None, non_tensor_batch=None,
                           **kwargs):
    """DRPO with verl's advantage-estimator signature: ((bs, T) advantages, returns), torch in and out.

    Correctness, speed and hack flags come from `non_tensor_batch` (the reward extras ``correct``,
    ``reward/speed``, ``hack``) when the trainer passes it, else from the summed score through
    `decode_scores` (which needs the scores unchanged by an in-reward KL penalty). Parameters come
    from ``config.drpo`` (``algorithm.drpo`` in verl): lam, scale, all_correct, hack_weight (negatives
    that hacked get 1 + hack_weight times the push-down), correct_bonus.
    """
    import torch

    cfg = config if config is not None else {}
    params = {**DRPO_DEFAULTS, **dict(cfg.get("drpo", None) or {})}
    unknown = set(params) - set(DRPO_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown algorithm.drpo option(s) {sorted(unknown)}; accepted: {sorted(DRPO_DEFAULTS)}")
    scores = token_level_rewards.detach().sum(dim=-1).float().cpu().numpy()
    n = scores.shape[0]
    index = np.arange(n) if index is None else index
    ntb = non_tensor_batch or {}
    if "correct" in ntb and "reward/speed" in ntb:
        correct = np.asarray(ntb["correct"], dtype=np.float64).reshape(-1) > 0
        speed = np.asarray(ntb["reward/speed"], dtype=np.float64).reshape(-1)
        hacked = (np.asarray(ntb["hack"], dtype=np.float64).reshape(-1) > 0 if "hack" in ntb
                  else np.zeros(n, dtype=bool))
    else:
        if cfg.get("use_kl_in_reward", False):
            raise ValueError("DRPO reads correctness from the score, which an in-reward KL penalty changes: "
                             "set algorithm.use_kl_in_reward=false (use actor.use_kl_loss instead)")
        correct, speed, hacked = decode_scores(scores, float(params["correct_bonus"]))
    adv = drpo_advantages(correct, speed, index, float(params["lam"]),
                          neg_weights=1.0 + float(params["hack_weight"]) * hacked.astype(np.float64),
                          scale=params["scale"], all_correct=params["all_correct"])
    adv_t = torch.as_tensor(adv, dtype=token_level_rewards.dtype, device=token_level_rewards.device)
    adv_t = adv_t.unsqueeze(-1) * response_mask
    return adv_t, adv_t


__all__ = ["ALL_CORRECT", "DRPO_DEFAULTS", "SCALES", "decode_scores", "drpo_advantages", "drpo_outcome_advantage",
           "group_ids", "grpo_advantages", "speed_weights"]
