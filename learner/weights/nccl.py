"""vLLM's NCCL trainer engine, with what one link of many needs: streams of its own, chunks packed
straight from the host snapshot, and an abort that frees a thread blocked on a dead peer.

vLLM 0.32's producer (`packed_nccl_broadcast_producer`) takes its CUDA streams from a cache keyed by
device alone (`_get_streams` in `vllm/distributed/weight_transfer/packed_tensor.py`), so every link
on the learner's GPU would send on the same two streams and wait, at each slot's `synchronize()`, for
every other link's broadcast: one stopped generator would hold them all. It also packs each chunk
by `torch.cat` of tensors already copied to the device: about twice a chunk per slot per link. Here
each engine keeps `num_buffers` streams and device buffers of its own, and copies each tensor from
pinned host memory into its slice of the slot's buffer on that slot's stream. The chunks are cut by
the rule vLLM's consumer cuts them by (`chunk_plan`), so the generators run vLLM's own `nccl` engine
unchanged. The training stream never waits on these streams, nor they on it: what is sent is a host
snapshot taken before.

Unverified on hardware (docs/gpu.md): this CPU build of torch has no NCCL, so only the chunking and
the packed bytes are tested here.
"""

from __future__ import annotations

import threading

import torch
from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource
from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerWeightTransferEngine


def chunk_plan(sizes: list[int], buffer_bytes: int) -> list[list[int]]:
    """The tensors (by index) of each chunk, in order: tensors are added until the chunk holds more
    than `buffer_bytes` (the rule of vLLM's `pack_tensors` and of its consumer, which must agree)."""
    chunks, current, total = [], [], 0
    for i, size in enumerate(sizes):
        current.append(i)
        total += size
        if total > buffer_bytes:
            chunks.append(current)
            current, total = [], 0
    if current:
        chunks.append(current)
    return chunks


def pack_into(buffer: torch.Tensor, tensors: list[torch.Tensor]) -> torch.Tensor:
    """Copy `tensors` end to end into the uint8 `buffer` (on the current stream; non-blocking from
    pinned host memory); returns the filled prefix."""
    offset = 0
    for t in tensors:
        flat = t.contiguous().view(-1).view(torch.uint8)
        buffer[offset:offset + flat.numel()].copy_(flat, non_blocking=True)
        offset += flat.numel()
    return buffer[:offset]


class LinkNcclTrainer(NCCLTrainerWeightTransferEngine):
    """vLLM's NCCL trainer engine on streams and buffers of its own (see the module's docstring)."""

    def _broadcast(self, source: WeightSource, meta: list[ParamMeta]) -> None:
        if not self.packed:
            raise ValueError("LinkNcclTrainer sends packed chunks only (NCCLTrainerInitInfo(packed=True))")
        pairs = list(self._checked_iter(source, meta))
        sizes = [t.numel() * t.element_size() for _, t in pairs]
        plan = chunk_plan(sizes, self.packed_buffer_size_bytes)
        device = torch.device("cuda", torch.accelerator.current_device_index())
        largest = max((sum(sizes[i] for i in chunk) for chunk in plan), default=0)
        if getattr(self, "_streams", None) is None:
            self._streams = [torch.cuda.Stream(device) for _ in range(self.packed_num_buffers)]
        if getattr(self, "_buffers", None) is None or self._buffers[0].numel() < largest:
            self._buffers = [torch.empty(largest, dtype=torch.uint8, device=device)
                             for _ in range(self.packed_num_buffers)]
        for n, chunk in enumerate(plan):
            slot = n % self.packed_num_buffers
            stream = self._streams[slot]
            stream.synchronize()  # this link's own slot: only this link's broadcast is waited for
            with torch.cuda.stream(stream):
                packed = pack_into(self._buffers[slot], [pairs[i][1] for i in chunk])
                self.model_update_group.broadcast(packed, src=0)
        for stream in self._streams:
            stream.synchronize()

    def _post_send_sync(self) -> None:
        """vLLM waits for the calling thread's current stream; everything here ran on this engine's."""

    def abort(self) -> None:
        """Free a thread blocked in this engine's broadcast (its peer is dead or stopped): later calls
        on the communicator become no-ops first, then NCCL aborts it. vLLM's `destroy` would skip the
        abort once the communicator is marked disabled, and could let the send loop enqueue on an
        aborted one meanwhile; hence the order here."""
        comm = self.model_update_group
        if comm is None or comm.disabled:
            return
        comm.disabled, comm.available = True, False

        def _abort() -> None:
            with torch.accelerator.device_index(comm.device.index):
                comm.nccl.ncclCommAbort(comm.comm)

        thread = threading.Thread(target=_abort, name="nccl-abort", daemon=True)
        thread.start()
        thread.join(timeout=5.0)  # ncclCommAbort may wait for CUDA graphs that captured the communicator
