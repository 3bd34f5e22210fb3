"""Generator supervision: start, admit, restart and forget generator processes, from their heartbeats.

A generator whose engine is up joins the weights' owner (learner/weights/publisher.py), which opens
its weight link; the supervisor reads from it only whether the link formed or failed. The launcher's
generators are restarted when they die, go silent or lose their weight link, after a back-off while
they keep dying young. One that dies too often (`generator.max_restarts_per_hour`) or cannot start
(`generator.max_failed_starts` in a row) cools down: it rests for the next entry of
`generator.cooldown_s` and is tried again, never set aside for good, since a cause that passes (memory
pressure, a preempted neighbour, a driver reset) must not end a run left alone for days. The one
exception is a start that never worked: when no generator has been ready since the learner started
and every launched one has used up its failed starts, the run stops, naming each one's exit code and
last log line. A generator that joined by itself (`run.py generate` by hand, here or on another host)
is let go when it leaves, cleanly or by going silent. Either way the learner is told (`on_gone`) so
that it re-issues the generator's leases. A run that launches none of its own (all join by
themselves) stops when none has been alive for `generator.none_alive_timeout_s`.
"""

from __future__ import annotations

import collections
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from learner.observe.health import GeneratorHealth
from learner.orchestration.lag import Pool
from learner.orchestration.liveness import Liveness
from pipeline.config import GeneratorConfig
from pipeline.messages import Alive, Heartbeat, Stop

log = logging.getLogger(__name__)


class SupervisorError(RuntimeError):
    pass


class Membership(Protocol):
    """What the supervisor needs of the weights' owner: a joiner's link opened, a leaver's closed."""

    def join(self, gid: int, workers: int, version: int) -> None: ...
    def leave(self, gid: int) -> None: ...
    def joined(self, gid: int) -> bool: ...
    def handed(self, gid: int) -> int: ...
    def failure(self, gid: int, now: float) -> BaseException | None: ...


@dataclass
class GeneratorInfo:
    status: str = "starting"
    version: int = 0
    pid: int = 0
    busy_s: float = 0.0  # this process's cumulative generating time, as it last reported
    groups: int = 0  # groups this process has returned (with busy_s: its measured rate)


YOUNG_S = 60.0  # a generator that dies sooner than this after its start backs off before the next


@dataclass
class Lives:
    """One launched generator id across its processes: when it started, its deaths, its back-off."""

    started: float = 0.0
    deaths: collections.deque = field(default_factory=collections.deque)  # times of deaths in the last hour
    failed_starts: int = 0  # deaths in a row before it was ever ready
    backoff_s: float = 0.0
    restart_at: float | None = None  # a restart waiting out its back-off or its cool-down
    was_ready: bool = False
    cooldowns: int = 0  # cool-downs in a row (reset once it lives past YOUNG_S)
    cooling: str = ""  # why it is resting now, if it is
    last_error: str = ""  # its last death: exit code and last log line


