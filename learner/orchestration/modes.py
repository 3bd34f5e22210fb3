"""The lag-control modes by name (`learner.lag_control`): the one place a new mode is registered
(docs/extending.md). Apart from learner/orchestration/lag.py, so that the interface imports none of
its implementations."""

from __future__ import annotations

from learner.orchestration.bounded import BoundedLag
from learner.orchestration.buffer import GroupBuffer
from learner.orchestration.exact import ExactLag
from learner.orchestration.lag import LagControl
from learner.orchestration.leases import LeaseBook
from pipeline.config import DAPOConfig, LearnerConfig


def lag_control(lc: LearnerConfig, dapo: DAPOConfig, run_seed: int, max_inflight: int, leases: LeaseBook,
                buffer: GroupBuffer | None = None) -> LagControl:
    """The implementation `learner.lag_control` names, holding `buffer` (a new one if None)."""
    buffer = GroupBuffer() if buffer is None else buffer
    if lc.lag_control == "exact":
        return ExactLag(lc, dapo, run_seed, leases, buffer)
    return BoundedLag(lc, dapo, max_inflight, leases, buffer)
