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


# A bucket goes down the chain in chunks of this size, each passed on as soon as it is in: a member
# forwards the start of a bucket while the rest of it still arrives.
CHUNK_BYTES = 4 << 20
TAG_LIMIT = 1 << 31  # gloo's point-to-point tags are signed 32-bit


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
        self._tag = 0  # the last chunk's: a send and its receive meet on their tag
        self._forwarding: list[tuple[torch.Tensor, object]] = []  # (buffer, its send to rank + 1)
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
        self.settle()

    def start_broadcast(self, buffer: torch.Tensor):
        """The same, returned at once: gloo moves the bytes on its own threads until `.wait()`, so the
        caller can pack or load another buffer meanwhile.

        The bytes go down a chain, as NCCL's broadcast goes round a ring: rank 0 sends to rank 1, and
        each rank passes them on to the next the moment it has them (`.wait()` starts that). So a
        version leaves the learner once whatever the group's size, no member sends more than once,
        and while one bucket moves down the chain the next follows it. gloo's own broadcast is a
        binomial tree: its root sends ceil(log2 N) copies, one child after another
        (docs/gpu.md, "One group for the pool, or one each")."""
        parts = buffer.view(-1).split(CHUNK_BYTES // buffer.element_size())
        # every member starts the same buffers in the same order, so the tags agree; they wrap at
        # gloo's limit (8 PiB of chunks: some 590,000 versions of a 7B model)
        tags = [(self._tag + 1 + i) % TAG_LIMIT for i in range(len(parts))]
        self._tag = tags[-1]
        if self.rank == 0:
            return _All([self.pg.send([part], 1, tag) for part, tag in zip(parts, tags)])
        self.settle(buffer)  # a forward still reading this buffer goes out before new bytes land in it
        arriving = [self.pg.recv([part], self.rank - 1, tag) for part, tag in zip(parts, tags)]
        if self.rank + 1 == self.world_size:
            return _All(arriving)
        return _Relay(self, arriving, parts, tags)

    def settle(self, buffer: torch.Tensor | None = None) -> None:
        """Wait for this member's forwards that read `buffer` (all of them if None). A receive is done
        only once they are: a forward that fails (the next member died) is this member's failure."""
        waiting, self._forwarding = self._forwarding, []
        for held, sending in waiting:
            if buffer is None or _overlap(held, buffer):
                sending.wait()
            else:
                self._forwarding.append((held, sending))


class _All:
    """Transfers that complete together."""

    def __init__(self, works: list):
        self.works = works

    def wait(self) -> None:
        for work in self.works:
            work.wait()


class _Relay:
    """A receive in the middle of the chain: each chunk is passed to the next rank once it is in."""

    def __init__(self, group: WeightGroup, arriving: list, parts: list[torch.Tensor], tags: list[int]):
        self.group, self.arriving, self.parts, self.tags = group, arriving, parts, tags

    def wait(self) -> None:
        g = self.group
        for work, part, tag in zip(self.arriving, self.parts, self.tags):
            work.wait()
            g._forwarding.append((part, g.pg.send([part], g.rank + 1, tag)))


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.data_ptr() < b.data_ptr() + b.nbytes and b.data_ptr() < a.data_ptr() + a.nbytes
