"""vLLM's weight-transfer protocol over gloo: the CPU (and host-staged) backend of the weight path.

vLLM 0.32 carries trainer -> engine weights through `vllm.distributed.weight_transfer`: an engine class
per backend on the worker side (`init_transfer_engine`, `start_weight_update`, `update_weights`,
`finish_weight_update`) and a trainer-side engine that drives those four phases through a small client
(`VLLMWeightSyncClient`) while it broadcasts. On GPUs the project uses vLLM's own `nccl` engines. This
module adds the same protocol over gloo, so the CPU path runs the very code the GPU path runs, bar the
transport: weights leave the learner as packed buckets of `weights.bucket_bytes` (never one buffer of
the whole model), and each worker of an engine joins the group at its own rank (`rank_offset` plus the
worker's rank, as vLLM's NCCL engine does), so tensor-parallel workers each receive the weights.

`register` is a vLLM plugin (entry point `vllm.general_plugins` in pyproject.toml): vLLM runs it in
every process it starts, the workers of a tensor-parallel engine included, so they all know "gloo".
"""

from __future__ import annotations

import logging
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from vllm.distributed.weight_transfer.base import (
    ParamMeta, TrainerInitInfo, TrainerWeightTransferEngine, VLLMWeightSyncClient, WeightSource,
    WeightTransferEngine, WeightTransferInitInfo, WeightTransferUpdateInfo,
)
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory, WeightTransferTrainerFactory

from pipeline.collective import WeightGroup
from pipeline.weight_wire import DEFAULT_BUCKET_BYTES, BucketBuffers, GlooInit, GlooUpdate, buckets, describe, receive

log = logging.getLogger(__name__)

BACKEND = "gloo"


@dataclass(kw_only=True)
class GlooInitInfo(GlooInit, WeightTransferInitInfo):
    """`GlooInit` as vLLM's engine parses it."""


@dataclass
class GlooUpdateInfo(GlooUpdate, WeightTransferUpdateInfo):
    """`GlooUpdate` as vLLM's engine parses it."""


class GlooWeightTransferEngine(WeightTransferEngine[GlooInitInfo, GlooUpdateInfo]):
    """The worker side: receive each bucket, load its tensors through the model's own `load_weights`
    (which fuses q/k/v and gate/up, and shards them for tensor parallelism) into the live parameters."""

    init_info_cls = GlooInitInfo
    update_info_cls = GlooUpdateInfo

    def __init__(self, config, vllm_config, device, model) -> None:
        super().__init__(config, vllm_config, device, model)
        self.group: WeightGroup | None = None
        self.buffers = BucketBuffers()

    def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
        """Join the trainer's group (again, after a restart of the trainer's side) at this worker's rank."""
        p = self.parallel_config
        rank = p.data_parallel_index * p.world_size + p.rank + init_info.rank_offset
        self.shutdown()
        self.buffers = BucketBuffers(init_info.bucket_bytes)  # held across versions: no page faults per bucket
        self.group = WeightGroup(init_info.master_address, init_info.master_port, rank, init_info.world_size,
                                 init_info.timeout_s, init_info.key)

    def start_weight_update(self) -> None:
        """Nothing to prepare: tensors load in place as their buckets arrive (on CPU the linear layers
        compute from those parameters: `keep_cpu_weights_reloadable`)."""

    def finish_weight_update(self) -> None:
        """Nothing to finalise (see `start_weight_update`)."""

    def update_weights(self, update_info: dict[str, Any]) -> None:
        # The base class synchronises "the accelerator", which raises where there is none.
        self.receive_weights(self.parse_update_info(update_info))
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def receive_weights(self, update_info: GlooUpdateInfo) -> None:
        if self.group is None:
            raise RuntimeError("gloo weight transfer: init_weight_transfer_engine was not called")
        try:
            receive(self.group, update_info, self.buffers, self.model.load_weights)
        except Exception:
            # Leave the group at once: in a shared group's chain, members downstream of this one wait on
            # its sockets, which close with it, so they fail now rather than at their timeout.
            self.shutdown()
            raise

    def shutdown(self) -> None:
        self.group = None


@dataclass
class GlooTrainerInitInfo(TrainerInitInfo):
    """The trainer's side of the group: it hosts the rendezvous at rank 0; `world_size` counts it and
    every worker of the engine(s) it sends to."""

    backend: ClassVar[str] = BACKEND

    master_address: str
    master_port: int
    world_size: int
    bucket_bytes: int = DEFAULT_BUCKET_BYTES
    timeout_s: float = 600.0
    key: str = ""  # the group's secret: a fresh one per group if empty (pipeline/collective.py)


