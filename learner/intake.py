"""Rollouts in: check each against its lease, turn it into a complete group, record the visit in the
tracker, apply DAPO's dynamic-sampling filter, and put the group in the buffer.

A rollout that cannot become a group closes its lease as `failed` (with a reason) or, if it belongs to
no open lease, is rejected and counted: either way nothing is silently lost (DESIGN.md §3).
"""

from __future__ import annotations

import collections
import logging

from learner.dispatcher import Dispatcher
from learner.groups import BadRollout, Group, GroupBuffer, group_from_rollout
from learner.stats import RunStats, Window
from learner.tracker import Tracker
from pipeline.config import Config
from pipeline.messages import Rollout

log = logging.getLogger(__name__)


class Intake:
    def __init__(self, cfg: Config, dispatcher: Dispatcher, tracker: Tracker, buffer: GroupBuffer,
                 stats: RunStats):
        self.cfg = cfg
        self.dispatcher, self.tracker, self.buffer, self.stats = dispatcher, tracker, buffer, stats
        self.rejected: collections.Counter[str] = collections.Counter()
        self.window = Window(cfg.schedule.t0)  # what arrived since the last optimiser step
        self._last_version: dict[int, int] = {}  # per generator, to catch versions going backwards

    def on_rollout(self, r: Rollout) -> Group | None:
        """Take one training rollout; the group it made, or None if it was rejected."""
        lease = self.dispatcher.returned(r.lease_id)
        if lease is None:  # expired and re-issued, duplicated, or never ours: not a dispatch outcome
            return self._reject("unknown_lease", r)
        if (r.prompt_id, r.epoch) != (lease.prompt_id, lease.epoch):
            self.dispatcher.close(r.lease_id, "failed", "mismatched_rollout")
            return self._reject("mismatched_rollout", r)
        try:
            group = group_from_rollout(r, self.cfg.learner.group_size)
        except BadRollout as exc:
            self.dispatcher.close(r.lease_id, "failed", "bad_rollout")
            return self._reject("bad_rollout", r, str(exc))
        if group.version_first < self._last_version.get(r.generator_id, 0):
            self.stats.version_regressions += 1
        self._last_version[r.generator_id] = group.version_last
        self.stats.rollouts_by_generator[r.generator_id] += 1
        self.tracker.record_visit(group.prompt_id, group.rewards.tolist(), group.temperature, group.version_first)
        self.stats.record_arrival(group.kind, group.temperature, self.cfg.schedule.t0)
        self.window.add(group.kind, group.temperature)
        if self._filtered_out(group):
            self.dispatcher.close(r.lease_id, "dropped_filtered")
            self.window.filtered += 1
        else:
            self.buffer.add(group)
        return group

    def _filtered_out(self, group: Group) -> bool:
        """DAPO dynamic sampling: a group whose advantages are all zero teaches nothing; drop it and
        let the dispatcher draw another, up to max_gen_batches batches' worth of drops per step."""
        ds = self.cfg.dapo
        if not ds.dynamic_sampling or self.window.filtered >= ds.max_gen_batches * self.cfg.learner.groups_per_step:
            return False
        return not group.advantage(self.cfg).has_signal

    def _reject(self, kind: str, r: Rollout, detail: str = "") -> None:
        if self.rejected[kind] == 0:
            log.warning("rejected rollout for lease %d from generator %d: %s %s", r.lease_id,
                        r.generator_id, kind, detail)
        self.rejected[kind] += 1
        return None

    def close_window(self) -> dict:
        """The residual-prompt metrics of the groups that arrived since the last step; starts a new window."""
        metrics = self.window.metrics(self.tracker)
        self.window = Window(self.cfg.schedule.t0)
        return metrics
