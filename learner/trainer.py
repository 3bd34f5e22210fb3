"""The policy model, its optimiser, and one gradient step on a batch of complete groups."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from learner import checkpoint
from learner.advantages import zvp_token_advantages
from learner.groups import Group
from learner.loss import policy_loss, token_entropy, token_logprobs
from pipeline.collective import probe_tokens
from pipeline.config import Config
from pipeline.models import load_causal_lm


@dataclass
class Batch:
    """Padded prompt+response sequences, with everything aligned to the predicted positions."""

    input_ids: torch.Tensor  # [N, S]
    attention_mask: torch.Tensor  # [N, S]
    targets: torch.Tensor  # [N, S-1] token predicted at each position
    response_mask: torch.Tensor  # [N, S-1] 1 where the target is a response token
    mu: torch.Tensor  # [N, S-1] behaviour log-probs on response positions, 0 elsewhere
    adv: torch.Tensor  # [N, S-1] token advantages (RL-ZVP rows are filled after the forward pass)
    zvp: torch.Tensor  # [N] +1 / -1 for rows of RL-ZVP zero-variance groups, else 0
    temperature: torch.Tensor  # [N]
    lag: torch.Tensor  # [N] lag of each sample's oldest token
    token_lag: torch.Tensor  # [N, S-1] lag of each response token (differs within a sample under in-flight updates)

    def to(self, device: torch.device) -> "Batch":
        return Batch(**{k: v.to(device) for k, v in vars(self).items()})


def build_batch(groups: list[Group], version: int, cfg: Config, pad_id: int) -> Batch:
    seqs, rows = [], []
    for g in groups:
        ga = g.advantage(cfg)  # over the complete group, before any sample is looked at alone
        for j, (resp, mu) in enumerate(zip(g.responses, g.behaviour_logprobs)):
            seqs.append(torch.cat([g.prompt, resp]))
            tv = g.token_versions[j] if g.token_versions else torch.full((len(resp),), g.version_first)
            rows.append((len(g.prompt), resp, mu, float(ga.per_sample[j]), ga.zvp, g.temperature,
                         g.lag(version), version - tv))
    n, s = len(seqs), max(len(x) for x in seqs)
    input_ids = torch.full((n, s), pad_id, dtype=torch.long)
    attention = torch.zeros((n, s), dtype=torch.long)
    resp_mask = torch.zeros((n, s - 1))
    mu = torch.zeros((n, s - 1))
    adv = torch.zeros((n, s - 1))
    token_lag = torch.zeros((n, s - 1), dtype=torch.long)
    for i, (seq, (p, resp, m, a, *_, tl)) in enumerate(zip(seqs, rows)):
        input_ids[i, :len(seq)] = seq
        attention[i, :len(seq)] = 1
        # position t predicts token t+1: response token k (at p+k) is predicted at position p+k-1
        span = slice(p - 1, p - 1 + len(resp))
        resp_mask[i, span] = 1
        mu[i, span] = m
        adv[i, span] = a
        token_lag[i, span] = tl
    return Batch(input_ids, attention, input_ids[:, 1:], resp_mask, mu, adv,
                 torch.tensor([r[4] for r in rows]), torch.tensor([r[5] for r in rows]),
                 torch.tensor([r[6] for r in rows]), token_lag)


class Trainer:
    # The learner may copy the weights on another thread while a step runs (see Learner._step_job);
    # a sharded trainer may not, as the copy is a collective.
    concurrent_snapshot = True

    def __init__(self, cfg: Config, model_path: str):
        self.cfg = cfg
        self.device = self._pick_device()
        self.model = self._distribute(load_causal_lm(model_path, cfg.model.dtype).to(self.device))
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.learner.lr,
                                           weight_decay=cfg.learner.weight_decay)
        self.version = 0  # number of optimiser steps taken: the weights' version
        self.pad_id = self.model.config.pad_token_id or 0

    def _pick_device(self) -> torch.device:
        return torch.device(self.cfg.learner.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def _distribute(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model as this trainer holds it: whole here; sharded in learner/sharded.py."""
        return model

    def load_optimizer(self, ckpt: Path) -> None:
        """The optimiser state saved in checkpoint folder `ckpt` (resuming a run)."""
        self.optimizer.load_state_dict(checkpoint.optimizer_state(ckpt))

    def named_weights(self) -> list[tuple[str, torch.Tensor]]:
        # named_parameters() lists tied embeddings once, which is what the engine's loader expects
        return list(self.model.named_parameters())

    @torch.no_grad()
    def probe_logprobs(self) -> list[float]:
        """Log-probs (T = 1) of the fixed probe sequence, to compare with what a generator reports."""
        tokens = torch.tensor([probe_tokens(self.model.config.vocab_size)], device=self.device)
        logits = self.model(input_ids=tokens).logits[:, :-1]
        return token_logprobs(logits, tokens[:, 1:], torch.ones(1, device=self.device))[0].tolist()

    def _sample_temperature(self, batch: Batch) -> torch.Tensor:
        if self.cfg.loss.logprob_temperature == "sample":
            return batch.temperature
        return torch.ones_like(batch.temperature)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits at the predicting positions, log pi_theta of the targets at each sample's T)."""
        logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
        return logits, token_logprobs(logits, batch.targets, self._sample_temperature(batch))

    def logprobs(self, batch: Batch) -> torch.Tensor:
        return self.forward(batch)[1]

    def _fill_zvp(self, batch: Batch, entropy_one: torch.Tensor, logits: torch.Tensor) -> None:
        """RL-ZVP token advantages from the detached entropy of the training policy (§3)."""
        rows = (batch.zvp != 0).nonzero().flatten()
        if len(rows) == 0:
            return
        if self.cfg.zvp.entropy_temperature == "sample":
            entropy = token_entropy(logits[rows], batch.temperature[rows])
        else:
            entropy = entropy_one[rows]
        for k, i in enumerate(rows.tolist()):
            pos = batch.response_mask[i].bool()
            batch.adv[i, pos] = zvp_token_advantages(entropy[k][pos], bool(batch.zvp[i] > 0), self.cfg.zvp.alpha)

    def full_state(self) -> tuple[dict | None, dict]:
        """(model state dict, or None for the model's own; optimizer state dict) for a checkpoint."""
        return None, self.optimizer.state_dict()

    def step(self, groups: list[Group], before_update: Callable[[], object] | None = None) -> dict:
        """One optimiser step on `groups`; `before_update` runs after the backward pass, just before
        the weights change (the learner uses it to wait for a copy of the previous weights)."""
        return self._update(build_batch(groups, self.version, self.cfg, self.pad_id).to(self.device),
                            before_update)

    def _update(self, batch: Batch, before_update: Callable[[], object] | None = None,
                loss_scale: float = 1.0) -> dict:
        """The step itself; `loss_scale` lets a shard of the batch weigh in as its share of the whole."""
        logits, logp = self.forward(batch)
        entropy = token_entropy(logits, torch.ones_like(batch.temperature))  # T = 1, for RL-ZVP and metrics
        self._fill_zvp(batch, entropy, logits)
        # One optimiser step per batch: pi_prox is pi_theta at the start of the step, so no extra
        # forward pass is needed; detaching gives it exactly.
        prox = logp.detach()
        loss, stats = policy_loss(logp, prox, batch.mu, batch.adv, batch.response_mask, self.cfg.loss)
        self.optimizer.zero_grad(set_to_none=True)
        (loss * loss_scale).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.learner.grad_clip)
        if hasattr(grad_norm, "full_tensor"):  # sharded parameters: the norm over every shard
            grad_norm = grad_norm.full_tensor()
        if before_update is not None:
            before_update()
        self.optimizer.step()
        self.version += 1

        mask = batch.response_mask.bool()
        gap = (prox - batch.mu).abs()
        gap_by_lag = {}
        for lag in batch.token_lag[mask].unique().tolist():  # mean |pi_prox - mu| per token-lag bucket (§4)
            at = mask & (batch.token_lag == lag)
            gap_by_lag[f"prox_mu_gap/lag{lag}"] = float(gap[at].mean())
        return {**asdict(stats), "grad_norm": float(grad_norm), **gap_by_lag,
                "entropy": float(entropy[mask].mean()), "tokens": int(mask.sum()),
                "response_len": float(mask.sum(1).float().mean())}
