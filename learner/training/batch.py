"""A rollout batch as the trainer takes it: complete groups padded into aligned tensors
(`build_batch`), cut into micro-batches by a token budget (`pack`), split into the step's k updates
(`split_updates`); and the start-up check that every sample fits one micro-batch (`check_fits`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from learner.training.groups import Group
from pipeline.config import ConfigError


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
    group: torch.Tensor  # [N] index of the sample's group in the rollout batch
    prox: torch.Tensor | None = None  # [N, S-1] log pi_prox, when computed before the first of k updates
    coef: torch.Tensor | None = None  # [N] the loss-aggregation coefficient of each row in its update
    # [N] real tokens and response tokens of each row: what the micro-batch plan and the loss's
    # normaliser read (a training rank holds every row's, but only its own rows' tokens)
    lengths: torch.Tensor | None = None
    response_lengths: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.lengths is None:
            self.lengths = self.attention_mask.sum(1)
        if self.response_lengths is None:
            self.response_lengths = self.response_mask.sum(1).long()

    def to(self, device: torch.device) -> "Batch":
        return Batch(**{k: (v.to(device) if v is not None else None) for k, v in vars(self).items()})

    def select(self, rows: torch.Tensor) -> "Batch":
        """These rows, trimmed to their longest sequence (padding is on the right)."""
        length = int(self.lengths[rows].max())
        out = {}
        for k, v in vars(self).items():
            if v is None or v.dim() == 1:
                out[k] = v[rows] if v is not None else None
            else:
                out[k] = v[rows, :length if k in ("input_ids", "attention_mask") else length - 1]
        return Batch(**out)


def build_batch(groups: list[Group], version: int, pad_id: int) -> Batch:
    seqs, rows = [], []
    for gi, g in enumerate(groups):
        ga = g.advantage  # over the complete group, computed once when it arrived (learner/orchestration/intake.py)
        if ga is None:
            raise ValueError(f"group of lease {g.lease_id} reached the trainer without its advantage")
        for j, (resp, mu) in enumerate(zip(g.responses, g.behaviour_logprobs)):
            seqs.append(torch.cat([g.prompt, resp]))
            tv = g.token_versions[j] if g.token_versions else torch.full((len(resp),), g.version_first)
            rows.append((len(g.prompt), resp, mu, float(ga.per_sample[j]), ga.zvp, g.temperature,
                         g.lag(version), version - tv, gi))
    n, s = len(seqs), max(len(x) for x in seqs)
    input_ids = torch.full((n, s), pad_id, dtype=torch.long)
    attention = torch.zeros((n, s), dtype=torch.long)
    resp_mask = torch.zeros((n, s - 1))
    mu = torch.zeros((n, s - 1))
    adv = torch.zeros((n, s - 1))
    token_lag = torch.zeros((n, s - 1), dtype=torch.long)
    for i, (seq, (p, resp, m, a, *_, tl, _g)) in enumerate(zip(seqs, rows)):
        input_ids[i, :len(seq)] = seq
        attention[i, :len(seq)] = 1
        # position t predicts token t+1: response token k (at p+k) is predicted at position p+k-1
        span = slice(p - 1, p - 1 + len(resp))
        resp_mask[i, span] = 1
        mu[i, span] = m
        adv[i, span] = a
        token_lag[i, span] = tl
    col = lambda k, dtype=None: torch.tensor([r[k] for r in rows], dtype=dtype)  # noqa: E731
    return Batch(input_ids, attention, input_ids[:, 1:], resp_mask, mu, adv, col(4, torch.float32),
                 col(5, torch.float32), col(6), token_lag, col(8))


def pack(lengths: list[int], budget: int, world: int = 1, packed: bool = False) -> list[list[int]]:
    """Row indices grouped into micro-batches, longest first. Each of `world` processes takes every
    world-th row of a micro-batch, and its share holds at most `budget` tokens: real tokens when
    `packed` (samples laid end to end; first fit, so the rows fill each micro-batch), else padded
    ones (its rows x the longest; rows of like length share one). `budget` 0: one micro-batch."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    if not budget:
        return [order] if order else []
    out: list[list[int]] = []
    shares: list[list[int]] = []  # packed: the real tokens of each process's share of each micro-batch
    for i in order:
        if lengths[i] > budget:
            raise ValueError(f"a sample of {lengths[i]} tokens exceeds learner.micro_batch_tokens = {budget}")
        if packed:
            b = next((b for b, mb in enumerate(out) if shares[b][len(mb) % world] + lengths[i] <= budget), None)
            if b is None:
                b = len(out)
                out.append([])
                shares.append([0] * world)
            shares[b][len(out[b]) % world] += lengths[i]
            out[b].append(i)
        elif out and -(-(len(out[-1]) + 1) // world) * lengths[out[-1][0]] <= budget:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def split_updates(groups: int, k: int, seed: int) -> list[torch.Tensor]:
    """The rollout batch's group indices shuffled and cut into k nearly equal parts (one per update)."""
    order = torch.randperm(groups, generator=torch.Generator().manual_seed(seed))
    return [part for part in torch.tensor_split(order, k) if len(part)]


def check_fits(budget: int, max_tokens: int, longest_prompt: int) -> None:
    """Every sample must fit one micro-batch of `learner.micro_batch_tokens` = `budget`: say so at
    start-up, not at the first step that meets it."""
    if budget and longest_prompt + max_tokens > budget:
        raise ConfigError(f"learner.micro_batch_tokens = {budget} cannot hold the longest sample: a prompt of "
                          f"{longest_prompt} tokens + generator.max_tokens = {max_tokens}; raise the one or lower the other")
