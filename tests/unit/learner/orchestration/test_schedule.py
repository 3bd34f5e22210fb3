"""ERPO's temperature schedule (docs/algorithms.md §2)."""

import pytest

from learner.orchestration.schedule import temperature
from pipeline.config import ScheduleConfig


def test_schedule_is_linear_in_h_and_capped():
    cfg = ScheduleConfig(t0=1.0, ts=0.02, tmax=1.2)
    assert temperature(0, cfg) == 1.0
    assert temperature(5, cfg) == pytest.approx(1.1)
    assert temperature(10, cfg) == pytest.approx(1.2)
    assert temperature(1000, cfg) == 1.2
