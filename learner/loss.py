"""Token-level clipped policy loss with lag correction (ALGORITHMS.md §1 and §5).

Inputs are padded [N, L] tensors over predicted positions (N samples):
  logp  = log pi_theta   (with grad)      prox = log pi_prox (no grad, start of the step)
  mu    = behaviour log-prob from vLLM    adv  = token advantage      mask = 1 on response tokens
All three log-probs are of the same distribution: softmax(logits / T_j) at the sample's own T_j.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.config import LossConfig


def _scale(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    return logits / temperature.view(-1, *([1] * (logits.dim() - 1)))


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """log softmax(logits / T_j)[target] per position; `temperature` is [N], one T per sample (§5)."""
    logp = F.log_softmax(_scale(logits, temperature).float(), dim=-1)
    return torch.gather(logp, -1, targets.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def token_entropy(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary entropy H_t = -sum_v p log p of softmax(logits / T_j), detached."""
    logp = F.log_softmax(_scale(logits.detach(), temperature).float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


@dataclass
class LossStats:
    loss: float
    clip_frac: float  # tokens where the PPO clip is active
    truncated_frac: float  # tokens whose IS weight was truncated (tis) or masked (mis, seq_mis)
    ess: float  # effective sample size of w = pi_prox/mu: (sum w)^2 / (N sum w^2); 1 = no lag
    is_weight_mean: float
    is_weight_max: float


def _clipped(ratio: torch.Tensor, adv: torch.Tensor, cfg: LossConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's pessimistic term min(r A, clip(r, 1 - eps_low, 1 + eps_high) A), and where the clip binds."""
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - cfg.eps_low, 1.0 + cfg.eps_high) * adv
    return torch.minimum(unclipped, clipped), clipped < unclipped


def policy_loss(logp, prox, mu, adv, mask, cfg: LossConfig) -> tuple[torch.Tensor, LossStats]:
    """-J with token-level normalisation over the batch (DAPO), J per `cfg.correction` (§5):

      ppo_behaviour:  J = 1/T sum min(rho A, clip(rho) A),            rho = exp(pi_theta - mu)
      tis:            J = 1/T sum sg(min(w, C)) min(u A, clip(u) A),  w = exp(pi_prox - mu),
                                                                       u = exp(pi_theta - pi_prox)
      mis:            as tis with sg(w * 1[1/C <= w <= C])
      seq_mis:        as tis with sg(w * 1[1/C <= exp(mean_t log w) <= C]) per sequence
    """
    mask = mask.to(logp.dtype)
    n_tokens = mask.sum().clamp(min=1.0)
    log_w = (prox - mu).detach() * mask
    w = torch.exp(log_w)
    C = cfg.is_cap
    if cfg.correction == "ppo_behaviour":
        weight = torch.ones_like(w)
        ratio = torch.exp(logp - mu)
        cut = torch.zeros_like(mask, dtype=torch.bool)
    else:
        ratio = torch.exp(logp - prox.detach())
        if cfg.correction == "tis":
            cut = w > C
            weight = torch.clamp(w, max=C)
        elif cfg.correction == "mis":
            cut = (w < 1.0 / C) | (w > C)
            weight = w * (~cut)
        elif cfg.correction == "seq_mis":
            seq_w = torch.exp(log_w.sum(-1) / mask.sum(-1).clamp(min=1.0))
            cut = ((seq_w < 1.0 / C) | (seq_w > C)).unsqueeze(-1).expand_as(w)
            weight = w * (~cut)
        else:
            raise ValueError(f"unknown loss.correction {cfg.correction!r}")
    term, clip_active = _clipped(ratio, adv, cfg)
    loss = -(weight.detach() * term * mask).sum() / n_tokens

    with torch.no_grad():
        wm = w * mask
        frac = lambda b: float((b.to(mask.dtype) * mask).sum() / n_tokens)  # noqa: E731
        stats = LossStats(
            loss=float(loss), clip_frac=frac(clip_active), truncated_frac=frac(cut),
            ess=float(wm.sum() ** 2 / (n_tokens * (wm * wm).sum()).clamp(min=1e-12)),
            is_weight_mean=float(wm.sum() / n_tokens),
            is_weight_max=float(wm.max()) if mask.any() else 0.0,
        )
    return loss, stats
