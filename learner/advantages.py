"""Advantages over a complete group of n responses (ALGORITHMS.md §1-§3).

`group_advantage` decides, per group, what signal it carries: GRPO's normalised reward for a group whose
rewards differ; for a zero-variance group either nothing (GRPO/DAPO), ERPO's Reactivation Advantage,
or RL-ZVP's entropy-shaped token advantages (filled in by the trainer once it has the entropies).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.config import Config


def grpo(rewards: torch.Tensor, eps: float = 1e-6, unbiased: bool = True) -> torch.Tensor:
    """GRPO, ALGORITHMS.md §1:  A_j = (R_j - mean(R)) / (std(R) + eps).

    `unbiased` (default, `advantage.std = "unbiased"`): std divides by n - 1, as verl and TRL compute it
    and so as the DAPO, ERPO and RL-ZVP experiments ran; else by n (population). A zero-variance group
    gets A = 0 exactly.
    """
    if rewards.dim() != 1 or rewards.numel() < 2:
        raise ValueError("grpo needs a 1-D tensor of at least two rewards (one complete group)")
    centred = rewards - rewards.mean()
    return centred / (rewards.std(unbiased=unbiased) + eps)


def reactivation(rewards: torch.Tensor, m: int, r_virtual: float, eps: float = 1e-6,
                 unbiased: bool = True) -> torch.Tensor:
    """ERPO Reactivation Advantage, ALGORITHMS.md §2: normalise each real reward against the group
    extended by m virtual responses of reward r_virtual,
        A_j = (R_j - mean(R ∪ V)) / (std(R ∪ V) + eps),   V = {r_virtual} x m.
    For n ones, m = 1, r_virtual = 0:  A_j = 1/sqrt(n + 1) with the unbiased std, 1/sqrt(n) with the
    population std."""
    extended = torch.cat([rewards, torch.full((m,), float(r_virtual), dtype=rewards.dtype)])
    return (rewards - extended.mean()) / (extended.std(unbiased=unbiased) + eps)


def zvp_token_advantages(entropy: torch.Tensor, positive: bool, alpha: float) -> torch.Tensor:
    """RL-ZVP, ALGORITHMS.md §3 (arXiv 2509.21880 Eq. 5), over the tokens of one response:
        positive group:  A_t = alpha * H_t
        negative group:  A_t = -alpha * (max_k H_k - H_t)
    H is detached: it scales the token's advantage and carries no gradient of its own."""
    h = entropy.detach()
    if positive:
        return alpha * h
    return -alpha * (h.max() - h)


def overlong_penalty(length: int, l_max: int, l_cache: int) -> float:
    """DAPO soft overlong punishment, ALGORITHMS.md §1, added to the reward."""
    if length <= l_max - l_cache:
        return 0.0
    if length <= l_max:
        return ((l_max - l_cache) - length) / l_cache
    return -1.0


@dataclass
class GroupAdvantage:
    per_sample: torch.Tensor  # [n] sequence-level advantage, broadcast over tokens
    zvp: int = 0  # +1 / -1: a positive / negative zero-variance group under RL-ZVP (token-level)

    @property
    def has_signal(self) -> bool:
        return self.zvp != 0 or bool(self.per_sample.abs().max() > 0)


def group_advantage(rewards: torch.Tensor, lengths: list[int], cfg: Config) -> GroupAdvantage:
    """The advantage of one complete group; `rewards` are the verifier's {0, 1}.

    Whether the group is zero-variance (and so its kind, and what RA / RL-ZVP / dynamic sampling do
    with it) is decided on the verifier's rewards, before overlong shaping (ALGORITHMS.md §5): a
    correct answer that ran long must not turn a mixed group into an "all-wrong" one."""
    shaped = rewards
    if cfg.dapo.overlong_shaping:
        shaped = rewards + torch.tensor(
            [overlong_penalty(n, cfg.generator.max_tokens, cfg.dapo.overlong_cache) for n in lengths],
            dtype=rewards.dtype)
    eps, unbiased = cfg.advantage.eps, cfg.advantage.std == "unbiased"
    if bool((rewards != rewards[0]).any()):
        return GroupAdvantage(grpo(shaped, eps, unbiased))
    positive = bool((rewards >= 1).all())
    zero = torch.zeros_like(rewards)
    if cfg.advantage.kind == "rlzvp":
        return GroupAdvantage(zero, zvp=1 if positive else -1)
    if cfg.ra.enabled and (positive or cfg.ra.negative):
        r_virtual = cfg.ra.r_virtual if positive else 1.0 - cfg.ra.r_virtual
        return GroupAdvantage(reactivation(shaped, cfg.ra.m, r_virtual, eps, unbiased))
    return GroupAdvantage(zero)
