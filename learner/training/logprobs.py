"""Log-probs and entropies of the response tokens without the full logits.

A [samples, positions, vocabulary] fp32 logits tensor is what makes a naive RL step impossible at scale
(16k positions x 152k vocabulary is 10 GB per sample). Here the model's last hidden states are taken
at the response positions only, and the output layer is applied `chunk` positions at a time. Each
chunk runs under activation checkpointing, so at most `chunk` x vocabulary logits are alive at once in
the forward and in the backward (the backward recomputes its chunk). Values and gradients equal the
unchunked computation (tested to 1e-6).

Per-sample temperature as everywhere (docs/design.md §3): position t of sample j uses softmax(logits / T_j).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))  # bf16 logits go to fp32 before the softmax


def log_softmax_at(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """log softmax(logits / T) over the vocabulary (the one definition in the learner); `temperature`
    has the shape of `logits` without its vocabulary axis: one T per position."""
    return F.log_softmax(_at_least_fp32(logits) / temperature.unsqueeze(-1), dim=-1)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """log softmax(logits / T_j)[target] at each position of [N, S, V] logits, one T_j per sample ([N])."""
    per_position = temperature.view(-1, *([1] * (targets.dim() - 1))).expand_as(targets)
    return torch.gather(log_softmax_at(logits, per_position), -1, targets.unsqueeze(-1)).squeeze(-1)


def _chunk(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: torch.Tensor,
           entropy_temperature: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk: the logits once, then log p of the targets at T and (detached) the entropy at T_e."""
    logits = _at_least_fp32(F.linear(hidden, weight))
    logp = torch.gather(log_softmax_at(logits, temperature), -1, targets.unsqueeze(-1)).squeeze(-1)
    if entropy_temperature is None:
        return logp, logp.new_zeros(0)
    with torch.no_grad():
        full = log_softmax_at(logits.detach(), entropy_temperature)
        return logp, -(full.exp() * full).sum(-1)


def response_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                      temperature: torch.Tensor, entropy_temperature: torch.Tensor | None, chunk: int,
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(h W^T / T)[target] at each selected position, and (detached) the entropy of
    softmax(h W^T / T_e), `chunk` positions at a time.

    hidden [P, H] (the selected positions' last hidden states), weight [V, H] (the output layer),
    targets [P], temperature [P] and entropy_temperature [P] or None (no entropy wanted).

    When every position fits one chunk, the logits are kept for the backward pass as autograd does;
    otherwise each chunk is recomputed in the backward pass (one more matmul with the output layer:
    the price of holding only `chunk` x vocabulary logits)."""
    chunk = max(chunk, 1)
    recompute = hidden.shape[0] > chunk and torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    logps, ents = [], []
    for s in range(0, hidden.shape[0], chunk):
        part = (hidden[s:s + chunk], weight, targets[s:s + chunk], temperature[s:s + chunk],
                entropy_temperature[s:s + chunk] if entropy_temperature is not None else None)
        lp, ent = checkpoint(_chunk, *part, use_reentrant=False) if recompute else _chunk(*part)
        logps.append(lp)
        ents.append(ent)
    empty = _at_least_fp32(hidden.new_zeros(0))
    logp = torch.cat(logps) if logps else empty
    if entropy_temperature is None:
        return logp, None
    return logp, torch.cat(ents) if ents else empty
