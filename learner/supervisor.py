"""Generator supervision: start, welcome, restart and forget generator processes, from their heartbeats.

Each generator has a weight link of its own (learner/broadcast.py). The launcher's generators are
restarted when they die, go silent or lose their weight link; a generator that joined by itself
(`run.py generate` by hand, here or on another host) is let go when it leaves, cleanly or by going
silent. Either way the learner is told (`on_gone`) so that it re-issues the generator's leases.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from learner.broadcast import GeneratorLink
from pipeline.config import GeneratorConfig
from pipeline.messages import Alive, Heartbeat, Stop, Welcome
from pipeline.transport import free_port

log = logging.getLogger(__name__)


class SupervisorError(RuntimeError):
    pass


@dataclass
class GeneratorInfo:
    status: str = "starting"
    version: int = 0
    last_seen: float = 0.0
    pid: int = 0
    checked: int = -1  # newest version whose probe log-probs were compared
    busy_s: float = 0.0  # this process's cumulative generating time, as it last reported
    groups: int = 0  # groups this process has returned (with busy_s: its measured rate)


class Supervisor:
    def __init__(self, gc: GeneratorConfig, host: str, weights_timeout_s: float, backend: str,
                 send: Callable[[int, object], bool], on_gone: Callable[[int, str], None], initial_version: int,
                 link: Callable[..., GeneratorLink] = GeneratorLink):
        """`host`: where weight groups listen (transport.host); `weights_timeout_s`: a weight link's
        timeout (weights.timeout_s); `link(backend, host, port, timeout_s)` opens one generator's link."""
        self.gc, self.host, self.weights_timeout_s, self.make_link = gc, host, weights_timeout_s, link
        self.backend = backend
        self.send = send
        self.on_gone = on_gone
        self.initial_version = initial_version  # what the launcher's generators load at start
        self.links: dict[int, GeneratorLink] = {}  # weight group per generator process
        self.generators: dict[int, GeneratorInfo] = {}  # the ones that have said hello
        self.restarts = 0

    def _link(self) -> tuple[GeneratorLink, int]:
        port = free_port(self.host)
        return self.make_link(self.backend, self.host, port, self.weights_timeout_s), port

    def start(self, launcher, gid: int) -> None:
        self.links[gid], port = self._link()
        self.links[gid].version = self.initial_version
        launcher.start(gid, port)

    def start_all(self, launcher) -> None:
        for gid in range(self.gc.count):
            self.start(launcher, gid)

    def _welcome(self, gid: int) -> None:
        """A generator this learner did not start joins: it gets a weight group of its own, then the
        newest weights at once (its link is behind every published version), then leases."""
        self.links[gid], port = self._link()
        self.send(gid, Welcome(weights_port=port))
        log.info("generator %d joined: its weight group is on port %d", gid, port)

    def on_heartbeat(self, hb: Heartbeat, verify: Callable[[int, int, list[float]], bool | None]) -> None:
        """Record a heartbeat (nothing for the last word of a generator already let go), and have
        `verify(generator, version, probe log-probs)` check a probe it reports for the first time
        (None: nothing to compare it with yet)."""
        if hb.generator_id not in self.links:
            if hb.status == "stopping":
                return None
            self._welcome(hb.generator_id)
        self.send(hb.generator_id, Alive())  # without word from its learner, a generator exits by itself
        info = self.generators.setdefault(hb.generator_id, GeneratorInfo())
        info.status, info.version, info.pid, info.busy_s = hb.status, hb.version, hb.pid, hb.busy_s
        info.last_seen = time.monotonic()
        if hb.probe_logprobs and hb.probe_version > info.checked:
            if verify(hb.generator_id, hb.probe_version, hb.probe_logprobs) is not None:
                info.checked = hb.probe_version

    def count_group(self, gid: int) -> None:
        """A group came back from generator `gid` (its rate is measured from these)."""
        if gid in self.generators:
            self.generators[gid].groups += 1

    def _forget(self, gid: int, why: str) -> None:
        self.on_gone(gid, why)
        self.generators.pop(gid, None)
        self.links.pop(gid).close()

    def check(self, launcher) -> None:
        """Restart the launched generators that died, went silent, or lost their weight link; let
        the ones that joined by themselves leave."""
        now = time.monotonic()
        timeout = self.gc.heartbeat_timeout_s
        for gid, link in list(self.links.items()):
            info = self.generators.get(gid)
            silent = info is not None and now - info.last_seen > timeout
            if launcher is not None and launcher.manages(gid):
                if silent or link.error is not None:
                    launcher.kill(gid)  # dead to us (e.g. it never joined its weight group): restarted below
            elif silent or link.error is not None or (info is not None and info.status == "stopping"):
                self._forget(gid, "left")
        for gid, code in (launcher.dead() if launcher is not None else {}).items():
            if self.restarts >= self.gc.max_restarts:
                raise SupervisorError(f"generator {gid} exited with code {code} after {self.restarts} restarts "
                                      f"(generator.max_restarts):\n{launcher.log_tail(gid)}")
            self._forget(gid, f"exited (code {code}): restarting")
            self.restarts += 1
            self.start(launcher, gid)

    def ready_weights(self) -> dict[int, int]:
        """Generators ready to sample, joined to their weight group: the newest version each holds
        or has been handed."""
        return {gid: max(info.version, self.links[gid].version) for gid, info in self.generators.items()
                if info.status in ("ready", "generating", "updating")
                and gid in self.links and self.links[gid].group is not None}

    def all_hold(self, version: int) -> bool:
        """Every generator has been sent `version`, and has reported its probe for it."""
        return (all(link.ready and link.version == version for link in self.links.values())
                and all(g.checked >= version for g in self.generators.values()))

    def stop_all(self, reason: str = "run finished") -> None:
        for gid in self.generators:
            self.send(gid, Stop(reason=reason))

    def close(self) -> None:
        for link in self.links.values():
            link.close()
