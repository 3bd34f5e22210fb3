"""The weight group's broadcast (pipeline/collective.py): a chain, rank 0 to 1 to 2 and on, each
member passing the bytes on as it gets them. Ranks are threads here, on real gloo groups."""

import threading
import time

import pytest
import torch

from pipeline.collective import WeightGroup
from pipeline.transport import free_port
from pipeline.weight_wire import BucketBuffers, GlooUpdate, TensorMeta, describe, receive

pytestmark = pytest.mark.unit

MB = 1 << 20


def _groups(world: int, timeout_s: float = 60.0) -> list[WeightGroup]:
    port, groups = free_port(), [None] * world

    def join(rank: int) -> None:
        groups[rank] = WeightGroup("127.0.0.1", port, rank, world, timeout_s, key="ab" * 32)
    _on_threads(join, range(world))
    return groups


def _on_threads(fn, items) -> None:
    threads = [threading.Thread(target=fn, args=(i,)) for i in items]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert not any(t.is_alive() for t in threads), "a rank is stuck"


def test_the_first_send_needs_only_the_next_member():
    """Rank 0 hands its bucket to rank 1 and is done, while ranks 2 and 3 have not started: a
    version leaves the learner once, whatever the group's size (gloo's tree would send to rank 2
    as well, and wait for it)."""
    groups, bucket = _groups(4, timeout_s=20), torch.randint(0, 255, (32 * MB,), dtype=torch.uint8)
    got = [torch.empty_like(bucket) for _ in range(4)]
    first_two_done = threading.Event()

    def rank(r: int) -> None:
        if r >= 2:
            assert first_two_done.wait(60)
        work = groups[r].start_broadcast(bucket if r == 0 else got[r])
        work.wait()
        if r == 1:
            first_two_done.set()
        groups[r].settle()

    _on_threads(rank, range(4))
    assert all(torch.equal(got[r], bucket) for r in (1, 2, 3))


def test_a_member_passes_a_bucket_on_before_its_buffer_takes_the_next():
    """Two receive buffers per member, the last member slow to take each bucket: the members before
    it must not overwrite a buffer that is still going out to it."""
    groups = _groups(4)
    named = [(f"t{i}", torch.full((2 * MB,), float(i))) for i in range(6)]  # 8 MB each, a bucket each
    update = GlooUpdate(**describe(TensorMeta(n, t.dtype, tuple(t.shape)) for n, t in named))
    loaded: dict[int, list] = {r: [] for r in (1, 2, 3)}

    def rank(r: int) -> None:
        if r == 0:
            for _, t in named:
                groups[0].broadcast(t.view(torch.uint8))
            return

        def load(pairs):
            if r == 3:
                time.sleep(0.1)
            loaded[r].extend((n, t.clone()) for n, t in pairs)
        receive(groups[r], update, BucketBuffers(8 * MB), load)

    _on_threads(rank, range(4))
    for r in (1, 2, 3):
        assert [n for n, _ in loaded[r]] == [n for n, _ in named]
        assert all(torch.equal(got, t) for (_, t), (_, got) in zip(named, loaded[r])), r


def test_chunk_tags_wrap_at_gloos_limit_and_the_bytes_still_arrive():
    """A long run passes gloo's largest tag (2**31 - 1): the tags wrap and every rank agrees."""
    groups = _groups(3)
    for g in groups:
        g._tag = (1 << 31) - 3  # three chunks before the limit
    sent = torch.randint(0, 255, (6 * 4 * MB,), dtype=torch.uint8)  # six chunks
    got = [torch.empty_like(sent) for _ in range(3)]
    _on_threads(lambda r: groups[r].broadcast(sent if r == 0 else got[r]), range(3))
    assert torch.equal(got[1], sent) and torch.equal(got[2], sent)
