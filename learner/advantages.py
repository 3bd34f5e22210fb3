"""Advantages over a complete group of n responses (ALGORITHMS.md §1)."""

from __future__ import annotations

import torch


def grpo(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO, ALGORITHMS.md §1:  A_j = (R_j - mean(R)) / (std(R) + eps).

    Population std (over the n rewards actually in the group), the reading under which ALGORITHMS.md's
    Reactivation Advantage gives 1/sqrt(n). A zero-variance group gets A = 0 exactly.
    """
    if rewards.dim() != 1 or rewards.numel() < 2:
        raise ValueError("grpo needs a 1-D tensor of at least two rewards (one complete group)")
    centred = rewards - rewards.mean()
    return centred / (rewards.std(unbiased=False) + eps)
