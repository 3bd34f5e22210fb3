"""Lag control, one interface with two implementations: which leases go out now, which arriving
groups wait to be trained, when the next optimiser step may start and which groups it trains, and
what a finished step settles.

- `bounded` (learner/orchestration/bounded.py): lag at most `learner.max_lag`, set by timing. Leases
  go out as generators free up; a step trains the first B groups to arrive that are not stale.
- `exact` (learner/orchestration/exact.py): lag exactly k. Step t trains the wave leased for it under
  version t - k, leased at fixed points with seeded sampling, so a run is a function of its seed.

Lag control owns the group buffer (learner/orchestration/buffer.py) and DAPO's dynamic-sampling
filter: every group that arrives is `admit`ted here, and each answer is a `Verdict` (what trains,
what is dropped and why, which visits the tracker is told of now) that `Ledger.apply`
(learner/orchestration/ledger.py) carries out. The implementations decide; they drop no lease and tell
the tracker nothing themselves (a lease whose send failed they re-issue, as the lease book does any
lease out at a generator that is gone). The loop asks; it never branches on the mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from learner.orchestration.buffer import GroupBuffer
from learner.orchestration.leases import LeaseOutcome
from learner.training.groups import Group


@dataclass
class Pool:
    """What lag control is told of the generators and the trainer at a tick."""

    version: int  # the trainer's weight version
    step_running: bool
    groups_in_step: int  # groups of the running step (0 if none)
    ready: dict[int, int]  # ready generator -> newest version it holds or has been handed
    expected: int  # launched generators not cooling down (the start waits for them)
    rates: dict[int, tuple[int, float]] = field(default_factory=dict)  # generator -> (groups, busy seconds)


@dataclass
class Tag:
    """What exact lag control attaches to a lease: its sampling seed and its wave (learner/orchestration/exact.py)."""

    seed: int
    wave: int
    wave_size: int


# Leases one visit to a generator and sends it: (its lease id, whether the send went through).
LeaseFn = Callable[[int, "Tag | None"], tuple[int, bool]]


@dataclass
class Verdict:
    """What lag control decided of some groups, for `Ledger.apply` to carry out."""

    train: list[Group] = field(default_factory=list)  # the step starting now trains these (`next_batch` only)
    dropped: list[tuple[Group, LeaseOutcome]] = field(default_factory=list)  # their leases close now, and why
    visits: list[Group] = field(default_factory=list)  # complete visits the tracker records now, in this order

    @property
    def filtered(self) -> int:
        """Groups dropped by DAPO's dynamic sampling."""
        return sum(1 for _, why in self.dropped if why == LeaseOutcome.DROPPED_FILTERED)


class LagControl(Protocol):
    buffer: GroupBuffer  # the groups waiting to be trained: its own to fill and empty (a checkpoint saves them)

    def lease(self, pool: Pool, lease: LeaseFn) -> None:
        """Lease whatever should go out now, through `lease`."""

    def admit(self, group: Group) -> Verdict:
        """A complete group has arrived (its advantage set): buffered, or dropped by the filter; its
        visit recorded now (bounded) or at its step's end (exact, in lease order)."""

    def readmit(self, group: Group) -> None:
        """A group a checkpoint held in the buffer, back in it (no visit: it was recorded before)."""

    def next_batch(self, version: int) -> Verdict:
        """The groups of the step starting at `version` (`train`: empty if it may not start now), and
        what was dropped meanwhile."""

    def settle(self, version: int, trained: list[Group]) -> Verdict:
        """The bookkeeping of the finished step at `version`, after its groups closed as trained."""

    def spent(self) -> bool:
        """The run's sample budget is generated and every group of it trained or dropped."""

    def counters(self) -> dict: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...
