"""What a broadcast sends: a snapshot in host memory that later steps cannot touch, declared to vLLM's
protocol exactly as it is iterated; and the control client's messages."""

import time

import pytest
import torch

from learner.weights.links import ControlClient, SnapshotSource, choose_backend, take_snapshot, trainer_init_info
from learner.training.trainer import Trainer
from pipeline.messages import WeightInit, WeightUpdate
from tests.builders import with_advantage
from tests.conftest import make_config
from benchmarks.learner import random_groups

pytestmark = pytest.mark.unit


def test_a_snapshot_is_a_copy_that_training_goes_on_beside(tiny_model, tmp_path):
    trainer = Trainer.from_config(make_config(tmp_path), tiny_model)
    snap = take_snapshot(trainer.version, trainer, "bfloat16")
    live = dict(trainer.model.named_parameters())
    assert [n for n, _ in snap.weights] == list(live)  # every weight, in the model's order
    assert all(t.dtype == torch.bfloat16 and t.device.type == "cpu" for _, t in snap.weights)
    before = {n: t.clone() for n, t in snap.weights}
    trainer.step(with_advantage(random_groups(2, 4, 4, 4, trainer.model.config.vocab_size)))
    moved = [n for n, t in snap.weights if not torch.equal(live[n].detach().to(torch.bfloat16), t)]
    assert moved, "the step moved no weight: the check below would show nothing"
    assert all(torch.equal(before[n], t) for n, t in snap.weights)  # the step did not reach the snapshot
    assert snap.nbytes == sum(p.numel() * 2 for p in live.values())


def test_the_source_declares_what_it_yields():
    source = SnapshotSource()
    source.snapshot = take_snapshot(3, _Weights(), "float32")
    meta = source.metadata()
    got = list(source)
    assert [(m.name, m.dtype, m.shape) for m in meta] == [(n, t.dtype, tuple(t.shape)) for n, t in got]


class _Weights:
    device = torch.device("cpu")

    def host_weights(self, dtype, into=None):
        return [("a", torch.ones(2, 3, dtype=dtype)), ("b", torch.zeros(4, dtype=dtype))]


def test_the_control_client_speaks_in_messages_and_each_update_carries_its_version():
    posted = []
    client = ControlClient("gloo", lambda gid, msg: posted.append(msg), {0: 1})
    client.init_weight_transfer_engine({"master_port": 1})
    client.version = 7
    client.start_weight_update()
    client.update_weights({"names": ["a"]})
    client.finish_weight_update()
    assert [type(m) for m in posted] == [WeightInit, WeightUpdate]
    assert posted[0].backend == "gloo" and posted[1].version == 7 and client.posted == 7


def test_a_shared_groups_client_puts_each_generators_workers_at_consecutive_ranks_and_tells_every_one():
    posted = []
    client = ControlClient("gloo", lambda gid, msg: posted.append((gid, msg)), {4: 2, 1: 1, 7: 3})
    client.init_weight_transfer_engine({"master_port": 9, "rank_offset": 1, "world_size": 7})
    assert [(gid, m.info["rank_offset"], m.info["world_size"]) for gid, m in posted] == [(4, 1, 7), (1, 3, 7), (7, 4, 7)]
    client.version = 3
    client.update_weights({"names": ["a"]})
    assert [(gid, m.version) for gid, m in posted[3:]] == [(4, 3), (1, 3), (7, 3)]


def test_backend_choice_and_init_info():
    assert choose_backend("auto", torch.device("cpu")) == "gloo"
    assert choose_backend("auto", torch.device("cuda", 1)) == "nccl"
    assert choose_backend("gloo", torch.device("cuda", 0)) == "gloo"  # one GPU for both, by choice
    # generators launched without generator.devices see the learner's GPU: NCCL would refuse two ranks on it
    assert choose_backend("auto", torch.device("cuda", 0), shares_gpu=True) == "gloo"
    assert choose_backend("nccl", torch.device("cuda", 0), shares_gpu=True) == "nccl"  # said so: check_placement's
    info = trainer_init_info("gloo", "127.0.0.1", 5555, workers=2, bucket_bytes=1 << 20, timeout_s=9.0)
    assert (info.world_size, info.master_port, info.rank) == (3, 5555, 0)
    with pytest.raises(ValueError, match="unknown weight-transfer backend 'ipc'"):
        trainer_init_info("ipc", "127.0.0.1", 1, 1, 1, 1.0)


# ---- a link to a real gloo peer: bounded waits, nothing left behind --------------------------------

def _peer(outbox):
    """The generator's side of a link, played by the test: join the group the WeightInit names."""
    from pipeline.collective import WeightGroup
    from pipeline.weight_wire import GlooInit

    init = GlooInit(**outbox.take(WeightInit).info)
    return init, WeightGroup(init.master_address, init.master_port, init.rank_offset, init.world_size, init.timeout_s,
                             init.key)


