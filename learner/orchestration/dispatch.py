"""A lease out: one prompt visit leased in the lease book and sent to its generator, the observer told.
Lag control says how many and to whom (`LagControl.lease`); this is the `LeaseFn` it calls."""

from __future__ import annotations

from collections.abc import Callable

from learner.observe.events import Leased, Observer
from learner.orchestration.lag import LeaseFn, Tag
from learner.orchestration.leases import LeaseBook
from learner.orchestration.tracker import Tracker
from pipeline.messages import Assignment


class Dispatch:
    def __init__(self, leases: LeaseBook, tracker: Tracker, send: Callable[[int, Assignment], bool],
                 observer: Observer):
        """`send(generator, assignment)`: the endpoint's; False when the generator's socket is gone."""
        self.leases, self.tracker, self.send, self.observe = leases, tracker, send, observer

    def at(self, version: int) -> LeaseFn:
        """Leases made under weight version `version`."""
        def lease(gid: int, tag: Tag | None) -> tuple[int, bool]:
            extra = {} if tag is None else {"seed": tag.seed, "wave": tag.wave, "wave_size": tag.wave_size}
            a = self.leases.lease(gid, version, **extra)
            self.observe(Leased(gid, a, self.tracker.h(a.prompt_id)))
            return a.lease_id, self.send(gid, a)
        return lease
