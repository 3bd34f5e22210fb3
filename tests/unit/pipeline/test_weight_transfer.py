"""The gloo weight-transfer engine (pipeline/weight_transfer.py): vLLM's protocol over a real gloo
group, with the receiving workers as threads of this process (the end-to-end tests put them in vLLM).
"""

import threading

import pytest
import torch
from vllm.distributed.weight_transfer.base import ParamMeta

from pipeline.collective import GroupAuthError, WeightGroup
from pipeline.transport import free_port
from pipeline.weight_transfer import GlooInitInfo, GlooTrainerInitInfo, GlooTrainerWeightTransferEngine, GlooUpdateInfo
from pipeline.weight_wire import receive

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
                                                                     key=info.key), info.bucket_bytes)))

    def start_weight_update(self) -> None:
        self.calls.append("start")

    def update_weights(self, update_info: dict) -> None:
        self.calls.append("update")
        info = GlooUpdateInfo(**update_info)

        def worker(r):
            group, size = self.groups[r]
            receive(group, info, size, lambda pairs: self.loaded.setdefault(r, []).extend(
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
