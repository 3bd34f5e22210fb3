"""Token-level clipped policy loss with lag correction (ALGORITHMS.md §1 and §5).

Inputs are padded [N, L] tensors over response tokens (N samples, L = longest response):
  logp  = log pi_theta   (with grad)      prox = log pi_prox (no grad, start of the step)
  mu    = behaviour log-prob from vLLM    adv  = token advantage      mask = 1 on real tokens
All three log-probs are of the same distribution: softmax(logits / T_j) at the sample's own T_j.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.config import LossConfig


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """log softmax(logits / T_j)[target] per position; `temperature` is [N], one T per sample (§5)."""
    scaled = logits / temperature.view(-1, *([1] * (logits.dim() - 1)))
    return torch.gather(F.log_softmax(scaled.float(), dim=-1), -1, targets.unsqueeze(-1)).squeeze(-1)


@dataclass
class LossStats:
    loss: float
    clip_frac: float  # tokens where the PPO clip is active
    truncated_frac: float  # tokens whose IS weight w = pi_prox/mu exceeded C
    ess: float  # effective sample size of w: (sum w)^2 / (N sum w^2), 1 = no lag at all
    is_weight_mean: float
    is_weight_max: float


def tis_loss(logp, prox, mu, adv, mask, cfg: LossConfig) -> tuple[torch.Tensor, LossStats]:
    """Decoupled PPO with truncated IS weights (`tis`, ALGORITHMS.md §5; AReaL, verl):

        J = 1/sum|o_j| * sum_{j,t} sg(min(w, C)) * min(u A, clip(u, 1 - eps_low, 1 + eps_high) A)
        w = exp(pi_prox - mu)   corrects for lag (behaviour -> proximal policy)
        u = exp(pi_theta - pi_prox)   the trust region, around the proximal policy
    Loss = -J, normalised over all tokens of the batch (token-level, DAPO).
    """
    mask = mask.to(logp.dtype)
    n_tokens = mask.sum().clamp(min=1.0)
    w = torch.exp(prox - mu).detach()
    w_trunc = torch.clamp(w, max=cfg.is_cap)
    u = torch.exp(logp - prox.detach())
    unclipped = u * adv
    clipped = torch.clamp(u, 1.0 - cfg.eps_low, 1.0 + cfg.eps_high) * adv
    objective = w_trunc * torch.minimum(unclipped, clipped)
    loss = -(objective * mask).sum() / n_tokens

    with torch.no_grad():
        wm = w * mask
        stats = LossStats(
            loss=float(loss),
            clip_frac=float(((clipped < unclipped).to(mask.dtype) * mask).sum() / n_tokens),
            truncated_frac=float(((w > cfg.is_cap).to(mask.dtype) * mask).sum() / n_tokens),
            ess=float(wm.sum() ** 2 / (n_tokens * (wm * wm).sum()).clamp(min=1e-12)),
            is_weight_mean=float(wm.sum() / n_tokens),
            is_weight_max=float(wm.max()) if mask.any() else 0.0,
        )
    return loss, stats
