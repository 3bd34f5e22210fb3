"""The publisher: a probe mismatch is counted, a match verified; it owns the newest published version."""

import pytest

from learner.weights.publisher import Publisher, probe_matches
from learner.observe.stats import Arrivals, RunStats
from tests.doubles import ProbeTrainer


def test_probe_mismatch_is_counted_and_a_match_is_verified():
    stats = RunStats(Arrivals(1.0))
    pub = Publisher(ProbeTrainer(), "float32", stats, wake=lambda: None)
    assert pub.verify(4, 3, [-1.0, -2.0001, -0.5]) is True
    assert (stats.weights_verified, stats.weights_mismatch) == (1, 0)
    assert pub.verify(5, 3, [-1.0, -2.5, -0.5]) is False
    assert stats.weights_mismatch == 1 and stats.probe_max_diff == pytest.approx(0.5)
    assert pub.verify(5, 9, [-1.0]) is None  # no probe of that version: nothing to compare, nothing counted
    assert (stats.weights_verified, stats.weights_mismatch) == (1, 1)
    assert probe_matches([-1.0, -2.0], [-1.0, -2.0, -0.5], "float32")[0] is False  # a short report never matches
    assert probe_matches([-1.0, -2.02, -0.5], [-1.0, -2.0, -0.5], "bfloat16")[0] is True


def test_the_newest_published_version_starts_at_the_trainers():
    """A resumed run's generators start from the checkpoint's version: that is the newest published."""
    pub = Publisher(ProbeTrainer(), "float32", RunStats(Arrivals(1.0)), wake=lambda: None)
    assert pub.latest == 3 and pub.needs_snapshot(3)
