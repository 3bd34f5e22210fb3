"""The groups waiting to be trained, in arrival order: lag control's buffer (learner/orchestration/lag.py),
which alone says when a group enters it, which leave it for a step and which are dropped."""

from __future__ import annotations

from learner.training.groups import Group


class GroupBuffer:
    """FIFO of complete groups waiting to be trained."""

    def __init__(self):
        self.groups: list[Group] = []

    def __len__(self) -> int:
        return len(self.groups)

    def add(self, group: Group) -> None:
        self.groups.append(group)

    def drop_stale(self, version: int, max_lag: int) -> list[Group]:
        """Remove and return groups whose lag would exceed max_lag if trained at `version`."""
        stale = [g for g in self.groups if g.lag(version) > max_lag]
        self.groups = [g for g in self.groups if g.lag(version) <= max_lag]
        return stale

    def take(self, count: int) -> list[Group]:
        batch, self.groups = self.groups[:count], self.groups[count:]
        return batch

    def take_leases(self, lease_ids: list[int]) -> list[Group]:
        """The groups of these leases, removed from the buffer."""
        wanted = set(lease_ids)
        taken = [g for g in self.groups if g.lease_id in wanted]
        self.groups = [g for g in self.groups if g.lease_id not in wanted]
        return taken
