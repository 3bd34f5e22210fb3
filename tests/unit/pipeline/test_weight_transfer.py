"""The gloo weight-transfer engine (pipeline/weight_transfer.py): vLLM's protocol over a real gloo
group, with the receiving workers as threads of this process (the end-to-end tests put them in vLLM).
"""

import threading

import pytest
import torch
from vllm.distributed.weight_transfer.base import ParamMeta

from pipeline.collective import GroupAuthError, WeightGroup
from pipeline.transport import free_port
from pipeline.weight_transfer import (
    GlooInitInfo, GlooTrainerInitInfo, GlooTrainerWeightTransferEngine, GlooUpdateInfo, _packed,
)
from pipeline.weight_wire import BucketBuffers, GlooUpdate, describe, receive

pytestmark = pytest.mark.unit


class _Source:
    """A WeightSource over fixed tensors."""

    def __init__(self, named):
        self.named = named

    def metadata(self):
        return [ParamMeta(n, t.dtype, tuple(t.shape)) for n, t in self.named]

    def __iter__(self):
        return iter(self.named)


class _Workers:
    """Stands in for `VLLMWeightSyncClient` and an engine's workers: each call reaches every worker
    (a thread), as vLLM's collective_rpc reaches each tensor-parallel worker."""

    def __init__(self, count: int):
        self.count, self.groups, self.loaded, self.calls = count, {}, {}, []

    def _each(self, fn) -> None:
        threads = [threading.Thread(target=fn, args=(r,)) for r in range(self.count)]
        [t.start() for t in threads]
        [t.join(60) for t in threads]

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        info = GlooInitInfo(**init_info)
        self.calls.append("init")
        self._each(lambda r: self.groups.__setitem__(r, (WeightGroup(info.master_address, info.master_port,
                                                                     info.rank_offset + r, info.world_size,
                                                                     key=info.key), BucketBuffers(info.bucket_bytes))))

    def start_weight_update(self) -> None:
        self.calls.append("start")

    def update_weights(self, update_info: dict) -> None:
        self.calls.append("update")
        info = GlooUpdateInfo(**update_info)

        def worker(r):
            group, buffers = self.groups[r]
            receive(group, info, buffers, lambda pairs: self.loaded.setdefault(r, []).extend(
                (n, t.clone()) for n, t in pairs))

        self._each(worker)

    def finish_weight_update(self, weight_version=None) -> None:
        self.calls.append("finish")


def test_every_worker_receives_every_tensor_in_buckets():
    """Two workers (a tensor-parallel engine) at ranks 1 and 2: each gets every tensor, bit for bit,
    across several buckets, and the phases run in vLLM's order."""
    named = [("a", torch.randn(300)), ("b", torch.randn(20, 20)), ("c", torch.arange(7.0)), ("d", torch.randn(1000))]
    workers = _Workers(2)
    engine = GlooTrainerWeightTransferEngine.trainer_init(
        GlooTrainerInitInfo(master_address="127.0.0.1", master_port=free_port(), world_size=3, bucket_bytes=2000,
                            timeout_s=60, rank=0),
        client=workers, source=_Source(named))
    engine.send_weights()
    assert workers.calls == ["init", "start", "update", "finish"]
    for r in (0, 1):
        got = dict(workers.loaded[r])
        assert list(got) == ["a", "b", "c", "d"]
        for name, t in named:
            assert torch.equal(got[name], t)


def test_buckets_of_one_size_arrive_and_load_in_the_order_declared():
    """Buckets of equal size: a swap would not abort on a size mismatch, it would load one tensor's
    bytes under another's name. Each worker loads the names in order, each with its own values."""
    named = [(f"w{i}", torch.full((256,), float(i))) for i in range(5)]
    workers = _Workers(1)
    engine = GlooTrainerWeightTransferEngine.trainer_init(
        GlooTrainerInitInfo(master_address="127.0.0.1", master_port=free_port(), world_size=2, bucket_bytes=1024,
                            timeout_s=60, rank=0),
        client=workers, source=_Source(named))  # 1 KiB buckets: one tensor each
    engine.send_weights()
    assert [n for n, _ in workers.loaded[0]] == [n for n, _ in named]
    for (name, t), (_, got) in zip(named, workers.loaded[0]):
        assert torch.equal(got, t), name


