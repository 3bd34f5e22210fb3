"""Packed sequences: a micro-batch's samples laid end to end in one row, no padding anywhere.

Each sample's positions restart at 0 (so rotary embeddings see the positions it would alone) and
attention stays inside each sample. Where flash-attention is installed on a GPU, its variable-length
kernel does that from the boundaries (`cu_seq_lens_q/k`, transformers' FlashAttentionKwargs). Elsewhere
`packed_sdpa`, registered with transformers under that name, runs PyTorch's scaled-dot-product
attention on each sample's span of the row in turn: causal within a sample, exact, and O(sum L^2) rather
than the O((sum L)^2) of one masked attention over the whole row. transformers builds no mask for an
implementation it does not know, so no [T, T] mask is ever made.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

PACKED_SDPA = "packed_sdpa"


def packed_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                cu_seq_lens_q: torch.Tensor | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """query [1, heads, T, d], key and value [1, kv_heads, T, d]; `cu_seq_lens_q` [samples + 1], the
    samples' boundaries in the row. Without boundaries: one causal sequence per row (the probe; a
    right-padded row's real positions never see its padding under a causal mask)."""
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=True, **kwargs)
    gqa = query.shape[1] != key.shape[1]
    bounds = cu_seq_lens_q.tolist()
    spans = [F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True,
                                            dropout_p=dropout, scale=scaling, enable_gqa=gqa)
             for a, b in zip(bounds[:-1], bounds[1:])]
    return torch.cat(spans, dim=2).transpose(1, 2).contiguous(), None  # [1, T, heads, d], as transformers expects


AttentionInterface.register(PACKED_SDPA, packed_sdpa)


def attention_for(device: torch.device, precision: str = "fp32") -> str:
    """The attention implementation packed rows run with on `device` at `learner.precision`:
    flash-attention only where it is installed and the compute is bf16 (it has no fp32 kernels)."""
    if device.type == "cuda" and precision != "fp32" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return PACKED_SDPA


def packed_row(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor | int]:
    """Model inputs for right-padded rows [N, S] laid end to end: input_ids and position_ids [1, T]
    (T the real tokens), and the boundaries the attention needs."""
    real = attention_mask.bool()
    lengths = real.sum(1)
    positions = torch.arange(real.shape[1], device=real.device).expand_as(real)
    cu = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    longest = int(lengths.max())
    return dict(input_ids=input_ids[real][None], position_ids=positions[real][None], cu_seq_lens_q=cu,
                cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)
