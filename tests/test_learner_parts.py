"""The learner's single-purpose parts alone, with no sockets and no vLLM: the weight publisher's
probe check, the residual-prompt window, the run statistics' round trip through a checkpoint."""

import collections
import json
from types import SimpleNamespace

import pytest
import torch

from learner.publisher import Publisher, probe_matches
from learner.stats import RunStats, Window
from learner.supervisor import GeneratorInfo
from learner.tracker import Tracker
from pipeline.messages import Heartbeat


class ProbeTrainer:
    """Test double: a trainer whose probe log-probs are a fixed list."""

    version = 3

    def probe_logprobs(self):
        return [-1.0, -2.0, -0.5]


def _heartbeat(probe, version=3):
    return Heartbeat(generator_id=4, status="ready", version=version, pid=1, inflight=0, probe_version=version,
                     probe_logprobs=probe)


def test_probe_mismatch_is_counted_and_a_match_is_verified():
    stats = RunStats()
    pub = Publisher(ProbeTrainer(), "float32", stats, wake=lambda: None)
    info = GeneratorInfo()
    pub.check(4, info, _heartbeat([-1.0, -2.0001, -0.5]))
    assert (stats.weights_verified, stats.weights_mismatch, info.checked) == (1, 0, 3)
    pub.check(4, info, _heartbeat([-1.0, -2.5, -0.5]))  # same version again: already checked
    assert stats.weights_mismatch == 0
    other = GeneratorInfo()
    pub.check(5, other, _heartbeat([-1.0, -2.5, -0.5]))
    assert stats.weights_mismatch == 1 and stats.probe_max_diff == pytest.approx(0.5)
    assert probe_matches([-1.0, -2.0], [-1.0, -2.0, -0.5], "float32")[0] is False  # a short report never matches
    assert probe_matches([-1.0, -2.02, -0.5], [-1.0, -2.0, -0.5], "bfloat16")[0] is True


def test_window_metrics_residual_share_by_temperature_and_reactivation():
    w = Window(t0=1.0)
    for kind, t in [("positive", 1.0), ("positive", 1.0), ("mixed", 1.0), ("negative", 1.0),
                    ("mixed", 1.04), ("positive", 1.04), ("mixed", 1.1)]:
        w.add(kind, t)
    tracker = Tracker(4)
    tracker.record_visit(0, [1.0, 1.0], 1.0, 0)
    m = w.metrics(tracker)
    assert m["residual_frac"] == pytest.approx(3 / 7)
    assert m["residual_by_temp/1.00"] == pytest.approx(2 / 4)
    assert m["residual_by_temp/1.04"] == pytest.approx(1 / 2)
    assert m["reactivated_rate"] == pytest.approx(2 / 3)  # of 3 groups leased above T0, 2 came back mixed
    assert m["leased_temp_max"] == pytest.approx(1.1)
    assert m["h_positive_frac"] == pytest.approx(1 / 4)


def test_run_stats_survive_a_json_round_trip():
    stats = RunStats(lag_hist=collections.Counter({0: 8, 2: 16}), rollouts_by_generator=collections.Counter({1: 3}),
                     group_kinds=collections.Counter({"mixed": 2}), evals=[(4, {"mean_at_k": 0.5})])
    g = SimpleNamespace(n=8, temperature=1.1, rewards=torch.tensor([1.0, 0.0]), kind="mixed")
    stats.record_step([g], [1], residual_frac=0.25, seconds=0.5)
    back = RunStats.from_state(json.loads(json.dumps(stats.to_state())))
    assert back == stats
    assert back.lag_hist[1] == 8 and back.trained_lags_max == 1
