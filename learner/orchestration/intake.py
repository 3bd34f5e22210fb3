"""Rollouts in: check each against its lease and turn it into a complete group with its advantage.
What becomes of the group (buffered, dropped, its visit recorded) is lag control's to say
(`LagControl.admit`, learner/orchestration/lag.py).

A rollout that cannot become a group closes its lease as `failed` (with a reason) or, if it belongs to
no open lease, is rejected and counted: either way nothing is silently lost (docs/design.md §3).
"""

from __future__ import annotations

import collections
import logging

from learner.orchestration.leases import LeaseBook, LeaseOutcome
from learner.training.advantages import AdvantageRule
from learner.training.groups import BadRollout, Group, group_from_rollout
from pipeline.messages import Rollout

log = logging.getLogger(__name__)


class Intake:
    def __init__(self, leases: LeaseBook, rule: AdvantageRule, group_size: int):
        self.leases, self.rule, self.group_size = leases, rule, group_size
        self.rejected: collections.Counter[str] = collections.Counter()

    def on_rollout(self, r: Rollout) -> Group | None:
        """Take one training rollout; the group it made, or None if it was rejected."""
        lease = self.leases.returned(r.lease_id)
        if lease is None:  # expired and re-issued, duplicated, or never ours: not a dispatch outcome
            return self._reject("unknown_lease", r)
        if (r.prompt_id, r.epoch) != (lease.prompt_id, lease.epoch):
            self.leases.close(r.lease_id, LeaseOutcome.FAILED, "mismatched_rollout")
            return self._reject("mismatched_rollout", r)
        try:
            group = group_from_rollout(r, self.group_size)
        except BadRollout as exc:
            self.leases.close(r.lease_id, LeaseOutcome.FAILED, "bad_rollout")
            return self._reject("bad_rollout", r, str(exc))
        self._set_advantage(group)
        return group

    def _set_advantage(self, group: Group) -> None:
        """The group's advantage, over its complete set of rewards, computed once: here."""
        group.advantage = self.rule.of(group.rewards, group.outcome, [len(x) for x in group.responses])

    def restored(self, group: Group) -> Group:
        """A group a checkpoint held in the buffer (one saved by an older version without its
        advantage gets it here)."""
        if group.advantage is None:
            self._set_advantage(group)
        return group

    def _reject(self, kind: str, r: Rollout, detail: str = "") -> None:
        if self.rejected[kind] == 0:
            log.warning("rejected rollout for lease %d from generator %d: %s %s", r.lease_id,
                        r.generator_id, kind, detail)
        self.rejected[kind] += 1
        return None
