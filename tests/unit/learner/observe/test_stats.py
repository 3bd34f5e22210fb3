"""Run statistics observe: the residual-prompt metrics of arrivals, the run's totals as the sum of the
steps' windows, and the JSON round trip."""

import collections
import json

import pytest
import torch

from learner.observe.stats import Arrivals, RunStats, residual_share
from learner.orchestration.tracker import Tracker
from tests.builders import group


def test_arrival_metrics_residual_share_by_temperature_and_reactivation():
    w = Arrivals(t0=1.0)
    for kind, t in [("positive", 1.0), ("positive", 1.0), ("mixed", 1.0), ("negative", 1.0),
                    ("mixed", 1.04), ("positive", 1.04), ("mixed", 1.1)]:
        w.add(kind, t)
    m = w.metrics()
    assert m["residual_frac"] == pytest.approx(3 / 7)
    assert m["residual_by_temp/1.00"] == pytest.approx(2 / 4)
    assert m["residual_by_temp/1.04"] == pytest.approx(1 / 2)
    assert m["reactivated_rate"] == pytest.approx(2 / 3)  # of 3 groups leased above T0, 2 came back mixed
    assert m["leased_temp_max"] == pytest.approx(1.1)
    tracker = Tracker(4)
    tracker.record_visit(0, "positive", 1.0, 1.0, 0)
    assert tracker.metrics()["h_positive_frac"] == pytest.approx(1 / 4)


def test_run_totals_are_the_sum_of_the_windows():
    a, b, total = Arrivals(1.0), Arrivals(1.0), Arrivals(1.0)
    a.add("positive", 1.2)
    b.add("mixed", 1.2)
    b.add("negative", 1.0)
    b.filtered = 1
    total += a
    total += b
    assert dict(total.outcomes) == {"positive": 1, "negative": 1, "mixed": 1}
    assert (total.above_t0, total.above_t0_mixed, total.filtered) == (2, 1, 1)
    assert total.temperatures() == [1.0, 1.2, 1.2]


def test_run_stats_survive_a_json_round_trip():
    stats = RunStats(Arrivals(1.0), lag_hist=collections.Counter({0: 8, 2: 16}),
                     rollouts_by_generator=collections.Counter({1: 3}), evals=[(4, {"mean_at_k": 0.5})])
    stats.arrivals.add("mixed", 1.02)
    g = group([1.0, 0.0], [1], [[2], [3]], [[-0.1], [-0.1]], temperature=1.1)
    stats.record_step([g], [1], residual_frac=0.25, seconds=0.5, stage_seconds={"time/forward": 0.2})
    stats.record_step([g], [1], residual_frac=0.25, seconds=0.5, stage_seconds={"time/forward": 0.1,
                                                                                 "time/checkpoint": 0.3})
    back = RunStats.from_state(json.loads(json.dumps(stats.to_state())), t0=1.0)
    assert back == stats
    assert back.time_share() == pytest.approx({"checkpoint": 0.3, "forward": 0.3})
    assert back.lag_hist[1] == 4 and back.trained_lags_max == 1
    assert torch.isclose(torch.tensor(back.trained_temp_sum), torch.tensor(2.2))


def test_the_residual_share_is_the_all_correct_groups_share_of_all():
    assert residual_share({"positive": 1, "negative": 2, "mixed": 1}) == 0.25
    assert residual_share({}) == 0.0  # no groups: no share, not a division by zero
    w = Arrivals(1.0)
    w.add("positive", 1.3)
    w.add("negative", 1.0)
    assert w.metrics()["residual_frac"] == residual_share(w.outcomes) == 0.5
    assert w.metrics()["residual_by_temp/1.30"] == 1.0


def test_probe_checks_are_counted_either_way_and_the_largest_gap_kept():
    stats = RunStats(Arrivals(0.0))
    for ok, diff in [(True, 1e-5), (False, 0.5), (True, 2e-5)]:
        stats.record_probe(ok, diff)
    assert (stats.weights_verified, stats.weights_mismatch, stats.probe_max_diff) == (2, 1, 0.5)
