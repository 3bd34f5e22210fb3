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
                 timeout_s: float = 600.0, device: torch.device | str | None = None):
        """`device`: where this side's buffers live (NCCL: a CUDA device; the learner passes its own,
        not the calling thread's current device, which is cuda:0 in a fresh thread)."""
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
            self.device = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
            self.stream = torch.cuda.Stream(self.device)  # the broadcast's own, off the training stream
        else:
            raise ValueError(f"unknown weight-transport backend {backend!r} (gloo or nccl)")

    def broadcast(self, flat: torch.Tensor, after=None) -> None:
        """Send (rank 0) or receive `flat`; returns once the bytes have moved. `after`: a CUDA event
        the buffer's filling was recorded on (the snapshot's copy), which the broadcast waits for.

        On CUDA, `wait()` only orders the current stream after the collective; it does not block the
        CPU. The broadcast runs on its own stream and that stream is synchronised, so a link reports
        ready only when the transfer is done, and training kernels on the default stream never queue
        behind a generator that has yet to join. (Unverified until run on a GPU: README, GPU pools.)"""
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        if self.device.type != "cuda":
            self.pg.broadcast([flat], opts).wait()
            return
        with torch.cuda.stream(self.stream):
            if after is not None:
                self.stream.wait_event(after)
            self.pg.broadcast([flat], opts).wait()
        self.stream.synchronize()


def tensor_metas(named: Iterable[tuple[str, torch.Tensor]]) -> list[TensorMeta]:
    return [TensorMeta(name, list(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in named]


def flatten(named: list[tuple[str, torch.Tensor]], dtype: torch.dtype) -> torch.Tensor:
    """The tensors end to end in one buffer of `dtype`."""
    flat = torch.empty(sum(t.numel() for _, t in named), dtype=dtype, device=named[0][1].device if named else "cpu")
    copy_into(flat, named)
    return flat


@torch.no_grad()
def copy_into(flat: torch.Tensor, named: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Each tensor copied (and cast) straight into its place in `flat`, in turn: with a lazy `named`
    (a sharded model gathering one parameter at a time) no more than one full tensor lives beside it."""
    offset = 0
    for _, t in named:
        flat[offset:offset + t.numel()].copy_(t.reshape(-1))
        offset += t.numel()
    if offset != flat.numel():
        raise ValueError(f"weight buffer holds {flat.numel()} elements, the tensors {offset}")


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
