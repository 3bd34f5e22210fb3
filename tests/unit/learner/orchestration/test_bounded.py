"""The dispatch policy (learner/orchestration/bounded.py) alone: how many leases, and to which generator, no sockets."""

from collections import Counter

import pytest

from learner.orchestration import bounded
from pipeline.config import from_dict


def _plan(candidates, soonest=0, ahead=0, in_step=0, max_inflight=100, **learner):
    cfg = from_dict({"learner": learner})
    budget = bounded.lease_budget(cfg.learner, open_leases=ahead + in_step, dispatched=0)
    return bounded.plan(budget, candidates, cfg.learner, max_inflight, soonest=soonest, ahead=ahead)


def test_leases_only_what_can_be_trained_within_max_lag():
    """A lease is trained B per step behind the open ones, under the newest weights its generator was
    handed; the policy stops where the next lease would exceed max_lag (it would only be dropped as
    stale, wasting generation), and a generator whose weights are too old gets none."""
    lc = dict(max_lag=2, groups_per_step=8)
    # generator up to date, nothing open: three steps' worth (versions 5, 6, 7: lag <= 2)
    assert len(_plan({0: bounded.Candidate(version=5, queued=0)}, soonest=5, **lc)) == 24
    # weights handed are one behind: only the next two steps can take its groups in time
    assert len(_plan({0: bounded.Candidate(version=4, queued=0)}, soonest=5, **lc)) == 16
    # a step is running on 8 open leases: the soonest a new lease trains is at version 6
    assert len(_plan({0: bounded.Candidate(version=4, queued=0)}, soonest=6, in_step=8, **lc)) == 8
    # weights three behind that soonest step: nothing it makes could be trained in time
    assert _plan({0: bounded.Candidate(version=3, queued=0)}, soonest=6, in_step=8, **lc) == []


def test_max_inflight_caps_each_generator():
    out = _plan({0: bounded.Candidate(5, 0), 1: bounded.Candidate(5, 2)}, soonest=5, max_inflight=3,
                max_open_groups=40)
    assert Counter(out) == {0: 3, 1: 1}


def _split(measured: dict[int, tuple[int, float]], leases: int = 40) -> Counter:
    candidates = {gid: bounded.Candidate(version=0, queued=0, groups=g, busy_s=b) for gid, (g, b) in measured.items()}
    out = _plan(candidates, max_open_groups=leases)
    assert len(out) == leases
    return Counter(out)


def test_leases_follow_measured_throughput():
    counts = _split({0: (300, 10.0), 1: (100, 10.0)})  # generator 0 is 3x faster
    assert counts[0] == pytest.approx(30, abs=1) and counts[1] == pytest.approx(10, abs=1)


def test_a_newcomer_is_leased_to_beside_a_fast_generator():
    """A generator with nothing measured yet starts at the pool's rate. (With a fixed prior of one
    group per second, a newcomer beside an engine doing 100 never won a lease, so was never measured.)"""
    assert bounded.rates({0: bounded.Candidate(0, 0, 1000, 10.0), 7: bounded.Candidate(0, 0)})[7] == pytest.approx(100.0)
    counts = _split({0: (1000, 10.0), 7: (0, 0.0)})
    assert counts[7] == pytest.approx(20, abs=2)
    # Learner-bound, few leases free up at a time. A newcomer measured while it ran one group at a
    # time (so slow per busy second) still gets one lease while it is idle; it is not starved.
    counts = _split({0: (1000, 10.0), 7: (6, 1.7)}, leases=8)
    assert counts[7] >= 1


def test_sample_budget_caps_the_leases():
    cfg = from_dict({"learner": {"sample_budget": 80, "group_size": 8}})
    assert bounded.lease_budget(cfg.learner, open_leases=0, dispatched=7) == 3
