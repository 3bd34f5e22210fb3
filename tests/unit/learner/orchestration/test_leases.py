"""The lease book: leases, the data cursor, and the accounting identity, without processes."""

import time

import pytest

from learner.orchestration.schedule import temperature
from pipeline.config import ScheduleConfig, from_dict
from tests.builders import lease_book


def test_each_prompt_once_per_epoch_then_next_epoch():
    _, d = lease_book(num=5)
    first = [d.lease(0, 0) for _ in range(5)]
    assert sorted(a.prompt_id for a in first) == list(range(5))
    assert {a.epoch for a in first} == {0}
    assert d.lease(0, 0).epoch == 1


def test_temperature_comes_from_the_tracker():
    tracker, d = lease_book(num=1)
    for _ in range(3):
        tracker.record_visit(0, "positive", 1.0, 1.0, 0)
    a = d.lease(0, 0)
    assert a.temperature == pytest.approx(temperature(3, ScheduleConfig())) == pytest.approx(1.06)


def test_accounting_identity_through_every_outcome():
    _, d = lease_book(num=5)
    now = time.monotonic()
    leases = [d.lease(0, 0, now=now) for _ in range(6)]
    assert d.counts_add_up() and d.open == 6
    assert d.returned(leases[0].lease_id) is not None
    assert d.returned(leases[0].lease_id) is None  # a duplicate is not a second return
    d.close(leases[0].lease_id, "trained")
    d.returned(leases[1].lease_id)
    d.close(leases[1].lease_id, "dropped_stale")
    d.returned(leases[2].lease_id)
    d.close(leases[2].lease_id, "failed", "bad_rollout")
    expired = d.expire(now=now + 11.0)  # the other three
    assert {l.lease_id for l in expired} == {a.lease_id for a in leases[3:]}
    assert d.counts_add_up() and d.open == 0
    assert dict(d.outcomes) == {"trained": 1, "dropped_stale": 1, "dropped_filtered": 0, "failed": 1, "reissued": 3}
    # an expired visit is leased again: same prompt and epoch, new lease id
    again = d.lease(0, 0)
    assert (again.prompt_id, again.epoch) == (leases[3].prompt_id, leases[3].epoch)
    assert again.lease_id not in {a.lease_id for a in leases}
    assert d.returned(leases[3].lease_id) is None  # the late rollout of the expired lease is refused


def test_a_training_and_a_held_out_lease_share_one_assignment_builder():
    _, d = lease_book(num=3, group_size=4)
    a = d.lease(2, 7)
    assert (a.n, a.policy_version, a.max_tokens, a.answer) == (4, 7, d.max_tokens, str(a.prompt_id))
    assert d.leases[a.lease_id].generator_id == 2


def test_outcomes_are_counted_by_h_at_lease_and_by_response_length():
    cfg = from_dict({"generator": {"max_tokens": 100}})
    tracker, d = lease_book(num=2, cfg=cfg)
    for _ in range(4):
        tracker.record_visit(1, "positive", 1.0, 1.0, 0)  # prompt 1: H = 4 when leased, counted as "3+"
    a, b = sorted((d.lease(0, 0) for _ in range(2)), key=lambda x: x.prompt_id)
    tracker.record_visit(1, "positive", 1.0, 1.0, 0)  # H moves on after the lease: the lease's H counts
    for x in (a, b):
        d.returned(x.lease_id)
    short, long = 0.1 * d.max_tokens, 0.9 * d.max_tokens
    assert d.bins(b.lease_id, long) == ("3+", "q4")
    d.close(a.lease_id, "trained", mean_tokens=short)
    d.close(b.lease_id, "dropped_stale", mean_tokens=long)
    c = d.lease(0, 0)
    d.close(c.lease_id, "failed", "bad_rollout")  # no group came back: counted by H only
    binned = d.binned()
    assert binned["by_h"] == {"0": {"trained": 1, "failed": 1}, "3+": {"dropped_stale": 1}}
    assert binned["by_length"] == {"q1": {"trained": 1}, "q4": {"dropped_stale": 1}}
    _, again = lease_book(num=2, cfg=cfg)
    again.load_state_dict(d.state_dict())  # a resumed run keeps counting from here
    assert again.binned() == binned


def test_the_length_bin_is_capped_at_the_last_quarter():
    from learner.orchestration.leases import length_bin

    assert [length_bin(t, 64) for t in (0, 15.9, 16, 47.9, 48, 63.9)] == ["q1", "q1", "q2", "q3", "q4", "q4"]
    assert length_bin(64, 64) == "q4" and length_bin(1000, 64) == "q4"  # a full-length (or longer) response
