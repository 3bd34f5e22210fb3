"""Lag control, one interface with two implementations: which leases go out now, when the next
optimiser step may start and which groups it trains, and what a finished step settles.

- `bounded` (learner/orchestration/bounded.py): lag at most `learner.max_lag`, set by timing. Leases
  go out as generators free up; a step trains the first B groups to arrive that are not stale.
- `exact` (learner/orchestration/exact.py): lag exactly k. Step t trains the wave leased for it under
  version t - k, leased at fixed points with seeded sampling, so a run is a function of its seed.

The loop asks; it never branches on the mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from learner.orchestration.leases import LeaseBook
from learner.training.groups import Group, GroupBuffer
from pipeline.config import DAPOConfig, LearnerConfig


@dataclass
class Pool:
    """What lag control is told of the generators and the trainer at a tick."""

    version: int  # the trainer's weight version
    step_running: bool
    groups_in_step: int  # groups of the running step (0 if none)
    ready: dict[int, int]  # ready generator -> newest version it holds or has been handed
    expected: int  # launched generators not cooling down (the start waits for them)
    started: bool  # a training rollout has arrived: the start-up wait is over
    rates: dict[int, tuple[int, float]] = field(default_factory=dict)  # generator -> (groups, busy seconds)


@dataclass
class Tag:
    """What exact lag control attaches to a lease: its sampling seed and its wave (learner/orchestration/exact.py)."""

    seed: int
    wave: int
    wave_size: int


# Leases one visit to a generator and sends it: (its lease id, whether the send went through).
Lease = Callable[[int, "Tag | None"], tuple[int, bool]]


class LagControl(Protocol):
    # whether the tracker records a visit (and DAPO's filter acts) as its group arrives; False: the
    # step that trains the group records it, in lease order
    on_arrival: bool

    def lease(self, pool: Pool, lease: Lease) -> None:
        """Lease whatever should go out now, through `lease`."""

    def next_batch(self, version: int) -> list[Group] | None:
        """The groups of the step starting at `version`, if it may start now (else None)."""

    def settle(self, version: int, trained: list[Group]) -> None:
        """The bookkeeping of the finished step at `version`, after its groups closed as trained."""

    def spent(self) -> bool:
        """The run's sample budget is generated and every group of it trained or dropped."""

    def counters(self) -> dict: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


def lag_control(lc: LearnerConfig, dapo: DAPOConfig, run_seed: int, max_inflight: int, leases: LeaseBook,
                buffer: GroupBuffer, record_visit: Callable[[Group], None],
                count_filtered: Callable[[int], None]) -> LagControl:
    """The implementation `learner.lag_control` names."""
    from learner.orchestration.bounded import BoundedLag
    from learner.orchestration.exact import ExactLag

    if lc.lag_control == "exact":
        return ExactLag(lc, dapo, run_seed, leases, buffer, record_visit, count_filtered)
    return BoundedLag(lc, max_inflight, leases, buffer)