class GlooTrainerWeightTransferEngine(TrainerWeightTransferEngine[GlooTrainerInitInfo]):
    """The trainer side, shaped as vLLM's NCCL one: the handshake at `trainer_init`, then per version
    `send_weights`: start, update (the workers receive while the trainer broadcasts), finish."""

    init_info_cls = GlooTrainerInitInfo

    def __init__(self, *, client: VLLMWeightSyncClient, source: WeightSource | None, is_sender: bool,
                 bucket_bytes: int) -> None:
        super().__init__(client=client, source=source, is_sender=is_sender)
        self.bucket_bytes = bucket_bytes
        self.group: WeightGroup | None = None

    @classmethod
    def trainer_init(cls, init_info: GlooTrainerInitInfo, *, client: VLLMWeightSyncClient,
                     source: WeightSource | None = None) -> "GlooTrainerWeightTransferEngine":
        if source is None:
            raise ValueError("gloo trainer weight transfer needs a WeightSource")
        engine = cls(client=client, source=source, is_sender=init_info.is_sender, bucket_bytes=init_info.bucket_bytes)
        if not engine.is_sender:
            return engine
        key = init_info.key or secrets.token_hex(32)  # reaches the workers only over the control channel
        worker = GlooInitInfo(master_address=init_info.master_address, master_port=init_info.master_port,
                              rank_offset=1, world_size=init_info.world_size, bucket_bytes=init_info.bucket_bytes,
                              timeout_s=init_info.timeout_s, key=key)
        # The workers block in the rendezvous inside init_weight_transfer_engine: ask on a side thread
        # while this side opens the group.
        with ThreadPoolExecutor(max_workers=1) as exe:
            future = exe.submit(client.init_weight_transfer_engine, asdict(worker))
            engine.group = WeightGroup(init_info.master_address, init_info.master_port, 0, init_info.world_size,
                                       init_info.timeout_s, key)
            future.result()
        return engine

    def send_weights(self) -> None:
        meta = self.source.metadata()
        self.client.start_weight_update()
        exe = ThreadPoolExecutor(max_workers=1)
        try:
            future = exe.submit(self.client.update_weights, describe(meta))
            self._broadcast(meta)
            future.result()
        finally:
            exe.shutdown(wait=False)  # never join a client stuck on a peer that is gone (as vLLM's NCCL engine)
        self.client.finish_weight_update()

    def _broadcast(self, meta: list[ParamMeta]) -> None:
        """Each bucket taken from the source as it is iterated, then sent while the next is taken: a
        view where the bucket's tensors lie end to end in one block (a snapshot does), else packed
        into a buffer of its own (two beside the source at a time)."""
        pairs = iter(self.source)
        sending = None
        for bucket in buckets(meta, self.bucket_bytes):
            parts = []
            for m in bucket:
                name, t = next(pairs)
                if name != m.name or t.dtype != m.dtype or tuple(t.shape) != m.shape:
                    raise ValueError(f"weight source yielded {name} {t.dtype} {tuple(t.shape)} where its metadata "
                                     f"declared {m.name} {m.dtype} {m.shape}")
                parts.append(t.contiguous().view(-1).view(torch.uint8))
            packed = _packed(parts)
            del parts
            if sending is not None:
                sending[0].wait()
            sending = (self.group.start_broadcast(packed), packed)  # the buffer lives until it is sent
        if sending is not None:
            sending[0].wait()

    def shutdown(self) -> None:
        self.group = None


def _packed(parts: list[torch.Tensor]) -> torch.Tensor:
    """Flat byte tensors as one: a view of their block where each starts at the byte after the
    previous one's end, as the tensors of a snapshot do (one host block per version:
    learner/training/trainer.py, `host_buffer`), so sending a bucket copies nothing; else a copy."""
    storage = parts[0].untyped_storage()
    if all(p.untyped_storage().data_ptr() == storage.data_ptr() for p in parts) and all(
            a.data_ptr() + a.numel() == b.data_ptr() for a, b in zip(parts, parts[1:])):
        offset = parts[0].data_ptr() - storage.data_ptr()
        return torch.empty(0, dtype=torch.uint8).set_(storage, offset, (sum(p.numel() for p in parts),))
    return torch.cat(parts)


def keep_cpu_weights_reloadable() -> None:
    """Make vLLM's CPU linear layers compute from their `weight` parameter.

    On CPU, vLLM 0.32 repacks each linear (and the LM head) into a kernel-specific copy held in a
    closure and drops the parameter; loading into the parameter afterwards would leave the engine
    sampling from the *old* packed weights (measured: probe log-probs off by up to 2.3 nats). Plain
    `F.linear` on the live parameter keeps every load effective. Must run in each worker process
    before its model loads (`register` does); GPU paths do not need it.
    """
    import torch.nn.functional as F
    from vllm.model_executor.layers import utils

    def dispatch(layer, remove_weight: bool) -> None:  # noqa: ARG001 - signature of the original
        layer.cpu_linear = lambda x, weight, bias: F.linear(x, weight, bias)

    utils.dispatch_cpu_unquantized_gemm = dispatch


def register() -> None:
    """The vLLM plugin: the gloo engines in both of vLLM's registries, in whatever process runs this
    (vLLM may load plugins more than once per process)."""
    for factory, cls in ((WeightTransferEngineFactory, "GlooWeightTransferEngine"),
                         (WeightTransferTrainerFactory, "GlooTrainerWeightTransferEngine")):
        try:
            factory.register_engine(BACKEND, __name__, cls)
        except ValueError:
            pass  # registered already
    if not torch.cuda.is_available():
        keep_cpu_weights_reloadable()

