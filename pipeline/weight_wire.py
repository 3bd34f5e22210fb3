"""The gloo weight path's wire, without vLLM: what a worker needs to join, what an update names, how
the tensors are cut into packed buckets, and how a receiver takes them in.

`pipeline/weight_transfer.py` builds vLLM's engines on these; the stand-in engine (actors/standin.py)
uses them directly, so that a stand-in generator starts without importing vLLM (seconds per restart
in the restart-heavy tests).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch

from pipeline.collective import WeightGroup

DEFAULT_BUCKET_BYTES = 64 << 20


class Meta(Protocol):
    """One tensor as the update names it (vLLM's `ParamMeta` is one)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]


class TensorMeta(NamedTuple):
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]


@dataclass(kw_only=True)
class GlooInit:
    """What a worker needs to join the group: the trainer's rendezvous, and its rank offset."""

    master_address: str
    master_port: int
    rank_offset: int
    world_size: int
    bucket_bytes: int = DEFAULT_BUCKET_BYTES
    timeout_s: float = 600.0
    key: str = ""  # the group's secret (hex), which every member must show (pipeline/collective.py)


@dataclass
class GlooUpdate:
    """One update: the tensors in the order they are packed, as vLLM's NCCL update info names them."""

    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]

    def __post_init__(self) -> None:
        if not len(self.names) == len(self.dtype_names) == len(self.shapes):
            raise ValueError(f"update info: {len(self.names)} names, {len(self.dtype_names)} dtypes, "
                             f"{len(self.shapes)} shapes")

    def metas(self) -> list[TensorMeta]:
        return [TensorMeta(n, getattr(torch, d), tuple(s)) for n, d, s in zip(self.names, self.dtype_names, self.shapes)]


def describe(meta: Iterable[Meta]) -> dict[str, list]:
    """The fields of the update that sends these tensors."""
    meta = list(meta)
    return {"names": [m.name for m in meta], "dtype_names": [str(m.dtype).removeprefix("torch.") for m in meta],
            "shapes": [list(m.shape) for m in meta]}


def nbytes(m: Meta) -> int:
    return math.prod(m.shape) * m.dtype.itemsize


def buckets(meta: list[Meta], bucket_bytes: int) -> list[list[Meta]]:
    """The tensors cut into consecutive buckets of at most `bucket_bytes` (a larger tensor alone in
    its own). Both sides cut from the same metadata with this one rule, so they cannot disagree."""
    out: list[list[Meta]] = []
    size = bucket_bytes + 1
    for m in meta:
        if size + nbytes(m) > bucket_bytes:
            out.append([])
            size = 0
        out[-1].append(m)
        size += nbytes(m)
    return out


def unpack(packed: torch.Tensor, bucket: list[Meta]) -> list[tuple[str, torch.Tensor]]:
    """A received bucket's tensors: views of it (as vLLM's `unpack_tensor` gives them)."""
    parts = packed.split([nbytes(m) for m in bucket])
    return [(m.name, p.view(m.dtype).view(m.shape)) for m, p in zip(bucket, parts)]


class BucketBuffers:
    """The two host buffers a receiver takes buckets into, kept from one version to the next. A fresh
    buffer of 64 MB pays its page faults on every bucket: 20 ms to fill here against 6 ms for one
    used before (docs/notes/results-log-to-2026-12-05.md, session 13), and every generator receives every version."""

    def __init__(self, bucket_bytes: int = DEFAULT_BUCKET_BYTES):
        self.bucket_bytes = bucket_bytes
        self.drop()  # none until the first bucket: a generator that never receives holds nothing

    def take(self, i: int, size: int) -> torch.Tensor:
        """`size` bytes of buffer `i % 2` (grown for a tensor larger than a bucket, which travels alone)."""
        if self._held[i % 2].numel() < size:
            self._held[i % 2] = torch.empty(max(size, self.bucket_bytes), dtype=torch.uint8)
        return self._held[i % 2][:size]

    @property
    def nbytes(self) -> int:
        """What the two buffers hold now."""
        return sum(b.numel() for b in self._held)

    def drop(self) -> None:
        """Let both go: after a failed receive an abandoned transfer may still write into them."""
        self._held = [torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.uint8)]


def receive(group: WeightGroup, update: GlooUpdate, buffers: BucketBuffers,
            load: Callable[[list[tuple[str, torch.Tensor]]], object]) -> None:
    """Receive an update's buckets in turn, handing each bucket's tensors to `load` (views of the
    bucket, in host memory, valid only until `load` returns: the buffer takes the bucket after
    next). Two buckets at a time: the next arrives while this one loads."""
    loading = None
    try:
        for i, bucket in enumerate(buckets(update.metas(), buffers.bucket_bytes)):
            packed = buffers.take(i, sum(nbytes(m) for m in bucket))
            arriving = group.start_broadcast(packed)
            if loading is not None:
                load(loading)
            arriving.wait()
            loading = unpack(packed, bucket)
        if loading is not None:
            load(loading)
        group.settle()  # and passed on down the chain (pipeline/collective.py)
    except BaseException:
        buffers.drop()
        raise
