"""A generator's side of the control channel while its loop is busy elsewhere.

The loop talks to the learner between decode steps. Three things keep it away for long: vLLM building
its engine (minutes for a large model), joining a weight group, and receiving a version of the
weights. Meanwhile the learner would hear nothing (and kill a generator that is only loading), and
the generator would not notice a learner that is gone: a transfer from a dead learner can block for
ever (NCCL has no timeout). So while the loop is away, a thread keeps the channel: a heartbeat every
`generator.heartbeat_s`, the learner's messages kept for the loop, and the process ended once the
learner has been silent past `generator.learner_timeout_s`, even from inside a transfer.

The channel has one user at a time: the loop never touches it while the beacon covers for it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

ABANDONED_EXIT = 75  # the process's exit code when its learner went silent during a transfer or a load


def exit_process(why: str) -> None:
    """End this process now: the main thread may be blocked inside a transfer that never returns."""
    log.error("%s; exiting to release the engine", why)
    logging.shutdown()
    os._exit(ABANDONED_EXIT)


class Beacon:
    def __init__(self, beat: Callable[[], None], receive: Callable[[int], list], keep: Callable[[object], None],
                 last_heard: Callable[[], float], interval_s: float, learner_timeout_s: float,
                 abandon: Callable[[str], None] = exit_process):
        """`beat()` sends a heartbeat; `receive(timeout_ms)` reads the learner's messages; `keep(msg)`
        hands one to the loop (and counts as word from the learner); `last_heard()`: when the learner
        last spoke (monotonic); `abandon(why)`: what a silent learner does (ends the process)."""
        self.beat, self.receive, self.keep, self.last_heard = beat, receive, keep, last_heard
        self.interval_s, self.learner_timeout_s, self.abandon = interval_s, learner_timeout_s, abandon

    @contextmanager
    def covering(self, what: str) -> Iterator[None]:
        """Keep the channel while the caller does `what` (named in the log if the learner goes silent)."""
        stop = threading.Event()
        thread = threading.Thread(target=self._keep_channel, args=(stop, what), name="beacon", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _keep_channel(self, stop: threading.Event, what: str) -> None:
        while not stop.wait(self.interval_s):
            self.beat()
            for msg in self.receive(0):
                self.keep(msg)
            silent = time.monotonic() - self.last_heard()
            if silent > self.learner_timeout_s and not stop.is_set():
                self.abandon(f"no word from the learner for {silent:.0f} s (generator.learner_timeout_s) "
                             f"while {what}")
                return
