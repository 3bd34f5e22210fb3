"""Clipped policy loss with lag correction and the references' loss aggregations (docs/algorithms.md §1, §5).

The loss sees one micro-batch as `LossInputs`: padded [N, L] tensors over predicted positions (N
samples) and per-sample scalars, and knows nothing of the pipeline. All three log-probs are of the
same distribution: softmax(logits / T_j) at the sample's own T_j (learner/training/logprobs.py).

The loss of a micro-batch is a plain sum, sum_j coef_j sum_t ell_{j,t}, with each sample's
aggregation coefficient `coef_j` computed over the whole update (`aggregation_coef`). Summing the
micro-batches' losses therefore gives the update's loss exactly, however the samples were cut.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from pipeline.config import LossConfig

LOG_RATIO_CLAMP = 20.0  # ppo_behaviour: |pi_theta - mu| beyond this is clamped (verl)
DUAL_CLIP = 3.0  # ppo_behaviour: c of the dual clip for A < 0 (verl's clip_ratio_c)


@dataclass
class LossInputs:
    """One micro-batch as the loss sees it."""

    logp: torch.Tensor  # [N, L] log pi_theta (with grad)
    prox: torch.Tensor  # [N, L] log pi_prox (no grad): the policy at the start of the rollout batch
    mu: torch.Tensor  # [N, L] behaviour log-prob from vLLM
    adv: torch.Tensor  # [N, L] token advantage
    mask: torch.Tensor  # [N, L] 1 on response tokens
    coef: torch.Tensor  # [N] each sample's aggregation coefficient over its whole update (`aggregation_coef`)
    token_lag: torch.Tensor | None = None  # [N, L] versions between each token's weights and the step's
    entropy: torch.Tensor | None = None  # [N, L] detached token entropy, for the metrics
    group: torch.Tensor | None = None  # [N] each row's group in the step's batch, for per-group metrics
    temperature: torch.Tensor | None = None  # [N] each sample's sampling temperature T_j (tis_temp)

    @property
    def log_w(self) -> torch.Tensor:
        """log w = log pi_prox - log mu on response tokens (0 elsewhere), detached."""
        return (self.prox - self.mu).detach() * self.mask


def aggregation_coef(lengths: torch.Tensor, mode: str, norm_tokens: int) -> torch.Tensor:
    """Each sample's weight in J = sum_j coef_j sum_t ell_{j,t}, over the N samples of one update
    with response lengths |o_j| (docs/algorithms.md §1, `loss.aggregation`):

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
    cut_by_group: dict[int, list[float]] = field(default_factory=dict)  # batch group -> [cut tokens, tokens]

    def __iadd__(self, o: "LossSums") -> "LossSums":
        for k in ("loss", "tokens", "clipped", "cut", "w_sum", "w2_sum", "entropy_sum", "padded"):
            setattr(self, k, getattr(self, k) + getattr(o, k))
        self.w_max = max(self.w_max, o.w_max)
        for mine, theirs in ((self.gap, o.gap), (self.cut_by_group, o.cut_by_group)):
            for key, (s, n) in theirs.items():
                acc = mine.setdefault(key, [0.0, 0.0])
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
        """mean |pi_prox - mu| per token-lag bucket (docs/algorithms.md §5)."""
        return {f"prox_mu_gap/lag{lag}": s / n for lag, (s, n) in sorted(self.gap.items()) if n}


@dataclass
class TokenTerms:
    """A correction's per-token objective ell_{j,t} (to be maximised), and what it did."""

    ell: torch.Tensor
    clipped: torch.Tensor  # bool: the PPO clip binds
    cut: torch.Tensor  # bool: the IS weight was truncated (tis) or masked (mis, seq_mis)


def _clipped(ratio: torch.Tensor, adv: torch.Tensor, cfg: LossConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's pessimistic term min(r A, clip(r, 1 - eps_low, 1 + eps_high) A), and where the clip binds."""
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - cfg.eps_low, 1.0 + cfg.eps_high) * adv
    return torch.minimum(unclipped, clipped), clipped < unclipped


def _decoupled(x: LossInputs, cfg: LossConfig, weight: torch.Tensor, cut: torch.Tensor) -> TokenTerms:
    """AReaL's decoupled objective: ell = sg(weight) min(u A, clip(u) A),  u = pi_theta / pi_prox."""
    term, clipped = _clipped(torch.exp(x.logp - x.prox.detach()), x.adv, cfg)
    return TokenTerms(weight.detach() * term, clipped, cut)


