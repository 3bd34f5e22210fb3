"""One weight group for the whole pool (`weights.group = "shared"`): a version leaves the learner once,
whatever the pool's size (down a chain over gloo, pipeline/collective.py; round a ring in vLLM's NCCL
engine; README, "GPU pools", gives the figures).

A broadcast needs every member, so the group's membership is what this module keeps right:

- **Forming.** The group is formed, and re-formed, only between broadcasts: a new link (fresh port,
  fresh key) with every member's workers at consecutive ranks (learner/weights/links.py,
  `ControlClient`). A generator whose engine comes up enters at the first re-form after its running
  broadcast, and is sent the newest version at once, never an older one. The others receive that
  version again (a collective needs them all): one broadcast per join or restart, the price of not
  keeping a newcomer idle until the next version (exact lag control waits for every generator to
  hold the version its next wave is leased under, so an idle newcomer would stall the run).
- **Cutting out.** A broadcast that fails (an error, or past `weights.timeout_s`) is pinned on the
  members that held it up: those not heard from for `stale_s` (dead, stopped, hung), and, when it
  timed out, those that never started receiving it (their heartbeats say what they receive). They
  are cut out (the supervisor restarts them, or lets go of the ones that joined by themselves), and the
  group is re-formed with the rest at once; they get the version they were waiting for as soon as it
  has formed. A failure nobody can be blamed for (after `stale_s` every member is still heard from)
  re-forms the group with everyone. A member whose probe differs from the learner's is cut out too.
- **What a member holds.** `handed` is the version being sent while the broadcast runs, and only the
  version of the last broadcast that completed once one fails: lag control never counts weights a
  member did not get.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from learner.weights.membership import OpenLink, close_links
from learner.weights.links import GeneratorLink, Snapshot
from pipeline.messages import Heartbeat

log = logging.getLogger(__name__)


class SharedGroup:
    def __init__(self, open_link: OpenLink, silent_for: Callable[[int, float], float], stale_s: float):
        """`open_link(members)`: a weight link to those generators; `silent_for(gid, now)`: seconds
        since it was last heard from (the supervisor's record, learner/orchestration/liveness.py);
        `stale_s`: a member silent this long (its heartbeats come every `generator.heartbeat_s`, even
        inside a transfer) is taken for dead or stopped when a broadcast fails."""
        self.open_link, self.silent_for, self.stale_s = open_link, silent_for, stale_s
        self.link: GeneratorLink | None = None  # the current formation's
        self.members: dict[int, int] = {}  # its generators (-> their workers) still with us
        self.waiting: dict[int, int] = {}  # generators up since it formed, to enter at the next re-form
        self.held: dict[int, int] = {}  # the version each generator surely holds (its start, or a completed broadcast)
        self.arrived: set[int] = set()  # members that said they were receiving the running broadcast
        self.cut_off: dict[int, BaseException] = {}  # cut out: the supervisor ends them
        self.closing: list[GeneratorLink] = []  # earlier formations, until their threads end
        self.dirty = False  # a member left: re-form before the next broadcast
        self.failed_at: float | None = None  # when the current formation's failure was first seen
        self.forming_since: float | None = None
        self.formations = 0  # groups formed over the run (each logged with how long it took)
        self.recovering: tuple[float, int] | None = None  # (when, version) of a failed broadcast, until it lands
        self._reviewed_at: float | None = None  # the supervisor asks after every member at one tick's `now`

    # ---- membership -------------------------------------------------------------------------------

    def join(self, gid: int, workers: int, version: int) -> None:
        self.waiting[gid], self.held[gid] = workers, version

    def leave(self, gid: int) -> None:
        for table in (self.waiting, self.held, self.cut_off):
            table.pop(gid, None)
        self.arrived.discard(gid)
        if self.members.pop(gid, None) is not None:
            self.dirty = True

    def joined(self, gid: int) -> bool:
        return gid in self.members and gid not in self.cut_off

    def handed(self, gid: int) -> int:
        link = self.link
        if gid in self.members and link is not None and link.error is None:
            return max(self.held[gid], link.version)
        return self.held.get(gid, -1)

    def observe(self, hb: Heartbeat, now: float) -> None:
        if hb.generator_id in self.held:
            link = self.link
            if link is not None and link.sending is not None and hb.receiving == link.version >= 0:
                self.arrived.add(hb.generator_id)  # sticky: one whose receive failed since did arrive

    def cut(self, gid: int, why: str) -> None:
        if gid in self.members or gid in self.waiting:
            self.cut_off[gid] = RuntimeError(why)
            self.waiting.pop(gid, None)
            self.dirty = True

    def failure(self, gid: int, now: float) -> BaseException | None:
        self._review(now)
        return self.cut_off.get(gid)

    # ---- sending ----------------------------------------------------------------------------------

    def behind(self, target: int) -> list[GeneratorLink]:
        now = time.monotonic()
        self._review(now)
        link = self.link
        # Re-formed only between broadcasts, and for newcomers only once the formation has formed: one
        # abandoned mid-rendezvous holds its members in that rendezvous until their timeout.
        idle = link is None or (link.joined and link.sending is None)
        forming = link is not None and not link.joined
        if (self.waiting and idle) or (self.dirty and (idle or forming)):
            self._form(now)
            link = self.link
        return [link] if link is not None and link.ready and link.version < target else []

    def submit(self, link: GeneratorLink, snapshot: Snapshot) -> None:
        self.arrived.clear()
        link.submit(snapshot)

    def sending(self) -> list[Snapshot]:
        self.closing = [old for old in self.closing if not old.ended]
        return [link.sending for link in [self.link, *self.closing] if link is not None and link.sending is not None]

    def all_handed(self, version: int) -> bool:
        link = self.link
        return (not self.waiting and not self.dirty
                and (link is None or (link.ready and link.version == version)))

    def close(self, timeout_s: float) -> None:
        close_links([link for link in [self.link, *self.closing] if link is not None], timeout_s)

    # ---- the formation's life ---------------------------------------------------------------------

    def _review(self, now: float) -> None:
        """Record what the current formation has achieved; on its failure, cut out whoever held it up
        and re-form with the rest (once per moment: asked for each member, it answers from the first)."""
        link = self.link
        if link is None or now == self._reviewed_at:
            return
        self._reviewed_at = now
        if link.joined and self.forming_since is not None:
            log.info("weight group %d formed in %.2f s: %d generators, %d ranks", self.formations,
                     now - self.forming_since, len(self.members), 1 + sum(self.members.values()))
            self.forming_since = None
        if link.ready:  # the last broadcast completed
            for gid in self.members:
                self.held[gid] = max(self.held[gid], link.version)
            if self.recovering is not None and link.version >= self.recovering[1]:
                log.info("version %d reached the re-formed weight group %.2f s after its broadcast failed",
                         link.version, now - self.recovering[0])
                self.recovering = None
        error = link.failure(now)  # past weights.timeout_s it fails here, and aborts its group
        if error is None:
            return
        if self.failed_at is None:
            self.failed_at = now
            if link.joined and self.recovering is None:
                self.recovering = (now, link.version)
            log.error("weight group %d failed (%s)", self.formations, error)
        timed_out = isinstance(error, TimeoutError)
        if not timed_out and now - self.failed_at < self.stale_s and not self.dirty:
            return  # an error: wait for the supervisor to find a dead member (it leaves), or for one to go quiet
        broadcasting = link.joined
        for gid in self.members:
            quiet_s = self.silent_for(gid, now)
            silent = quiet_s > self.stale_s
            absent = timed_out and broadcasting and gid not in self.arrived
            if (silent or absent) and gid not in self.cut_off:
                why = (f"not heard from for {quiet_s:.0f} s" if silent
                       else f"it never started receiving version {link.version}")
                self.cut_off[gid] = RuntimeError(f"cut out of the shared weight group: {why} ({error})")
                log.error("generator %d: %s", gid, self.cut_off[gid])
        self._form(now)

    def _form(self, now: float) -> None:
        """A new formation of the members still with us (the cut-out ones left behind) and the waiting."""
        if self.link is not None:
            self.link.close()  # its thread ends once its broadcast does (failed or not)
            self.closing.append(self.link)
        started = self.failed_at if self.failed_at is not None else now
        self.members = {g: w for g, w in self.members.items() if g not in self.cut_off} | self.waiting
        self.waiting, self.dirty, self.failed_at = {}, False, None
        if not self.members:
            self.link, self.forming_since = None, None
            return
        self.formations += 1
        self.link = self.open_link(self.members)
        self.link.version = min(self.held[g] for g in self.members)
        self.forming_since = started
        log.info("weight group %d forming: generators %s", self.formations, sorted(self.members))
