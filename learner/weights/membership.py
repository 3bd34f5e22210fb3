"""Which weight groups the generators are in: the publisher's one question about membership.

`weights.group` chooses between two answers with one interface, so the publisher
(learner/weights/publisher.py) never branches on it:

- "shared" (learner/weights/shared.py): one group for the whole pool. A version leaves the learner
  once, whatever the pool's size; the price is that a broadcast needs every member, so a member that
  dies or stalls is cut out and the group re-formed without it.
- "own" (`OwnGroups`, here): a group per generator. A dead generator only ends its own group, but the
  learner sends every version once per generator.

README ("GPU pools") says when each is the better trade; `run.py bench weights` measures both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from learner.weights.links import GeneratorLink, Snapshot
from pipeline.messages import Heartbeat

log = logging.getLogger(__name__)

# Opens one weight link to some generators (generator -> its engine's workers, in rank order).
OpenLink = Callable[[dict[int, int]], GeneratorLink]


class WeightGroups(Protocol):
    def join(self, gid: int, workers: int, version: int) -> None:
        """Generator `gid`'s engine (of `workers` workers) is up and holds `version`."""

    def leave(self, gid: int) -> None:
        """It is gone (dead, restarted, or let go)."""

    def joined(self, gid: int) -> bool:
        """It is in a formed (or forming) group, and may be leased work."""

    def handed(self, gid: int) -> int:
        """The newest version it holds or is being sent (-1: none)."""

    def failure(self, gid: int, now: float) -> BaseException | None:
        """Why it must go (its link failed, or it was cut out of the shared group); None if it need not."""

    def behind(self, target: int) -> list[GeneratorLink]:
        """The free links some of whose generators lack `target`: the ones to send it to now."""

    def submit(self, link: GeneratorLink, snapshot: Snapshot) -> None: ...

    def sending(self) -> list[Snapshot]:
        """The snapshots being sent now (their host memory is not free)."""

    def all_handed(self, version: int) -> bool:
        """Every generator has been sent `version` (and no broadcast is running)."""

    def observe(self, hb: Heartbeat, now: float) -> None:
        """A heartbeat: what the generator is receiving (when it was heard from is the supervisor's
        record, learner/orchestration/liveness.py)."""

    def cut(self, gid: int, why: str) -> None:
        """Its weights are wrong (its probe differs from the learner's)."""

    def close(self, timeout_s: float) -> None: ...


class OwnGroups:
    """A weight group per generator."""

    def __init__(self, open_link: OpenLink):
        self.open_link = open_link
        self.links: dict[int, GeneratorLink] = {}

    def join(self, gid: int, workers: int, version: int) -> None:
        self.links[gid] = link = self.open_link({gid: workers})
        link.version = version

    def leave(self, gid: int) -> None:
        if gid in self.links:
            self.links.pop(gid).close()

    def joined(self, gid: int) -> bool:
        return gid in self.links and self.links[gid].joined

    def handed(self, gid: int) -> int:
        return self.links[gid].version if gid in self.links else -1

    def failure(self, gid: int, now: float) -> BaseException | None:
        return self.links[gid].failure(now) if gid in self.links else None

    def behind(self, target: int) -> list[GeneratorLink]:
        return [link for link in self.links.values() if link.ready and link.version < target]

    def submit(self, link: GeneratorLink, snapshot: Snapshot) -> None:
        link.submit(snapshot)

    def sending(self) -> list[Snapshot]:
        return [link.sending for link in list(self.links.values()) if link.sending is not None]

    def all_handed(self, version: int) -> bool:
        return all(link.ready and link.version == version for link in self.links.values())

    def observe(self, hb: Heartbeat, now: float) -> None:
        pass  # a link of its own fails by itself: nobody else's heartbeat says whom to blame

    def cut(self, gid: int, why: str) -> None:
        pass  # counted as a mismatch; its group holds up nobody else

    def close(self, timeout_s: float) -> None:
        close_links(self.links.values(), timeout_s)


def close_links(links, timeout_s: float) -> None:
    """End every link and wait (up to `timeout_s` in all) for their threads to release their groups:
    a group torn down on a thread the interpreter is leaving behind aborts the process."""
    links = list(links)
    for link in links:
        link.close()
    deadline = time.monotonic() + timeout_s
    for link in links:
        if not link.close(timeout=max(0.0, deadline - time.monotonic())):
            log.warning("weight link on port %d still busy at exit", link.port)
