"""The optimiser step on a worker thread, so the learner's loop keeps receiving rollouts and leasing
prompts while the model trains: generators never wait on the optimiser.

At most one step runs at a time. When the weights as they are before the step are due to go out and
not yet copied, a second thread copies them while the step's forward and backward run; the optimiser
update waits for the copy, so the snapshot costs the step next to nothing.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from dataclasses import dataclass

from learner.training.groups import Group


@dataclass
class RunningStep:
    future: concurrent.futures.Future
    groups: list[Group]
    version: int  # the weights' version when the step started
    lags: list[int]  # each group's lag at that version
    started: float
    finished: float = 0.0


class Stepper:
    def __init__(self, trainer, wake: Callable[[], None], on_batch: Callable[[int, object], None] | None = None):
        self.trainer = trainer
        self.wake = wake  # the loop picks a finished step up at once
        self.on_batch = on_batch  # an observer of each step's batch: (version, batch)
        self._steps = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="optimiser")
        self._copies = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot")
        self.running: RunningStep | None = None

    def start(self, groups: list[Group], lags: list[int], snapshot: Callable[[], None] | None) -> None:
        """Start a step on `groups`; `snapshot`, if given, copies the weights before they change."""
        assert self.running is None, "a step is already running"
        future = self._steps.submit(self._job, groups, snapshot)
        self.running = RunningStep(future, groups, self.trainer.version, lags, time.monotonic())
        future.add_done_callback(lambda _: self.wake())

    def _job(self, groups: list[Group], snapshot: Callable[[], None] | None) -> dict:
        copy = None
        if snapshot is not None:
            if not self.trainer.concurrent_snapshot:
                snapshot()  # here, before the step: a sharded copy is a collective
            else:
                copy = self._copies.submit(snapshot)
        version = self.trainer.version
        on_batch = (lambda batch: self.on_batch(version, batch)) if self.on_batch is not None else None
        return self.trainer.step(groups, before_update=copy.result if copy is not None else None, on_batch=on_batch)

    def collect(self) -> RunningStep | None:
        """The running step if it is done (None while it runs, or if none). Its metrics are
        `done.future.result()`, which re-raises a failure of the step in the caller's thread."""
        if self.running is None or not self.running.future.done():
            return None
        done, self.running = self.running, None
        done.finished = time.monotonic()
        return done

    def wait(self) -> RunningStep | None:
        """Block until the running step (if any) is done, and collect it."""
        if self.running is not None:
            concurrent.futures.wait([self.running.future])
        return self.collect()

    @property
    def groups_in_step(self) -> int:
        return len(self.running.groups) if self.running is not None else 0

    def close(self) -> None:
        self._steps.shutdown(wait=True)
        self._copies.shutdown(wait=True)
