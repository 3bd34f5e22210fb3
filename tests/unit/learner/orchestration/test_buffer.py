"""The group buffer: groups wait in arrival order; stale ones (by their oldest token) leave it."""

from learner.orchestration.buffer import GroupBuffer
from learner.training.groups import group_from_rollout
from tests.builders import lease_book, rollout


def test_stale_groups_are_dropped_not_trained():
    _, d = lease_book()
    buf = GroupBuffer()
    for v in (0, 1, 2, 3):
        buf.add(group_from_rollout(rollout(d.lease(0, v), version=v), 4))
    stale = buf.drop_stale(version=4, max_lag=2)
    assert sorted(g.version_first for g in stale) == [0, 1]
    kept = buf.take(10)
    assert [g.version_first for g in kept] == [2, 3]  # the fresh ones stay, in arrival order
    assert len(buf) == 0


def test_lag_counts_from_the_oldest_token():
    """A sample whose tokens span versions 3..5 (in-flight update) is as old as its version-3 token."""
    _, d = lease_book()
    g = group_from_rollout(rollout(d.lease(0, 3), n=2, token_versions=[[4, 5], [3, 4, 5]]), 2)
    assert (g.version_first, g.version_last) == (3, 5)
    assert g.lag(6) == 3
    buf = GroupBuffer()
    buf.add(g)
    assert buf.drop_stale(version=6, max_lag=2) == [g]  # by its oldest token, it is over max_lag