def _link(timeout_s: float):
    from learner.weights.links import GeneratorLink
    from pipeline.transport import free_port
    from tests.links import Outbox

    outbox = Outbox()
    info = trainer_init_info("gloo", "127.0.0.1", free_port(), 1, 1 << 20, timeout_s)
    return GeneratorLink(info, ControlClient("gloo", lambda gid, msg: outbox(msg), {0: 1})), outbox


class _Big:
    """Weights larger than what loopback sockets buffer (so a send to a peer that never reads blocks)."""
    device = torch.device("cpu")

    def host_weights(self, dtype, into=None):
        return [(f"w{i}", torch.ones(1 << 20, dtype=dtype)) for i in range(16)]  # 64 MB in float32


def test_a_broadcast_to_a_peer_that_never_receives_fails_the_link_at_its_timeout_and_frees_its_thread():
    link, outbox = _link(timeout_s=3.0)
    _, group = _peer(outbox)  # joined, and then stopped (as SIGSTOP would): it never receives
    assert link.wait_joined(30)
    assert link.failure() is None
    link.submit(take_snapshot(1, _Big(), "float32"))
    outbox.take(WeightUpdate)
    assert not link.wait_idle(1.0) and link.failure() is None  # blocked, and not yet overdue
    err = link.failure(now=time.monotonic() + 3.5)
    assert isinstance(err, TimeoutError) and "the broadcast of version 1" in str(err) and "weights.timeout_s" in str(err)
    assert not link.ready
    assert link.close(timeout=30), "the link's thread outlived its group's timeout"
    del group


def test_ten_links_opened_and_closed_leave_no_thread_and_no_socket_behind():
    """Each generator restart opens a link and closes the old one: nothing may pile up over days."""
    import gc
    import os
    import threading

    def census():
        gc.collect()
        return threading.active_count(), len(os.listdir("/proc/self/fd"))

    def one_life():
        from pipeline.weight_wire import BucketBuffers, GlooUpdate, receive

        link, outbox = _link(timeout_s=30.0)
        init, group = _peer(outbox)
        assert link.wait_joined(30)
        link.submit(take_snapshot(1, _Weights(), "float32"))
        receive(group, GlooUpdate(**outbox.take(WeightUpdate).info), BucketBuffers(init.bucket_bytes), lambda tensors: None)
        assert link.wait_idle(30) and link.failure() is None
        assert link.close(timeout=30)
        del group, link

    one_life()  # the first opens what is opened once per process (gloo's and torch's own threads)
    threads, fds = census()
    for _ in range(10):
        one_life()
    after_threads, after_fds = census()
    assert after_threads == threads, f"threads: {threads} before ten links, {after_threads} after"
    assert after_fds <= fds + 2, f"open files: {fds} before ten links, {after_fds} after"


@pytest.mark.filterwarnings("ignore:Tensor .* exceeds buffer_size_bytes")
def test_the_nccl_links_chunks_are_vllms_chunks_byte_for_byte():
    """The NCCL link packs its own chunks (learner/weights/nccl.py) for vLLM's unchanged consumer on the
    generators: the cuts and the bytes must be those of vLLM's own `pack_tensors`, which the
    consumer mirrors. Checked on host tensors (this torch has no NCCL to send them with)."""
    from vllm.distributed.weight_transfer.packed_tensor import pack_tensors

    from learner.weights.nccl import chunk_plan, pack_into

    gen = torch.Generator().manual_seed(0)
    tensors = [(f"t{i}", torch.randn(int(n), generator=gen).to(dtype))
               for i, (n, dtype) in enumerate(zip(torch.randint(1, 400, (40,), generator=gen),
                                                  [torch.float32, torch.bfloat16] * 20))]
    tensors.insert(7, ("huge", torch.randn(900)))  # larger than a chunk by itself
    # sizes that land exactly on the buffer: a chunk is cut only once it holds *more* than the buffer
    tensors += [(f"even{i}", torch.zeros(64)) for i in range(6)]  # 256 bytes each
    assert chunk_plan([256] * 6, 512) == [[0, 1, 2], [3, 4, 5]]
    for buffer_bytes in (256, 512, 1000, 4096, 1 << 20):
        sizes = [t.numel() * t.element_size() for _, t in tensors]
        plan = chunk_plan(sizes, buffer_bytes)
        theirs, it = [], iter(tensors)
        while (chunk := pack_tensors(it, lambda item: item[1], buffer_bytes)) is not None:  # noqa
            theirs.append(chunk)
        assert [[tensors[i][0] for i in c] for c in plan] == [c.names for c in theirs], buffer_bytes
        buffer = torch.empty(max(sum(sizes[i] for i in c) for c in plan), dtype=torch.uint8)
        for c, chunk in zip(plan, theirs):
            assert torch.equal(pack_into(buffer, [tensors[i][1] for i in c]), chunk.packed_tensor)
