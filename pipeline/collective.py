"""The torch.distributed group under the gloo weight-transfer engine (pipeline/weight_transfer.py).

The group is built directly from a TCPStore and a ProcessGroup object, not through
`init_process_group`, because a generator process already has vLLM's own default group; this one
lives beside it. (On GPUs, vLLM's own NCCL engine builds its group.)
"""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist


class WeightGroup:
    """One member of a gloo group of `world_size` ranks; rank 0 (the learner) hosts the rendezvous."""

    def __init__(self, host: str, port: int, rank: int, world_size: int, timeout_s: float = 600.0):
        timeout = datetime.timedelta(seconds=timeout_s)
        self.store = dist.TCPStore(host, port, world_size, is_master=(rank == 0), timeout=timeout,
                                   wait_for_workers=False)
        self.rank, self.world_size = rank, world_size
        self.pg = dist.ProcessGroupGloo(self.store, rank, world_size, timeout)

    def broadcast(self, buffer: torch.Tensor) -> None:
        """Send (rank 0) or receive `buffer` (in host memory); returns once the bytes have moved."""
        self.start_broadcast(buffer).wait()

    def start_broadcast(self, buffer: torch.Tensor):
        """The same, returned at once: gloo moves the bytes on its own thread until `.wait()`, so the
        caller can pack or load another buffer meanwhile."""
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        return self.pg.broadcast([buffer], opts)

