"""Advantages over a complete group of n responses (docs/algorithms.md §1-§3).

`AdvantageRule.of` decides, per group, what signal it carries: GRPO's normalised reward for a mixed
group; for a zero-variance group (all correct or all wrong) either nothing (GRPO/DAPO), ERPO's
Reactivation Advantage, or RL-ZVP's entropy-shaped token advantages (filled in by the trainer once it
has the entropies). The group's outcome is decided once, from the verifier's rewards (`outcome`), and
every other part of the learner reads it from the group.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from pipeline.config import AdvantageConfig, DAPOConfig, ReactivationConfig
from pipeline.scoring import correct


class Outcome(enum.StrEnum):
    """What a complete visit of a prompt came back as: every response correct (residual), none, or some."""

    POSITIVE = "positive"
    NEGATIVE = "negative"
    MIXED = "mixed"


def outcome(rewards: torch.Tensor) -> Outcome:
    """The group's outcome, from the verifier's {0, 1} rewards: the one definition in the learner.
    Zero variance with every reward correct is positive, zero variance otherwise negative."""
    if bool((rewards != rewards[0]).any()):
        return Outcome.MIXED
    return Outcome.POSITIVE if correct(float(rewards[0])) else Outcome.NEGATIVE


def grpo(rewards: torch.Tensor, eps: float = 1e-6, unbiased: bool = True) -> torch.Tensor:
    """GRPO, docs/algorithms.md §1:  A_j = (R_j - mean(R)) / (std(R) + eps).

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
    """ERPO Reactivation Advantage, docs/algorithms.md §2: normalise each real reward against the group
    extended by m virtual responses of reward r_virtual,
        A_j = (R_j - mean(R ∪ V)) / (std(R ∪ V) + eps),   V = {r_virtual} x m.
    For n ones, m = 1, r_virtual = 0:  A_j = 1/sqrt(n + 1) with the unbiased std, 1/sqrt(n) with the
    population std."""
    extended = torch.cat([rewards, torch.full((m,), float(r_virtual), dtype=rewards.dtype)])
    return (rewards - extended.mean()) / (extended.std(unbiased=unbiased) + eps)


def zvp_token_advantages(entropy: torch.Tensor, positive: bool, alpha: float) -> torch.Tensor:
    """RL-ZVP, docs/algorithms.md §3 (arXiv 2509.21880 Eq. 5), over the tokens of one response:
        positive group:  A_t = alpha * H_t
        negative group:  A_t = -alpha * (max_k H_k - H_t)
    H is detached: it scales the token's advantage and carries no gradient of its own."""
    h = entropy.detach()
    if positive:
        return alpha * h
    return -alpha * (h.max() - h)


def overlong_penalty(length: int, l_max: int, l_cache: int) -> float:
    """DAPO soft overlong punishment, docs/algorithms.md §1, added to the reward."""
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


@dataclass(frozen=True)
class AdvantageRule:
    """The advantage policy of a run, from the config sections that define it."""

    adv: AdvantageConfig
    ra: ReactivationConfig
    overlong: tuple[int, int] | None = None  # DAPO overlong shaping: (L_max, L_cache), or off

    @classmethod
    def from_config(cls, adv: AdvantageConfig, ra: ReactivationConfig, dapo: DAPOConfig,
                    max_tokens: int) -> "AdvantageRule":
        return cls(adv, ra, (max_tokens, dapo.overlong_cache) if dapo.overlong_shaping else None)

    def of(self, rewards: torch.Tensor, kind: Outcome, lengths: list[int]) -> GroupAdvantage:
        """The advantage of one complete group: `rewards` are the verifier's {0, 1}, `kind` their
        outcome. The outcome is decided on the verifier's rewards, before overlong shaping
        (docs/algorithms.md §5): a correct answer that ran long must not turn a mixed group into an
        all-wrong one."""
        shaped = rewards
        if self.overlong is not None:
            l_max, l_cache = self.overlong
            shaped = rewards + torch.tensor([overlong_penalty(n, l_max, l_cache) for n in lengths], dtype=rewards.dtype)
        eps, unbiased = self.adv.eps, self.adv.std == "unbiased"
        if kind == Outcome.MIXED:
            return GroupAdvantage(grpo(shaped, eps, unbiased))
        positive = kind == Outcome.POSITIVE
        if self.adv.kind == "rlzvp":
            return GroupAdvantage(torch.zeros_like(rewards), zvp=1 if positive else -1)
        if self.ra.enabled and (positive or self.ra.negative):
            r_virtual = self.ra.r_virtual if positive else 1.0 - self.ra.r_virtual
            return GroupAdvantage(reactivation(shaped, self.ra.m, r_virtual, eps, unbiased))
        return GroupAdvantage(torch.zeros_like(rewards))
