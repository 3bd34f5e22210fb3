"""Bounded lag control (`learner.lag_control = "bounded"`, the default): how many prompt visits to
lease now, to which generator each goes, which arriving groups wait to be trained, and which groups a
step trains.

The policy is pure functions of what the learner knows (no sockets); `BoundedLag` wires them to the
lease book and the group buffer behind lag control's interface (learner/orchestration/lag.py). A group's
visit counts as it arrives, and DAPO's dynamic-sampling filter drops it then. Two rules for leasing:

- Never lease more than can be trained within `max_lag`. Groups are trained in arrival order, B per
  step, and the `ahead` leases open outside the running step go first, so a new lease is trained at
  the soonest in the step starting at version `soonest + ahead // B`. It is generated under the
  newest weights handed to its generator (the update goes first on the same socket and is loaded
  before any later lease starts), so a generator holding version g may take leases while that lag
  stays within max_lag; past it the lease would be stale before it began. (With
  `learner.max_open_groups` set, the user over-provisions on purpose and only the cap applies.)
- Spread leases by measured throughput: each goes to the generator that would get through its queue
  soonest at its rate (groups per busy second), idle generators first.
"""

from __future__ import annotations

from dataclasses import dataclass

from learner.orchestration.buffer import GroupBuffer
from learner.orchestration.lag import LeaseFn, Pool, Verdict
from learner.orchestration.leases import LeaseBook, LeaseOutcome
from learner.training.groups import Group
from pipeline.config import DAPOConfig, LearnerConfig

# A newcomer's rate is shrunk towards the pool's by this many pseudo-groups (see `rates`).
PRIOR_GROUPS = 4.0


@dataclass
class Candidate:
    """What the policy knows of one joined, ready generator."""

    version: int  # newest weight version it holds or has been handed
    queued: int  # leases out at it now
    groups: int = 0  # groups it has returned so far
    busy_s: float = 0.0  # its cumulative generating time, as it last reported


