"""The generator's beacon: while its loop is away (an engine loading, a transfer), heartbeats go on,
the learner's messages are kept for the loop, and a learner silent past its timeout ends the process."""

import threading
import time

import pytest

from actors.beacon import Beacon

pytestmark = pytest.mark.unit


class _Channel:
    """Stands in for the generator's side of the control channel: counts heartbeats, hands out what
    the test queues as the learner's messages."""

    def __init__(self):
        self.beats = 0
        self.incoming: list = []
        self.kept: list = []
        self.heard = time.monotonic()
        self.lock = threading.Lock()

    def beat(self):
        self.beats += 1

    def receive(self, timeout_ms):
        with self.lock:
            out, self.incoming = self.incoming, []
        return out

    def keep(self, msg):
        self.kept.append(msg)
        self.heard = time.monotonic()


def _beacon(ch, abandoned, timeout_s, done=None):
    def abandon(why):
        abandoned.append(why)
        if done is not None:
            done.set()

    return Beacon(ch.beat, ch.receive, ch.keep, lambda: ch.heard, interval_s=0.01, learner_timeout_s=timeout_s,
                  abandon=abandon)


def test_while_the_loop_is_away_it_beats_and_keeps_the_learners_messages_for_the_loop():
    ch, abandoned = _Channel(), []
    beacon = _beacon(ch, abandoned, timeout_s=60.0)
    with beacon.covering("the engine loads"):
        with ch.lock:
            ch.incoming = ["alive", "update"]
        deadline = time.monotonic() + 30
        while (ch.beats < 3 or len(ch.kept) < 2) and time.monotonic() < deadline:
            time.sleep(0.005)
    beats = ch.beats
    time.sleep(0.05)
    assert ch.kept == ["alive", "update"] and beats >= 3 and abandoned == []
    assert ch.beats == beats  # once the loop is back, the beacon is silent: one user of the channel


def test_a_learner_silent_past_its_timeout_ends_the_process_naming_what_it_interrupted():
    ch, abandoned, done = _Channel(), [], threading.Event()
    ch.heard = time.monotonic() - 5.0  # last word 5 s ago; the timeout is 1 s
    with _beacon(ch, abandoned, timeout_s=1.0, done=done).covering("receiving version 7"):
        assert done.wait(30)
    assert len(abandoned) == 1 and "while receiving version 7" in abandoned[0]
    assert "generator.learner_timeout_s" in abandoned[0]
