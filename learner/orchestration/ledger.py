"""Where lag control's decisions take effect: the one caller that closes a lease as trained or dropped
and tells the tracker of a visit (docs/design.md §3: every complete visit is recorded, trained or
not; every lease ends as exactly one outcome). Lag control (learner/orchestration/lag.py) decides and
returns a `Verdict`; `Ledger.apply` carries it out, in the verdict's order."""

from __future__ import annotations

from learner.orchestration.lag import Verdict
from learner.orchestration.leases import LeaseBook, LeaseOutcome
from learner.orchestration.tracker import Tracker
from learner.training.groups import Group


class Ledger:
    def __init__(self, leases: LeaseBook, tracker: Tracker):
        self.leases, self.tracker = leases, tracker

    def apply(self, verdict: Verdict) -> Verdict:
        """Close the dropped groups' leases with their reason, record the visits in order; `verdict` back."""
        for g, why in verdict.dropped:
            self.leases.close(g.lease_id, why, mean_tokens=g.mean_tokens)
        for g in verdict.visits:
            self.tracker.record_visit(g.prompt_id, g.outcome, float(g.rewards.mean()), g.temperature,
                                      g.version_first)
        return verdict

    def trained(self, groups: list[Group], version: int) -> None:
        """A finished step's groups, trained at `version`: their leases close as trained."""
        for g in groups:
            self.leases.close(g.lease_id, LeaseOutcome.TRAINED, mean_tokens=g.mean_tokens)
            self.tracker.record_trained(g.prompt_id, version)
