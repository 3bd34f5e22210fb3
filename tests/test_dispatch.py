"""Dispatcher leases and accounting, group building and staleness, without processes."""

import time

import pytest

from learner.dispatcher import Dispatcher
from learner.groups import BadRollout, GroupBuffer, group_from_rollout
from learner.schedule import temperature
from learner.tracker import Tracker
from pipeline.config import from_dict
from pipeline.data import Problem
from pipeline.messages import Rollout, Sample, pack_floats, pack_ids


def _setup(num=5, **learner):
    cfg = from_dict({"learner": {"group_size": 4, "lease_timeout_s": 10.0, **learner}})
    problems = [Problem(i, f"q{i}", str(i), "reasoning_gym:basic_arithmetic") for i in range(num)]
    tracker = Tracker(num)
    return cfg, tracker, Dispatcher(cfg, problems, [[1, 2, i] for i in range(num)], tracker)


def _rollout(a, n=4, version=0, rewards=None):
    rewards = rewards or [1.0] * n
    samples = [Sample(tokens=pack_ids([5, 6]), logprobs=pack_floats([-0.1, -0.2]), reward=r,
                      version_first=version, version_last=version, finish_reason="stop") for r in rewards]
    return Rollout(lease_id=a.lease_id, generator_id=0, prompt_id=a.prompt_id, epoch=a.epoch,
                   temperature=a.temperature, prompt_tokens=a.prompt_tokens, samples=samples,
                   gen_seconds=0.0, verify_seconds=0.0)


def test_each_prompt_once_per_epoch_then_next_epoch():
    _, _, d = _setup(num=5)
    first = [d.lease(0, 0) for _ in range(5)]
    assert sorted(a.prompt_id for a in first) == list(range(5))
    assert {a.epoch for a in first} == {0}
    assert d.lease(0, 0).epoch == 1


def test_temperature_comes_from_the_tracker():
    cfg, tracker, d = _setup(num=1)
    for _ in range(3):
        tracker.record_visit(0, [1, 1, 1, 1], 1.0, 0)
    a = d.lease(0, 0)
    assert a.temperature == pytest.approx(temperature(3, cfg.schedule)) == pytest.approx(1.06)


def test_accounting_identity_through_every_outcome():
    _, _, d = _setup(num=5)
    now = time.monotonic()
    leases = [d.lease(0, 0, now=now) for _ in range(6)]
    assert d.balanced() and d.open == 6
    assert d.returned(leases[0].lease_id) is not None
    assert d.returned(leases[0].lease_id) is None  # a duplicate is not a second return
    d.close(leases[0].lease_id, "trained")
    d.returned(leases[1].lease_id)
    d.close(leases[1].lease_id, "dropped_stale")
    d.returned(leases[2].lease_id)
    d.close(leases[2].lease_id, "failed", "bad_rollout")
    expired = d.expire(now=now + 11.0)  # the other three
    assert {l.lease_id for l in expired} == {a.lease_id for a in leases[3:]}
    assert d.balanced() and d.open == 0
    assert dict(d.outcomes) == {"trained": 1, "dropped_stale": 1, "dropped_filtered": 0, "failed": 1, "reissued": 3}
    # an expired visit is leased again: same prompt and epoch, new lease id
    again = d.lease(0, 0)
    assert (again.prompt_id, again.epoch) == (leases[3].prompt_id, leases[3].epoch)
    assert again.lease_id not in {a.lease_id for a in leases}
    assert d.returned(leases[3].lease_id) is None  # the late rollout of the expired lease is refused


def test_group_must_be_complete_and_consistent():
    _, _, d = _setup()
    a = d.lease(0, 0)
    with pytest.raises(BadRollout, match="3 samples"):
        group_from_rollout(_rollout(a, n=3), 4)
    bad = _rollout(a)
    bad.samples[1].logprobs = pack_floats([-0.1])
    with pytest.raises(BadRollout, match="log-probs"):
        group_from_rollout(bad, 4)
    r = _rollout(a, rewards=[1, 0, 1, 1])
    r.samples[2].tokens = pack_ids([7, 8, 9])
    r.samples[2].logprobs = pack_floats([-0.3, -0.2, -0.1])
    g = group_from_rollout(r, 4)
    assert g.n == 4 and g.kind == "mixed" and g.temperature == a.temperature
    # each sample's token ids and log-probs arrive as sent, in order, paired with its own reward
    assert g.responses[2].tolist() == [7, 8, 9] and g.responses[0].tolist() == [5, 6]
    assert g.behaviour_logprobs[2].tolist() == pytest.approx([-0.3, -0.2, -0.1])
    assert g.rewards.tolist() == [1, 0, 1, 1] and g.prompt.tolist() == [1, 2, a.prompt_id]


def test_stale_groups_are_dropped_not_trained():
    _, _, d = _setup()
    buf = GroupBuffer()
    for v in (0, 1, 2, 3):
        buf.add(group_from_rollout(_rollout(d.lease(0, v), version=v), 4))
    stale = buf.drop_stale(version=4, max_lag=2)
    assert sorted(g.version_first for g in stale) == [0, 1]
    kept = buf.take(10)
    assert [g.version_first for g in kept] == [2, 3]  # the fresh ones stay, in arrival order
    assert len(buf) == 0