class Supervisor:
    def __init__(self, gc: GeneratorConfig, send: Callable[[int, object], bool],
                 on_gone: Callable[[int, str], None], weights: Membership, liveness: Liveness | None = None):
        """`on_gone(generator, why)`: what a generator's death or departure does
        (learner/orchestration/departures.py);
        `weights`: told when a generator's engine is up (its link opens then) and when it is gone;
        `liveness`: when each was last heard from, written here only (a shared weight group reads it)."""
        self.gc, self.weights = gc, weights
        self.liveness = liveness if liveness is not None else Liveness()
        self.send = send
        self.on_gone = on_gone
        self.joined: set[int] = set()  # generators whose weight link was opened
        self.generators: dict[int, GeneratorInfo] = {}  # the ones that have said hello
        self.lives: dict[int, Lives] = {}  # the launched ones, across their restarts
        self.restarts = 0
        self.last_alive = time.monotonic()  # the last moment some generator was ready
        self.ever_ready = False  # some generator has been ready since the learner started

    def start(self, launcher, gid: int, now: float | None = None) -> None:
        life = self.lives.setdefault(gid, Lives())
        life.started, life.restart_at, life.was_ready = time.monotonic() if now is None else now, None, False
        launcher.start(gid)

    def start_all(self, launcher) -> None:
        for gid in range(self.gc.count):
            self.start(launcher, gid)

    def _join(self, hb: Heartbeat) -> None:
        """A generator whose engine is up (launched here or joining by itself): its weight link is
        opened (WeightInit); a generator behind the newest version gets it at once."""
        self.weights.join(hb.generator_id, hb.workers, hb.version)
        self.joined.add(hb.generator_id)
        if hb.generator_id not in self.lives:
            log.info("generator %d joined by itself", hb.generator_id)

    def on_heartbeat(self, hb: Heartbeat, now: float | None = None) -> None:
        """Record a heartbeat (nothing for the last word of a generator already let go)."""
        now = time.monotonic() if now is None else now
        if hb.generator_id not in self.joined and hb.status == "stopping":
            return None
        self.liveness.heard(hb.generator_id, now)  # before it joins: its weight group reads when it was heard
        if hb.generator_id not in self.joined and hb.status != "starting":
            self._join(hb)  # its engine is up (a group opened earlier would wait through its load)
        self.send(hb.generator_id, Alive())  # without word from its learner, a generator exits by itself
        info = self.generators.setdefault(hb.generator_id, GeneratorInfo())
        info.status, info.version, info.pid, info.busy_s = hb.status, hb.version, hb.pid, hb.busy_s
        if info.status in ("ready", "generating", "updating"):
            self.last_alive, self.ever_ready = now, True
            if hb.generator_id in self.lives:
                life = self.lives[hb.generator_id]
                life.was_ready, life.failed_starts = True, 0

    def count_group(self, gid: int) -> None:
        """A group came back from generator `gid` (its rate is measured from these)."""
        if gid in self.generators:
            self.generators[gid].groups += 1

    def _forget(self, gid: int, why: str) -> None:
        self.on_gone(gid, why)
        self.generators.pop(gid, None)
        self.joined.discard(gid)
        self.weights.leave(gid)
        self.liveness.forget(gid)

    def check(self, launcher, now: float | None = None) -> None:
        """Restart the launched generators that died, went silent, or lost their weight link (after
        their back-off or cool-down), cool down the ones past their budget; let the ones that joined by themselves
        leave. Raises SupervisorError when no generator could ever start, or, in a run of joiners
        only, none has been alive for none_alive_timeout_s."""
        now = time.monotonic() if now is None else now
        timeout = self.gc.heartbeat_timeout_s
        for gid in sorted(self.joined | set(self.generators)):
            info, error = self.generators.get(gid), self.weights.failure(gid, now)
            failed = error is not None
            quiet_s = self.liveness.silent_for(gid, now)
            silent = info is not None and quiet_s > timeout
            if failed or silent:
                log.error("generator %d: %s", gid, f"its weight link failed ({error})" if failed
                          else f"silent for {quiet_s:.0f}s (generator.heartbeat_timeout_s)")
            if launcher is not None and launcher.manages(gid):
                if silent or failed:
                    launcher.kill(gid)  # dead to us (e.g. it never joined its weight group): restarted below
            elif silent or failed or (info is not None and info.status == "stopping"):
                self._forget(gid, "left")
        dead = launcher.dead() if launcher is not None else {}
        for gid, life in self.lives.items():
            up = gid in self.generators and self.generators[gid].status not in ("starting", "joining")
            if life.restart_at is None and not up and gid not in dead and now - life.started > self.gc.start_timeout_s:
                log.error("generator %d: not up %.0f s after its start (generator.start_timeout_s)", gid,
                          now - life.started)
                launcher.kill(gid)  # a failed start: its death is handled below
                dead = launcher.dead()
        for gid, code in dead.items():
            if gid in self.lives and self.lives[gid].restart_at is None:
                self._died(launcher, gid, code, now)
        for gid, life in self.lives.items():
            if life.restart_at is not None and now >= life.restart_at:
                self.restarts += 1
                if life.cooling:
                    log.info("generator %d: its cool-down is over; starting it again", gid)
                life.cooling = ""
                self.start(launcher, gid, now)
        if now - self.last_alive > self.gc.none_alive_timeout_s and not self.ready_weights() and not self.lives:
            raise SupervisorError(f"no generator has been alive for {self.gc.none_alive_timeout_s:.0f}s "
                                  f"(generator.none_alive_timeout_s), and the run launches none of its own")

    def _died(self, launcher, gid: int, code: int, now: float) -> None:
        """A launched generator's process ended: schedule its restart, after a cool-down if it is over
        its budget."""
        life = self.lives.setdefault(gid, Lives())
        # its own last words; the launcher's first line (`# command`) is not one
        lines = [ln for ln in launcher.log_tail(gid).strip().splitlines() if ln and not ln.startswith("# ")]
        how = f"exit code {code}" + (f" ({signal.Signals(-code).name})" if code < 0 and -code in signal.valid_signals()
                                     else "")
        life.last_error = f"{how}: {lines[-1][:300]}" if lines else how
        life.deaths.append(now)
        while life.deaths and now - life.deaths[0] > 3600.0:
            life.deaths.popleft()
        life.failed_starts = 0 if life.was_ready else life.failed_starts + 1
        young = now - life.started < YOUNG_S
        if not young:
            life.cooldowns = 0
        life.backoff_s = min(max(2 * life.backoff_s, 1.0), self.gc.restart_backoff_max_s) if young else 0.0
        over = ""
        if len(life.deaths) > self.gc.max_restarts_per_hour:
            over = (f"died {len(life.deaths)} times in the last hour "
                    f"(generator.max_restarts_per_hour = {self.gc.max_restarts_per_hour:g})")
        elif life.failed_starts >= self.gc.max_failed_starts:
            over = f"failed to start {life.failed_starts} times in a row (generator.max_failed_starts)"
        if not over:
            self._forget(gid, f"exited ({life.last_error}): restarting in {life.backoff_s:.0f}s")
            life.restart_at = now + life.backoff_s
            return
        rest = self.gc.cooldown_s[min(life.cooldowns, len(self.gc.cooldown_s) - 1)]
        life.cooldowns += 1
        life.cooling = f"{over}; {life.last_error}"
        life.deaths.clear()  # after its rest, the hour's budget and its starts begin afresh
        life.failed_starts = 0
        life.restart_at = now + rest
        log.error("generator %d cools down for %.0f s (generator.cooldown_s): %s", gid, rest, life.cooling)
        self._forget(gid, f"cooling down for {rest:.0f}s ({life.cooling})")
        if not self.ever_ready and all(other.cooling for other in self.lives.values()):
            raise SupervisorError("no generator could start since the learner did: "
                                  + "; ".join(f"generator {g}: {l.cooling}" for g, l in sorted(self.lives.items())))

    def health(self, now: float) -> dict[int, GeneratorHealth]:
        """Each generator's state, for the run's health file."""
        out = {}
        for gid in sorted(set(self.lives) | set(self.generators)):
            life, info = self.lives.get(gid), self.generators.get(gid)
            up = info is not None and info.status in ("ready", "generating", "updating")
            state = ("cooling" if life and life.cooling else "restarting" if life and life.restart_at is not None
                     else "up" if up else "torn" if info is not None and info.status == "torn" else "starting")
            out[gid] = GeneratorHealth(
                state=state, restarts_last_hour=len(life.deaths) if life else 0, cooling=life.cooling if life else "",
                retry_in_s=max(0.0, life.restart_at - now) if life and life.cooling else None,
                last_error=life.last_error if life else "",
                seen_s_ago=self.liveness.silent_for(gid, now) if info is not None else None)
        return out

    @property
    def expected(self) -> int:
        """Launched generators not cooling down (the ones a start, or exact lag's wave, waits for)."""
        return sum(1 for life in self.lives.values() if not life.cooling)

    @property
    def cooling(self) -> dict[int, str]:
        """The generators resting now, and why."""
        return {gid: life.cooling for gid, life in self.lives.items() if life.cooling}

    def ready_weights(self) -> dict[int, int]:
        """Generators ready to sample, joined to their weight group: the newest version each holds
        or has been handed."""
        return {gid: max(info.version, self.weights.handed(gid)) for gid, info in self.generators.items()
                if info.status in ("ready", "generating", "updating") and self.weights.joined(gid)}

    def pool(self, version: int, groups_in_step: int, step_running: bool) -> Pool:
        """The generators as lag control sees them at a tick (learner/orchestration/lag.py)."""
        return Pool(version, step_running, groups_in_step, self.ready_weights(), self.expected,
                    {gid: (g.groups, g.busy_s) for gid, g in self.generators.items()})

    def stop_all(self, reason: str = "run finished") -> None:
        for gid in self.generators:
            self.send(gid, Stop(reason=reason))
