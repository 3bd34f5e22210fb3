"""A tensor-parallel generator in the real pipeline: vLLM's CPU backend runs the tiny model (2 heads)
on two worker processes (its multiprocessing executor, one core each), both of which join the weight
group (ranks 1 and 2) and load every version, verified by the probe."""

import os

import pytest
import torch

from learner.observe.events import BatchBuilt
from learner.session import open_learner
from pipeline.data import load_problems
from tests.conftest import assert_every_lease_accounted_for, make_config, run_pipeline

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two tensor-parallel workers need two cores")


class Gaps:
    """Records, for each trained batch, the largest |learner log-prob - vLLM behaviour log-prob| of
    its rows, by temperature. On-policy (exact lag 0), the learner's weights are those that sampled."""

    def __init__(self):
        self.learner = None
        self.by_temperature: dict[float, float] = {}

    def __call__(self, event) -> None:
        if isinstance(event, BatchBuilt):
            b = event.batch
            assert int(b.lag.max()) == 0
            with torch.no_grad():
                lp = self.learner.trainer.logprobs(b)
            gap = ((lp - b.mu).abs() * b.response_mask).amax(dim=1)
            for t, g in zip(b.temperature.tolist(), gap.tolist()):
                t = round(t, 3)
                self.by_temperature[t] = max(self.by_temperature.get(t, 0.0), g)


@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_a_tensor_parallel_generator_trains_verified(tiny_model, tmp_path, temperature):
    cfg = make_config(tmp_path, "--generator.tensor_parallel_size", "2", "--generator.count", "1",
                      "--learner.steps", "3", "--learner.groups_per_step", "2", "--learner.lag_control", "exact",
                      "--learner.max_lag", "0", "--schedule.t0", str(temperature), "--schedule.ts", "0",
                      "--schedule.tmax", str(max(temperature, 1.2)), "--eval.final", "false",
                      "--learner.checkpoint_every", "0",
                      # two workers pinned to a core each start slowly on a busy machine (measured: over
                      # 5 minutes with a busy process on each core): the watchdogs wait for them
                      "--learner.idle_timeout_s", "1800", "--generator.heartbeat_timeout_s", "1800")
    cfg.run_dir.mkdir(parents=True)
    gaps = Gaps()
    learner = open_learner(cfg, tiny_model, load_problems(cfg.data), observer=gaps)
    gaps.learner = learner
    stats = run_pipeline(learner, cfg)
    assert learner.trainer.version == 3
    # every version the generator was sent reached both workers: probes checked, none differed
    assert stats.weights_mismatch == 0 and stats.weights_verified >= 3
    assert list(gaps.by_temperature) == [temperature]
    assert gaps.by_temperature[temperature] < 1e-3, gaps.by_temperature
    assert_every_lease_accounted_for(learner)
