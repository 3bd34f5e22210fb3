"""Rollouts in: check each against its lease, turn it into a complete group, record the visit in the
tracker, apply DAPO's dynamic-sampling filter, and put the group in the buffer.

A rollout that cannot become a group closes its lease as `failed` (with a reason) or, if it belongs to
no open lease, is rejected and counted: either way nothing is silently lost (docs/design.md §3).
"""

from __future__ import annotations

import collections
import logging

from learner.orchestration.leases import LeaseBook, LeaseOutcome
from learner.training.advantages import AdvantageRule
from learner.training.groups import BadRollout, Group, GroupBuffer, group_from_rollout
from learner.observe.stats import Arrivals, RunStats
from learner.orchestration.tracker import Tracker
from pipeline.config import DAPOConfig
from pipeline.messages import Rollout

log = logging.getLogger(__name__)


class Intake:
    def __init__(self, leases: LeaseBook, tracker: Tracker, buffer: GroupBuffer, stats: RunStats,
                 rule: AdvantageRule, dapo: DAPOConfig, group_size: int, groups_per_step: int, t0: float,
                 in_arrival_order: bool = True):
        """`in_arrival_order` False (exact lag control): the tracker's visit and the dynamic-sampling
        filter wait for the group's step, which applies them in lease order (learner/orchestration/exact.py).
        `stats` and the step's window only count; nothing here decides from them."""
        self.in_arrival_order = in_arrival_order
        self.leases, self.tracker, self.buffer, self.stats = leases, tracker, buffer, stats
        self.rule, self.dapo = rule, dapo
        self.group_size, self.groups_per_step, self.t0 = group_size, groups_per_step, t0
        self.rejected: collections.Counter[str] = collections.Counter()
        self.window = Arrivals(t0)  # what arrived since the last optimiser step (observed, never read)
        self.filtered = 0  # groups dropped by dynamic sampling since the last step: the filter's quota
        self._last_version: dict[int, int] = {}  # per generator, to catch versions going backwards

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
        if group.version_first < self._last_version.get(r.generator_id, 0):
            self.stats.version_regressions += 1
        self._last_version[r.generator_id] = group.version_last
        self.stats.rollouts_by_generator[r.generator_id] += 1
        if not self.in_arrival_order:
            self.buffer.add(group)
            return group
        self.record_visit(group)
        if self._filtered_out(group):
            self.leases.close(r.lease_id, LeaseOutcome.DROPPED_FILTERED, mean_tokens=group.mean_tokens)
            self.count_filtered(1)
        else:
            self.buffer.add(group)
        return group

    def _set_advantage(self, group: Group) -> None:
        """The group's advantage, over its complete set of rewards, computed once: here."""
        group.advantage = self.rule.of(group.rewards, group.outcome, [len(x) for x in group.responses])

    def readmit(self, group: Group) -> None:
        """A group a checkpoint held in the buffer, back in it (one saved by an older version without
        its advantage gets it here)."""
        if group.advantage is None:
            self._set_advantage(group)
        self.buffer.add(group)

    def record_visit(self, group: Group) -> None:
        """The visit is recorded whether or not the group is trained: the prompt was observed either way.
        The step's window counts it here too, so that under exact lag control the residual share is
        over the wave's groups in lease order, not over whatever arrived while the step ran."""
        self.window.add(group.outcome, group.temperature)
        self.tracker.record_visit(group.prompt_id, group.outcome, float(group.rewards.mean()), group.temperature,
                                  group.version_first)

    def _filtered_out(self, group: Group) -> bool:
        """DAPO dynamic sampling: a group whose advantages are all zero teaches nothing; drop it and
        let the lease book draw another, up to max_gen_batches batches' worth of drops per step."""
        if not self.dapo.dynamic_sampling or self.filtered >= self.dapo.max_gen_batches * self.groups_per_step:
            return False
        return not group.advantage.has_signal

    def _reject(self, kind: str, r: Rollout, detail: str = "") -> None:
        if self.rejected[kind] == 0:
            log.warning("rejected rollout for lease %d from generator %d: %s %s", r.lease_id,
                        r.generator_id, kind, detail)
        self.rejected[kind] += 1
        return None

    def count_filtered(self, groups: int) -> None:
        """Groups dropped by dynamic sampling (here, or by exact lag control's wave choice)."""
        self.filtered += groups
        self.window.filtered += groups

    def close_window(self) -> Arrivals:
        """The groups that arrived since the last step (added to the run's totals); starts a new
        window and a new dynamic-sampling quota."""
        self.filtered = 0
        window, self.window = self.window, Arrivals(self.t0)
        self.stats.arrivals += window
        return window
