"""The stage clock (learner/training/clock.py) times each stage on the GPU by events on its thread's
stream, read once per step: never a device-wide synchronise, which would also wait for a weight
broadcast on its own streams, and so for the slowest generator (no CPU run can see that; this pins
the calls)."""

import pytest
import torch

from learner.training.clock import StageClock

pytestmark = pytest.mark.unit


def test_a_stage_is_timed_by_events_on_its_stream_never_by_waiting_for_the_whole_device(monkeypatch):
    calls = []

    class Event:
        def __init__(self, enable_timing=False):
            assert enable_timing
            self.at = None

        def record(self, stream=None):
            calls.append("record")
            self.at = len(calls)

        def synchronize(self):
            calls.append("wait for the end event")

        def elapsed_time(self, end):
            return 250.0 * (end.at - self.at)  # milliseconds

    def device_wide(*args, **kwargs):
        raise AssertionError("torch.cuda.synchronize waits for every stream, a broadcast's included")

    def stream_wide(*args, **kwargs):
        raise AssertionError("a stage boundary must not stall the host: events are read once per step")

    monkeypatch.setattr(torch.cuda, "synchronize", device_wide)
    monkeypatch.setattr(torch.cuda, "current_stream", stream_wide)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    clock = StageClock(torch.device("cuda", 0))
    with clock.stage("forward"):
        pass
    with clock.stage("backward"):
        pass
    assert calls == ["record"] * 4  # nothing waited for during the step
    took = clock.take()
    assert calls[4:] == ["wait for the end event"] * 2
    assert took == {"time/forward": 0.25, "time/backward": 0.25} and clock.take() == {}


def test_on_cpu_nothing_is_waited_for_and_stages_add_up():
    clock = StageClock("cpu")
    for _ in range(3):
        with clock.stage("backward"):
            pass
    took = clock.take()
    assert list(took) == ["time/backward"] and took["time/backward"] >= 0 and clock.take() == {}