def ppo_behaviour(x: LossInputs, cfg: LossConfig) -> TokenTerms:
    """ell = max(min(rho A, clip(rho) A), c A) if A < 0 else min(rho A, clip(rho) A),
    rho = exp(clamp(pi_theta - mu, -20, 20)), c = 3 (verl's dual clip): one stale sample cannot make
    the loss unbounded."""
    rho = torch.exp(torch.clamp(x.logp - x.mu, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    term, clipped = _clipped(rho, x.adv, cfg)
    term = torch.where(x.adv < 0, torch.maximum(term, DUAL_CLIP * x.adv), term)
    return TokenTerms(term, clipped, torch.zeros_like(clipped))


def tis(x: LossInputs, cfg: LossConfig) -> TokenTerms:
    """ell = sg(min(w, C)) min(u A, clip(u) A),  w = pi_prox / mu (truncated importance sampling)."""
    w = torch.exp(x.log_w)
    return _decoupled(x, cfg, torch.clamp(w, max=cfg.is_cap), w > cfg.is_cap)


def mis(x: LossInputs, cfg: LossConfig) -> TokenTerms:
    """As tis with sg(w 1[1/C <= w <= C]): tokens whose weight leaves [1/C, C] are masked."""
    w = torch.exp(x.log_w)
    cut = (w < 1.0 / cfg.is_cap) | (w > cfg.is_cap)
    return _decoupled(x, cfg, w * ~cut, cut)


def seq_mis(x: LossInputs, cfg: LossConfig) -> TokenTerms:
    """As tis with sg(w 1[1/C <= exp(mean_t log w) <= C]): whole sequences are masked by their
    geometric-mean weight."""
    log_w = x.log_w
    seq_w = torch.exp(log_w.sum(-1) / x.mask.sum(-1).clamp(min=1.0))
    cut = ((seq_w < 1.0 / cfg.is_cap) | (seq_w > cfg.is_cap)).unsqueeze(-1).expand_as(log_w)
    return _decoupled(x, cfg, torch.exp(log_w) * ~cut, cut)


def m2po(x: LossInputs, cfg: LossConfig) -> TokenTerms:
    """M2PO (Zheng et al. 2025, as in AReaL): the tokens of largest (log w)^2 are masked, largest
    first, until the second moment M2 = mean_t (log w_t)^2 of those left is at most tau
    (`loss.m2_threshold`); ell = sg(w m_t) u A, with no PPO clip (the moment constraint replaces
    it). Decided over the micro-batch, the most the loss sees at once."""
    log_w = x.log_w
    on = x.mask.bool()
    sq = (log_w * log_w)[on]
    keep = torch.ones_like(sq, dtype=torch.bool)
    if sq.numel():
        order = torch.argsort(sq, descending=True)
        # after masking the i largest, the mean of the rest is (total - sum of the i largest) / (n - i)
        n = sq.numel()
        removed = torch.cat([sq.new_zeros(1), torch.cumsum(sq[order], 0)])[:n]
        remaining = torch.arange(n, 0, -1, device=sq.device, dtype=sq.dtype)
        ok = (sq.sum() - removed) / remaining <= cfg.m2_threshold  # ok[i]: M2 of what is left after i
        keep[order[:int(ok.nonzero()[0]) if bool(ok.any()) else n]] = False
    cut = torch.zeros_like(on)
    cut[on] = ~keep
    u = torch.exp(x.logp - x.prox.detach())
    return TokenTerms((torch.exp(log_w) * ~cut).detach() * u * x.adv, torch.zeros_like(cut), cut)


def ess_tis(x: LossInputs, cfg: LossConfig) -> TokenTerms:
    """tis with the step scaled by the micro-batch's effective sample size (in the spirit of VCPO):
    ell = ESS sg(min(w, C)) min(u A, clip(u) A),  ESS = (sum_t w_t)^2 / (N sum_t w_t^2) in (0, 1]
    over its response tokens: the more the weights spread (the staler the data), the smaller the step."""
    w = torch.exp(x.log_w) * x.mask
    n = x.mask.sum().clamp(min=1.0)
    ess = (w.sum() ** 2 / (n * (w * w).sum()).clamp(min=1e-12)).clamp(max=1.0)
    return _decoupled(x, cfg, ess * torch.clamp(w, max=cfg.is_cap), w > cfg.is_cap)


def ipo(x: LossInputs, cfg: LossConfig) -> TokenTerms:
    """prime-rl's IPO mask: a token is masked when its probability, not its ratio, moved more than
    eps (`loss.ipo_eps`) between behaviour and learner, |pi_prox - mu| > eps;
    ell = sg(w 1[|pi_prox - mu| <= eps]) min(u A, clip(u) A). A ratio treats a hot sample's flat
    distribution like a peaked one; a probability gap does not (a 0.01 -> 0.03 move is ratio 3 but
    gap 0.02)."""
    gap = (torch.exp(x.prox) - torch.exp(x.mu)).abs().detach()
    cut = (gap > cfg.ipo_eps) & x.mask.bool()
    return _decoupled(x, cfg, torch.exp(x.log_w) * ~cut, cut)


def tis_temp(x: LossInputs, cfg: LossConfig) -> TokenTerms:
    """tis whose cap widens with the sample's temperature: C_j = C^(T_j), so log C_j = T_j log C
    (C itself at T = 1). A hotter sample is drawn from a flatter distribution whose tokens'
    log-ratios spread wider for the same policy change (the ratio's natural scale grows with the
    entropy, which grows with T); a cap fixed for T = 1 would truncate ERPO's heated samples most."""
    if x.temperature is None:
        raise ValueError("loss.correction = \"tis_temp\" needs each sample's temperature (LossInputs.temperature)")
    w = torch.exp(x.log_w)
    cap = torch.exp(x.temperature.to(w.dtype).view(-1, 1) * math.log(cfg.is_cap))
    return _decoupled(x, cfg, torch.minimum(w, cap), w > cap)


# `loss.correction` -> the per-token objective (docs/algorithms.md §5)
CORRECTIONS: dict[str, Callable[[LossInputs, LossConfig], TokenTerms]] = {
    "ppo_behaviour": ppo_behaviour, "tis": tis, "mis": mis, "seq_mis": seq_mis, "m2po": m2po, "ess_tis": ess_tis,
    "ipo": ipo, "tis_temp": tis_temp}


def policy_loss(x: LossInputs, cfg: LossConfig) -> tuple[torch.Tensor, LossSums]:
    """-J = -sum_j coef_j sum_t ell_{j,t}, with ell per `cfg.correction` (`CORRECTIONS`)."""
    if cfg.correction not in CORRECTIONS:
        raise ValueError(f"unknown loss.correction {cfg.correction!r}")
    mask = x.mask.to(x.logp.dtype)
    terms = CORRECTIONS[cfg.correction](x, cfg)
    loss = -(terms.ell * mask * x.coef.view(-1, 1)).sum()
    return loss, _sums(x, terms, loss, mask)


@torch.no_grad()
def _sums(x: LossInputs, terms: TokenTerms, loss: torch.Tensor, mask: torch.Tensor) -> LossSums:
    """The token sums behind the step's metrics: clip and cut shares, the IS weights' ESS, entropy,
    and |pi_prox - mu| per token lag."""
    wm = torch.exp(x.log_w) * mask
    sums = LossSums(
        loss=float(loss), tokens=float(mask.sum()), clipped=float((terms.clipped.to(mask.dtype) * mask).sum()),
        cut=float((terms.cut.to(mask.dtype) * mask).sum()), w_sum=float(wm.sum()), w2_sum=float((wm * wm).sum()),
        w_max=float(wm.max()) if mask.any() else 0.0,
        entropy_sum=float((x.entropy * mask).sum()) if x.entropy is not None else 0.0)
    if x.token_lag is not None:
        gap = (x.prox - x.mu).abs()
        on = mask.bool()
        for lag in x.token_lag[on].unique().tolist():
            at = on & (x.token_lag == lag)
            sums.gap[int(lag)] = [float(gap[at].sum()), float(at.sum())]
    if x.group is not None:  # summed per group on the device, then brought over in one copy
        ids, row_group = x.group.to(mask.device).unique(return_inverse=True)
        on = mask.float()  # token counts in fp32 whatever the loss's dtype
        per_group = torch.zeros(2, len(ids), device=mask.device)
        per_group[0].index_add_(0, row_group, (terms.cut.float() * on).sum(1))
        per_group[1].index_add_(0, row_group, on.sum(1))
        sums.cut_by_group = {gi: [cut, n] for gi, (cut, n) in zip(ids.tolist(), per_group.T.tolist())}
    return sums
