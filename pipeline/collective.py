"""The torch.distributed group that carries weights from the learner (rank 0) to the generators.

The group is built directly from a TCPStore and a ProcessGroup object, not through
`init_process_group`, because a generator process already has vLLM's own default group; this one
lives beside it. Gloo on CPU and NCCL on GPUs take the same code path (only the class differs).

Weights travel as one flat buffer per update (one collective instead of one per tensor); the
names, shapes and dtype travel in the WeightUpdate message over ZeroMQ.
"""

from __future__ import annotations

import datetime
from typing import Iterable, Iterator

import torch
import torch.distributed as dist

from pipeline.messages import TensorMeta


class WeightGroup:
    """One side of the learner -> generators broadcast group."""

    def __init__(self, backend: str, host: str, port: int, rank: int, world_size: int,
                 timeout_s: float = 600.0):
        timeout = datetime.timedelta(seconds=timeout_s)
        # The learner (rank 0) hosts the rendezvous store; the others connect to it.
        self.store = dist.TCPStore(host, port, world_size, is_master=(rank == 0), timeout=timeout,
                                   wait_for_workers=False)
        self.rank = rank
        self.world_size = world_size
        self.backend = backend
        if backend == "gloo":
            self.pg = dist.ProcessGroupGloo(self.store, rank, world_size, timeout)
            self.device = torch.device("cpu")
        elif backend == "nccl":
            opts = dist.ProcessGroupNCCL.Options()
            opts._timeout = timeout
            self.pg = dist.ProcessGroupNCCL(self.store, rank, world_size, opts)
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            raise ValueError(f"unknown weight-transport backend {backend!r} (gloo or nccl)")

    def broadcast(self, flat: torch.Tensor) -> None:
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        self.pg.broadcast([flat], opts).wait()


def tensor_metas(named: Iterable[tuple[str, torch.Tensor]]) -> list[TensorMeta]:
    return [TensorMeta(name, list(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in named]


def flatten(named: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).to(dtype) for _, t in named])


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def empty_buffer(metas: list[TensorMeta], dtype: str, device: torch.device) -> torch.Tensor:
    """The receiving side's flat buffer for an update described by `metas`."""
    return torch.empty(sum(_numel(m.shape) for m in metas), dtype=getattr(torch, dtype), device=device)


def unflatten(flat: torch.Tensor, metas: list[TensorMeta]) -> Iterator[tuple[str, torch.Tensor]]:
    offset = 0
    for m in metas:
        numel = _numel(m.shape)
        yield m.name, flat[offset:offset + numel].view(m.shape).to(getattr(torch, m.dtype))
        offset += numel
    if offset != flat.numel():
        raise ValueError(f"weight buffer holds {flat.numel()} elements, metadata describes {offset}")


def probe_tokens(vocab_size: int, length: int = 16) -> list[int]:
    """A fixed token sequence both sides score to check they hold the same weights. Comparing
    log-probs (not raw tensors) is layout-proof: vLLM fuses q/k/v and on CPU repacks linear weights."""
    return [(7 * i + 3) % vocab_size for i in range(length)]
