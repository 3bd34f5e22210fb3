"""What a generator's death or departure does (the supervisor's `on_gone`, given at its construction):
its leases are re-issued, a held-out round it had a share of is abandoned, and an operator is alerted
when it cools down."""

from __future__ import annotations

import logging
from collections.abc import Callable

from learner.orchestration.heldout import Evaluator
from learner.orchestration.leases import LeaseBook

log = logging.getLogger(__name__)


class Departures:
    def __init__(self, leases: LeaseBook, heldout: Evaluator | None, alert: Callable[[str, str], None]):
        """`alert(title, text)`: the metrics log's (learner/observe/metrics.py)."""
        self.leases, self.heldout, self.alert = leases, heldout, alert

    def __call__(self, gid: int, why: str) -> None:
        if why.startswith("cooling"):
            self.alert(f"generator {gid} cooling down", why)
        expired = self.leases.expire(generator_id=gid)
        log.warning("generator %d %s; %d leases re-issued", gid, why, len(expired))
        if self.heldout is not None and self.heldout.busy:
            self.heldout.abandon()  # its share of the round is gone; the next round starts afresh