def lease_budget(lc: LearnerConfig, open_leases: int, dispatched: int) -> int:
    """How many more leases may be open now (the sample budget included)."""
    budget = (lc.max_open_groups or (lc.max_lag + 1) * lc.groups_per_step) - open_leases
    if lc.sample_budget:
        budget = min(budget, lc.sample_budget // lc.group_size - dispatched)
    return budget


def rates(candidates: dict[int, Candidate]) -> dict[int, float]:
    """Each generator's throughput in groups per busy second, shrunk towards the pool's rate by a
    few pseudo-groups. A newcomer thus starts at the pool's rate, not at an arbitrary prior: with
    a fixed prior of 1 group/s, a joiner beside an engine measured at ~100 groups/s never won a
    lease, so it was never measured and starved for good."""
    n_all = sum(s.groups for s in candidates.values())
    busy_all = sum(s.busy_s for s in candidates.values())
    pool = n_all / busy_all if n_all > 0 and busy_all > 0 else 1.0
    return {gid: (s.groups + PRIOR_GROUPS) / (s.busy_s + PRIOR_GROUPS / pool) for gid, s in candidates.items()}


def plan(budget: int, candidates: dict[int, Candidate], lc: LearnerConfig, max_inflight: int,
         soonest: int, ahead: int) -> list[int]:
    """The generators the next `budget` (at most) leases go to, in order.

    `soonest`: the version of the next step to start (the trainer's, +1 if a step is running);
    `ahead`: leases open outside the running step, which are trained before a new one."""
    B = lc.groups_per_step
    queued = {gid: s.queued for gid, s in candidates.items()
              if soonest - s.version <= lc.max_lag}  # else it could only make stale samples
    rate = rates(candidates)
    out: list[int] = []
    while len(out) < budget:
        free = [gid for gid, q in queued.items() if q < max_inflight and (
            lc.max_open_groups > 0 or soonest + ahead // B - candidates[gid].version <= lc.max_lag)]
        if not free:
            break
        # An idle engine starts a lease at once, so it goes first. Otherwise, when the learner is
        # the bottleneck and only a few leases free up per step, the engine that batches most
        # would take them all. A generator held at one group at a time looks slow per busy
        # second, so it would never get more (a joiner starved this way).
        gid = min(free, key=lambda g: (queued[g] > 0, (queued[g] + 1) / rate[g], g))
        out.append(gid)
        queued[gid] += 1
        ahead += 1
    return out


class BoundedLag:
    """Lag at most `learner.max_lag`, set by timing (learner/orchestration/lag.py's interface)."""

    def __init__(self, lc: LearnerConfig, dapo: DAPOConfig, max_inflight: int, leases: LeaseBook,
                 buffer: GroupBuffer):
        self.lc, self.dapo, self.max_inflight, self.leases, self.buffer = lc, dapo, max_inflight, leases, buffer
        self.filtered = 0  # groups dropped by dynamic sampling since the last step: the filter's quota
        self.started = False  # a training group has come back: the start-up wait is over

    def lease(self, pool: Pool, lease: LeaseFn) -> None:
        """Keep every ready generator busy, but never lease more than can be trained within max_lag."""
        budget = lease_budget(self.lc, self.leases.open, self.leases.dispatched)
        if budget <= 0:
            return
        if not self.started and len(pool.ready) < pool.expected:
            return  # at the start, wait until every generator is ready, so the first wave is spread over all
        candidates = {gid: Candidate(w, self.leases.outstanding(gid), *pool.rates.get(gid, (0, 0.0)))
                      for gid, w in pool.ready.items()}
        for gid in plan(budget, candidates, self.lc, self.max_inflight, soonest=pool.version + pool.step_running,
                        ahead=self.leases.open - pool.groups_in_step):
            if not lease(gid, None)[1]:
                self.leases.expire(generator_id=gid)
                return  # its socket is gone; the supervisor will notice, the next tick re-plans

    def admit(self, group: Group) -> Verdict:
        """The visit counts now, trained or not: the prompt was observed either way. DAPO's dynamic
        sampling drops a group whose advantages are all zero (it teaches nothing; the lease book
        draws another), up to `dapo.max_gen_batches` batches' worth of drops per step."""
        self.started = True
        if (self.dapo.dynamic_sampling and self.filtered < self.dapo.max_gen_batches * self.lc.groups_per_step
                and not group.advantage.has_signal):
            self.filtered += 1
            return Verdict(dropped=[(group, LeaseOutcome.DROPPED_FILTERED)], visits=[group])
        self.buffer.add(group)
        return Verdict(visits=[group])

    def readmit(self, group: Group) -> None:
        self.buffer.add(group)

    def next_batch(self, version: int) -> Verdict:
        """B groups as they arrived (dropping what went stale meanwhile). Once the sample budget is
        all back, the last groups train as a batch of their own (those samples were paid for)."""
        stale = [(g, LeaseOutcome.DROPPED_STALE) for g in self.buffer.drop_stale(version, self.lc.max_lag)]
        if len(self.buffer) >= self.lc.groups_per_step or (len(self.buffer) and self._budget_returned()):
            return Verdict(train=self.buffer.take(self.lc.groups_per_step), dropped=stale)
        return Verdict(dropped=stale)

    def settle(self, version: int, trained: list[Group]) -> Verdict:
        self.filtered = 0  # a new step, a new quota; visits were recorded as their groups arrived
        return Verdict()

    def _budget_returned(self) -> bool:
        """The sample budget is all leased and every lease of it has come back."""
        lc = self.lc
        return (bool(lc.sample_budget) and self.leases.dispatched * lc.group_size >= lc.sample_budget
                and not self.leases.outstanding())

    def spent(self) -> bool:
        return self._budget_returned() and not len(self.buffer)

    def counters(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
