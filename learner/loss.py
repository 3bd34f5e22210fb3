"""Clipped policy loss with lag correction and the references' loss aggregations (ALGORITHMS.md §1, §5).

Inputs are padded [N, L] tensors over predicted positions (N samples):
  logp  = log pi_theta   (with grad)      prox = log pi_prox (no grad, start of the rollout batch)
  mu    = behaviour log-prob from vLLM    adv  = token advantage      mask = 1 on response tokens
All three log-probs are of the same distribution: softmax(logits / T_j) at the sample's own T_j.

The loss of a micro-batch is a plain sum, sum_j coef_j sum_t ell_{j,t}, with each sample's
aggregation coefficient `coef_j` computed over the whole update (`aggregation_coef`). Summing the
micro-batches' losses therefore gives the update's loss exactly, however the samples were cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from pipeline.config import LossConfig

LOG_RATIO_CLAMP = 20.0  # ppo_behaviour: |pi_theta - mu| beyond this is clamped (verl)
DUAL_CLIP = 3.0  # ppo_behaviour: c of the dual clip for A < 0 (verl's clip_ratio_c)


def _scale(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    return logits / temperature.view(-1, *([1] * (logits.dim() - 1)))


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """log softmax(logits / T_j)[target] per position; `temperature` is [N], one T per sample (§5)."""
    logp = F.log_softmax(_scale(logits, temperature).float(), dim=-1)
    return torch.gather(logp, -1, targets.unsqueeze(-1)).squeeze(-1)


def aggregation_coef(lengths: torch.Tensor, mode: str, norm_tokens: int) -> torch.Tensor:
    """Each sample's weight in J = sum_j coef_j sum_t ell_{j,t}, over the N samples of one update
    with response lengths |o_j| (ALGORITHMS.md §1, `loss.aggregation`):

      token_mean               (DAPO)      coef_j = 1 / sum_k |o_k|
      seq_mean_token_mean      (GRPO)      coef_j = 1 / (N |o_j|)
      seq_mean_token_sum_norm  (Dr. GRPO)  coef_j = 1 / (N L),   L = loss.norm_tokens, a constant
    """
    lengths = lengths.float()
    n = len(lengths)
    if mode == "token_mean":
        return torch.full((n,), 1.0 / float(lengths.sum().clamp(min=1.0)))
    if mode == "seq_mean_token_mean":
        return 1.0 / (n * lengths.clamp(min=1.0))
    if mode == "seq_mean_token_sum_norm":
        return torch.full((n,), 1.0 / (n * norm_tokens))
    raise ValueError(f"unknown loss.aggregation {mode!r}")


@dataclass
class LossStats:
    loss: float
    clip_frac: float  # tokens where the PPO clip is active
    truncated_frac: float  # tokens whose IS weight was truncated (tis) or masked (mis, seq_mis)
    ess: float  # effective sample size of w = pi_prox/mu: (sum w)^2 / (N sum w^2); 1 = no lag
    is_weight_mean: float
    is_weight_max: float


@dataclass
class LossSums:
    """Token sums behind LossStats, so that micro-batches (and updates) add up exactly."""

    loss: float = 0.0
    tokens: float = 0.0
    clipped: float = 0.0
    cut: float = 0.0
    w_sum: float = 0.0
    w2_sum: float = 0.0
    w_max: float = 0.0
    entropy_sum: float = 0.0
    padded: float = 0.0  # positions the micro-batches held, padding included (the learner fills it in)
    gap: dict[int, list[float]] = field(default_factory=dict)  # token lag -> [sum |pi_prox - mu|, tokens]

    def __iadd__(self, o: "LossSums") -> "LossSums":
        for k in ("loss", "tokens", "clipped", "cut", "w_sum", "w2_sum", "entropy_sum", "padded"):
            setattr(self, k, getattr(self, k) + getattr(o, k))
        self.w_max = max(self.w_max, o.w_max)
        for lag, (s, n) in o.gap.items():
            acc = self.gap.setdefault(lag, [0.0, 0.0])
            acc[0] += s
            acc[1] += n
        return self

    @property
    def clip_frac(self) -> float:
        return self.clipped / max(self.tokens, 1.0)

    @property
    def truncated_frac(self) -> float:
        return self.cut / max(self.tokens, 1.0)

    @property
    def ess(self) -> float:
        return self.w_sum ** 2 / max(self.tokens * self.w2_sum, 1e-12)

    @property
    def entropy_mean(self) -> float:
        return self.entropy_sum / max(self.tokens, 1.0)

    def stats(self) -> LossStats:
        return LossStats(loss=self.loss, clip_frac=self.clip_frac, truncated_frac=self.truncated_frac,
                         ess=self.ess, is_weight_mean=self.w_sum / max(self.tokens, 1.0), is_weight_max=self.w_max)

    def gap_by_lag(self) -> dict[str, float]:
        """mean |pi_prox - mu| per token-lag bucket (§4)."""
        return {f"prox_mu_gap/lag{lag}": s / n for lag, (s, n) in sorted(self.gap.items()) if n}


def _clipped(ratio: torch.Tensor, adv: torch.Tensor, cfg: LossConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's pessimistic term min(r A, clip(r, 1 - eps_low, 1 + eps_high) A), and where the clip binds."""
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - cfg.eps_low, 1.0 + cfg.eps_high) * adv
    return torch.minimum(unclipped, clipped), clipped < unclipped


