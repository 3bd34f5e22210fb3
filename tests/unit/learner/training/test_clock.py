"""The stage clock (learner/training/clock.py) charges each stage for its own kernels, waiting for
its thread's stream only: a device-wide synchronise would also wait for a weight broadcast on its
own streams, and so for the slowest generator (no CPU run can see that; this pins the call)."""

import pytest
import torch

from learner.training.clock import StageClock

pytestmark = pytest.mark.unit


def test_a_stage_waits_for_its_own_stream_never_for_the_whole_device(monkeypatch):
    waits = []

    class Stream:
        def synchronize(self):
            waits.append("stream")

    def device_wide(*args, **kwargs):
        raise AssertionError("torch.cuda.synchronize waits for every stream, a broadcast's included")

    monkeypatch.setattr(torch.cuda, "synchronize", device_wide)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    clock = StageClock(torch.device("cuda", 0))
    with clock.stage("forward"):
        pass
    assert waits == ["stream", "stream"] and set(clock.take()) == {"time/forward"}


def test_on_cpu_nothing_is_waited_for_and_stages_add_up():
    clock = StageClock("cpu")
    for _ in range(3):
        with clock.stage("backward"):
            pass
    took = clock.take()
    assert list(took) == ["time/backward"] and took["time/backward"] >= 0 and clock.take() == {}
