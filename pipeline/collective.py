"""The torch.distributed group under the gloo weight-transfer engine (pipeline/weight_transfer.py).

The group is built directly from a TCPStore and a ProcessGroup object, not through
`init_process_group`, because a generator process already has vLLM's own default group; this one
lives beside it. (On GPUs, vLLM's own NCCL engine builds its group.)
"""

from __future__ import annotations

import datetime
import hashlib
import hmac

import torch
import torch.distributed as dist


class GroupAuthError(RuntimeError):
    """A member of a weight group did not present the group's key."""


class WeightGroup:
    """One member of a gloo group of `world_size` ranks; rank 0 (the learner) hosts the rendezvous.

    The rendezvous (a TCPStore) takes whoever connects first. So every member proves, before any
    weight moves, that it holds the group's `key`: a secret the learner makes for each group and sends
    to its generator only over the control channel (CURVE-authenticated beyond loopback). A member
    that cannot is refused: the group fails at once on every rank, naming the rank.
    """

    def __init__(self, host: str, port: int, rank: int, world_size: int, timeout_s: float = 600.0, key: str = ""):
        timeout = datetime.timedelta(seconds=timeout_s)
        self.store = dist.TCPStore(host, port, world_size, is_master=(rank == 0), timeout=timeout,
                                   wait_for_workers=False)
        self.rank, self.world_size = rank, world_size
        self.pg = dist.ProcessGroupGloo(self.store, rank, world_size, timeout)
        if key:
            self._authenticate(bytes.fromhex(key))

    def _authenticate(self, key: bytes) -> None:
        """Each rank shows HMAC(key, its rank); every rank checks every other's."""
        def proof(rank: int) -> torch.Tensor:
            digest = hmac.new(key, f"weight group rank {rank}".encode(), hashlib.sha256).digest()
            return torch.frombuffer(bytearray(digest), dtype=torch.uint8)

        shown = [torch.empty(32, dtype=torch.uint8) for _ in range(self.world_size)]
        self.pg.allgather([shown], [proof(self.rank)]).wait()
        for rank, got in enumerate(shown):
            if not hmac.compare_digest(bytes(got.tolist()), bytes(proof(rank).tolist())):
                raise GroupAuthError(f"weight group member at rank {rank} did not present the group's key: refused "
                                     f"(a peer that reached the rendezvous port without the run's control channel)")

    def broadcast(self, buffer: torch.Tensor) -> None:
        """Send (rank 0) or receive `buffer` (in host memory); returns once the bytes have moved."""
        self.start_broadcast(buffer).wait()

    def start_broadcast(self, buffer: torch.Tensor):
        """The same, returned at once: gloo moves the bytes on its own thread until `.wait()`, so the
        caller can pack or load another buffer meanwhile."""
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        return self.pg.broadcast([buffer], opts)