def policy_loss(logp, prox, mu, adv, mask, cfg: LossConfig, coef: torch.Tensor | None = None,
                token_lag: torch.Tensor | None = None, entropy: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, LossSums]:
    """-J = -sum_j coef_j sum_t ell_{j,t}, with ell per `cfg.correction` (§5):

      ppo_behaviour:  ell = max(min(rho A, clip(rho) A), c A) if A < 0 else min(rho A, clip(rho) A),
                      rho = exp(clamp(pi_theta - mu, -20, 20)), c = 3 (verl's dual clip)
      tis:            ell = sg(min(w, C)) min(u A, clip(u) A),  w = exp(pi_prox - mu), u = exp(pi_theta - pi_prox)
      mis:            as tis with sg(w * 1[1/C <= w <= C])
      seq_mis:        as tis with sg(w * 1[1/C <= exp(mean_t log w) <= C]) per sequence

    `coef` [N]: each sample's aggregation coefficient over its whole update (`aggregation_coef`);
    None: token_mean over this batch alone (DAPO's token-level normalisation)."""
    mask = mask.to(logp.dtype)
    if coef is None:
        coef = torch.full((mask.shape[0],), 1.0 / float(mask.sum().clamp(min=1.0)), device=mask.device)
    log_w = (prox - mu).detach() * mask
    w = torch.exp(log_w)
    C = cfg.is_cap
    if cfg.correction == "ppo_behaviour":
        weight = torch.ones_like(w)
        ratio = torch.exp(torch.clamp(logp - mu, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
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
    if cfg.correction == "ppo_behaviour":  # one stale sample cannot make the loss unbounded
        term = torch.where(adv < 0, torch.maximum(term, DUAL_CLIP * adv), term)
    loss = -(weight.detach() * term * mask * coef.view(-1, 1)).sum()

    with torch.no_grad():
        wm = w * mask
        sums = LossSums(
            loss=float(loss), tokens=float(mask.sum()), clipped=float((clip_active.to(mask.dtype) * mask).sum()),
            cut=float((cut.to(mask.dtype) * mask).sum()), w_sum=float(wm.sum()), w2_sum=float((wm * wm).sum()),
            w_max=float(wm.max()) if mask.any() else 0.0,
            entropy_sum=float((entropy * mask).sum()) if entropy is not None else 0.0)
        if token_lag is not None:
            gap = (prox - mu).abs()
            on = mask.bool()
            for lag in token_lag[on].unique().tolist():
                at = on & (token_lag == lag)
                sums.gap[int(lag)] = [float(gap[at].sum()), float(at.sum())]
    return loss, sums
