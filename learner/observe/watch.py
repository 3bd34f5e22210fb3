"""The run watched from outside the work: a stall ends the run with an error naming the stage, never
a silent hang, and the run's health file (learner/observe/health.py) is kept fresh for `run.py status`.
It also keeps the run's clock: the first and the last rollout, the last step's lag."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from learner.observe import health
from learner.observe.stats import RunStats
from pipeline.config import LearnerConfig


class StallError(RuntimeError):
    pass


class Watch:
    def __init__(self, run_dir: Path, lc: LearnerConfig, version: int):
        self.run_dir, self.lc, self.initial_version = run_dir, lc, version
        self.started, self.started_wall = time.monotonic(), time.time()
        self.first_rollout: float | None = None
        self.last_rollout = self.started
        self.last_lag = (0.0, 0)  # the last step's mean and largest lag
        self._written = 0.0

    def rollout(self) -> None:
        self.last_rollout = time.monotonic()
        self.first_rollout = self.first_rollout or self.last_rollout

    @property
    def since_first_rollout(self) -> float:
        """Seconds of the throughput clock: from the first rollout, so generator start-up (loading
        vLLM) is not in it."""
        return time.monotonic() - (self.first_rollout or self.started)

    def check(self, running, version: int, stats: RunStats, leases, generators: Callable[[float], dict]) -> None:
        """`running`: the optimiser step running (learner/training/stepper.py), if any; `generators(now)`:
        each generator's health."""
        lc, now = self.lc, time.monotonic()
        if running is not None and now - running.started > lc.step_timeout_s:
            self.write(version, stats, leases, generators(now))  # the run folder says where it stood
            raise StallError(f"the optimiser step at version {running.version} ({len(running.groups)} groups) has "
                             f"run for {now - running.started:.0f}s (learner.step_timeout_s = {lc.step_timeout_s:.0f})")
        if now - self.last_rollout > lc.idle_timeout_s:
            seen = generators(now)
            self.write(version, stats, leases, seen)
            states = {g: h.state + (f" (last error: {h.last_error})" if h.last_error else "") for g, h in seen.items()}
            raise StallError(f"no rollout for {lc.idle_timeout_s:.0f}s (learner.idle_timeout_s); generators: {states}; "
                             f"their logs: {self.run_dir / 'generator-<id>.log'}")
        if now - self._written > health.WRITE_EVERY_S:
            self.write(version, stats, leases, generators(now))

    def write(self, version: int, stats: RunStats, leases, generators: dict, finished: bool = False) -> None:
        self._written = time.monotonic()
        health.report(self.run_dir, self.lc, version - self.initial_version, version, stats, leases, generators,
                      self.last_lag, self.started_wall, self.since_first_rollout, finished)
