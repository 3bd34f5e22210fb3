"""The optimiser step on its own thread: one at a time, the snapshot taken before the weights change,
a failure re-raised in the loop's thread."""

import threading

import pytest

from learner.training.stepper import Stepper
from tests.doubles import ScriptedTrainer


def test_the_snapshot_is_taken_before_the_update_and_the_step_is_collected_once():
    trainer = ScriptedTrainer()
    woken = threading.Event()
    stepper = Stepper(trainer, wake=woken.set)
    copied = threading.Event()
    release = threading.Event()

    def snapshot():
        release.wait(10)  # the step cannot update before the copy is done
        trainer.events.append("snapshot")
        copied.set()

    try:
        stepper.start(["g1", "g2"], [0, 1], snapshot)
        assert stepper.groups_in_step == 2
        with pytest.raises(AssertionError, match="already running"):
            stepper.start(["g3"], [0], None)
        assert stepper.collect() is None and "update" not in trainer.events  # it waits for the copy
        release.set()
        done = stepper.wait()
        assert done.future.result().metrics == {"groups": 2} and done.version == 0 and done.lags == [0, 1]
        assert sorted(trainer.events) == ["backward", "snapshot", "update"]
        assert trainer.events.index("snapshot") < trainer.events.index("update")
        assert woken.wait(5) and stepper.running is None and stepper.collect() is None
    finally:
        release.set()
        stepper.close()


def test_a_failed_step_is_raised_where_it_is_collected():
    stepper = Stepper(ScriptedTrainer(fail=True), wake=lambda: None)
    try:
        stepper.start(["g"], [0], None)
        done = stepper.wait()
        with pytest.raises(RuntimeError, match="the step failed"):
            done.future.result()
    finally:
        stepper.close()


def test_an_observer_sees_each_batch_with_the_version_it_trains_at():
    seen = []
    trainer = ScriptedTrainer()
    trainer.step = lambda groups, before_update=None, on_batch=None: on_batch("batch") or {}
    stepper = Stepper(trainer, wake=lambda: None, on_batch=lambda v, b: seen.append((v, b)))
    try:
        stepper.start(["g"], [0], None)
        stepper.wait()
        assert seen == [(0, "batch")]
    finally:
        stepper.close()