def test_a_snapshot_block_is_sent_as_views_and_every_version_arrives_whole():
    """The learner's snapshot is one host block (host_buffer): its buckets go out as views of it, and
    the workers' two receive buffers, kept from one version to the next, never mix versions."""
    from learner.training.trainer import host_buffer

    block = host_buffer([("a", (300,)), ("b", (20, 20)), ("c", (7,)), ("d", (1000,))], torch.float32, pin=False)
    workers = _Workers(2)
    engine = GlooTrainerWeightTransferEngine.trainer_init(
        GlooTrainerInitInfo(master_address="127.0.0.1", master_port=free_port(), world_size=3, bucket_bytes=2000,
                            timeout_s=60, rank=0),
        client=workers, source=_Source(block))
    for version in (1, 2, 3):
        for i, (_, t) in enumerate(block):
            t.copy_(torch.randn(t.shape) + 10 * version + i)
        workers.loaded = {}
        engine.send_weights()
        for r in (0, 1):
            assert [n for n, _ in workers.loaded[r]] == ["a", "b", "c", "d"]
            for (name, t), (_, got) in zip(block, workers.loaded[r]):
                assert torch.equal(got, t), (version, r, name)
    assert all(buffers.nbytes > 0 for _, buffers in workers.groups.values())  # kept for the next version


def test_packing_is_a_view_only_where_the_tensors_lie_end_to_end_in_one_block():
    block = torch.arange(60, dtype=torch.float32)
    flat = [t.view(torch.uint8) for t in (block[:10], block[10:30], block[30:60])]
    memory = bytearray(range(10))
    view = _packed(flat[1:])
    assert view.data_ptr() == flat[1].data_ptr() and torch.equal(view.view(torch.float32), block[10:60])
    for parts in ([flat[0], flat[2]], [flat[1], flat[0]],  # a gap; out of order
                  [torch.ones(5).view(torch.uint8), torch.zeros(5).view(torch.uint8)],  # two blocks
                  [torch.frombuffer(memory, dtype=torch.uint8, count=5, offset=o) for o in (0, 5)]):  # two, adjacent
        packed = _packed(parts)
        assert packed.data_ptr() not in {p.data_ptr() for p in parts}
        assert torch.equal(packed, torch.cat(parts))


def test_receive_buffers_are_reused_grown_for_a_large_tensor_and_dropped_after_a_failure():
    buffers = BucketBuffers(1024)
    first, other = buffers.take(0, 1024), buffers.take(1, 512)
    assert buffers.take(2, 100).data_ptr() == first.data_ptr() and other.data_ptr() != first.data_ptr()
    assert buffers.take(0, 4096).numel() == 4096 and buffers.nbytes == 4096 + 1024  # a tensor alone in its bucket

    class BrokenGroup:  # test double: a group whose peer is gone
        def start_broadcast(self, buffer):
            raise RuntimeError("peer closed the connection")

    update = GlooUpdate(**describe([ParamMeta("a", torch.float32, (8,))]))
    with pytest.raises(RuntimeError, match="peer closed"):
        receive(BrokenGroup(), update, buffers, lambda pairs: None)
    assert buffers.nbytes == 0  # an abandoned transfer may still write into the old ones


def test_a_source_that_disagrees_with_its_metadata_is_named():
    class Liar(_Source):
        def metadata(self):
            return [ParamMeta("a", torch.float32, (4,))]

    engine = GlooTrainerWeightTransferEngine(client=_Workers(0), source=Liar([("b", torch.zeros(4))]), is_sender=True,
                                             bucket_bytes=1 << 20)
    with pytest.raises(ValueError, match="yielded b .* declared a"):
        engine._broadcast(engine.source.metadata())


class _Intruder(_Workers):
    """A peer that reached the rendezvous port, but not through the run's control channel: it joins
    the group without the group's key."""

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        info = GlooInitInfo(**{**init_info, "key": ""})
        self.refused = []

        def join(r):
            try:
                WeightGroup(info.master_address, info.master_port, info.rank_offset + r, info.world_size, key="00" * 32)
            except GroupAuthError as exc:
                self.refused.append(str(exc))
        self._each(join)


def test_a_peer_without_the_groups_key_is_refused_before_any_weight_moves():
    intruder = _Intruder(1)
    with pytest.raises(GroupAuthError, match="rank 1 did not present the group's key"):
        GlooTrainerWeightTransferEngine.trainer_init(
            GlooTrainerInitInfo(master_address="127.0.0.1", master_port=free_port(), world_size=2, timeout_s=60, rank=0),
            client=intruder, source=_Source([("a", torch.zeros(4))]))
    assert intruder.refused and "rank 0" in intruder.refused[0]  # it learns nothing either: rank 0's proof fails too
