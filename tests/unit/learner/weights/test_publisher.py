"""The weights' one owner: it decides when to snapshot, sends to every joined link that lacks the
newest version, and checks the probes generators report in their heartbeats (counted either way)."""

import pytest

from learner.training.clock import StageClock
from learner.weights.membership import OwnGroups
from learner.weights.publisher import ProbeCheck, WeightPublisher
from pipeline.messages import Heartbeat
from pipeline.probe import probe_matches
from tests.doubles import ProbeTrainer, RecordingLink


def _publisher(trainer=None, sync_every=1, steps=10):
    links = {}

    def open_link(members):
        (gid, workers), = members.items()
        links[gid] = RecordingLink(gid, workers)
        return links[gid]

    pub = WeightPublisher(trainer or ProbeTrainer(), "float32", sync_every, steps, OwnGroups(open_link),
                          StageClock(), wake=lambda: None)
    return pub, links


def _beat(gid, version, probe, status="ready"):
    return Heartbeat(generator_id=gid, status=status, version=version, pid=1,
                     probe_version=version, probe_logprobs=probe)


def test_a_probe_in_a_heartbeat_is_checked_once_and_reported_either_way():
    pub, _ = _publisher()
    pub.join(4, 1, 3)
    assert pub.on_heartbeat(_beat(4, 3, [-1.0, -2.0001, -0.5])) == ProbeCheck(4, 3, True, pytest.approx(1e-4))
    assert pub.on_heartbeat(_beat(4, 3, [-1.0, -2.0001, -0.5])) is None  # the same report again: checked once
    assert pub.checked[4] == 3
    pub.join(5, 1, 3)
    mismatch = pub.on_heartbeat(_beat(5, 3, [-1.0, -2.5, -0.5]))
    assert mismatch == ProbeCheck(5, 3, False, pytest.approx(0.5))
    assert pub.on_heartbeat(_beat(5, 9, [-1.0])) is None  # no probe of that version: nothing to compare
    assert pub.checked[5] == 3
    pub.leave(5)
    assert pub.on_heartbeat(_beat(5, 3, [-1.0, -2.0, -0.5], status="stopping")) is None  # the last word of one let go
    assert 5 not in pub.checked
    assert probe_matches([-1.0, -2.0], [-1.0, -2.0, -0.5], "float32")[0] is False  # a short report never matches
    assert probe_matches([-1.0, -2.02, -0.5], [-1.0, -2.0, -0.5], "bfloat16")[0] is True


def test_it_decides_when_a_step_copies_the_weights_and_sends_each_version_once():
    trainer = ProbeTrainer(version=0)
    pub, links = _publisher(trainer, sync_every=2, steps=5)
    assert pub.latest == 0 and pub.copy_before_step(0) is not None  # due at 0, not copied yet
    pub.join(0, 1, 0)
    pub.join(1, 1, 0)
    pub.publish(0, step_running=False)
    assert links[0].sent == [] and trainer.copies == []  # they hold version 0 already
    trainer.version = 1
    assert pub.copy_before_step(1) is None  # sync_every = 2: version 1 does not go out
    pub.publish(1, step_running=False)
    assert trainer.copies == [] and links[0].sent == []
    trainer.version = 2
    copy = pub.copy_before_step(2)
    assert copy is not None
    copy()  # the stepper runs it beside the step's forward
    assert pub.copy_before_step(2) is None  # copied once
    links[1].busy = True  # its last broadcast still running: it gets the version once free
    pub.publish(2, step_running=True)
    assert links[0].sent == [2] and links[1].sent == [] and trainer.copies == [2]
    links[1].busy = False
    pub.publish(2, step_running=True)
    assert links[1].sent == [2] and pub.published == [2]
    trainer.version = 5  # the last version always goes out
    pub.publish(5, step_running=False)
    assert links[0].sent == [2, 5] and pub.latest == 5
    assert pub.all_hold(5, heard={0, 1}) is False  # sent, but no probe reported yet
    for gid in (0, 1):
        pub.on_heartbeat(_beat(gid, 5, [-1.0, -2.0, -0.5]))
    assert pub.all_hold(5, heard={0, 1})


def test_a_newcomer_behind_the_newest_version_gets_it_at_once_even_between_due_versions():
    trainer = ProbeTrainer(version=4)
    pub, links = _publisher(trainer, sync_every=4, steps=10)
    pub.join(0, 1, 3)
    pub.publish(4, step_running=False)  # due: copied and sent
    assert links[0].sent == [4]
    trainer.version = 5  # not due
    pub.join(1, 1, 0)  # a restarted generator at its start version
    pub.publish(5, step_running=False)
    assert links[1].sent == [4] and links[0].sent == [4]  # the newest published, not the undue 5


def test_a_snapshots_host_memory_is_reused_once_no_link_sends_it_and_never_while_one_does():
    trainer = ProbeTrainer(version=1)
    pub, links = _publisher(trainer)
    pub.join(0, 1, 0)
    pub.take_snapshot()
    first = pub.snapshot
    links[0].sending = first  # a slow generator is still being sent version 1
    trainer.version = 2
    pub.take_snapshot()
    second = pub.snapshot
    trainer.version = 3
    pub.take_snapshot()  # version 1 is still in flight: its memory must not be overwritten
    assert first.weights[0][1][0].item() == 1.0 and pub.snapshot_buffers == 3
    third = pub.snapshot
    links[0].sending = None  # version 1 has landed
    trainer.version = 4
    pub.take_snapshot()  # reuses a retired block: version 1's or 2's
    assert pub.snapshot_buffers == 3
    assert any(pub.snapshot.weights[0][1] is old.weights[0][1] for old in (first, second))
    assert third.weights[0][1][0].item() == 3.0 and pub.snapshot.weights[0][1][0].item() == 4.0
    assert len(pub._retired) <= 2  # the previous one, and one spare at most
