"""A thread that SIGKILLs a running learner's generator processes at random points while they hold
leases, a given number of times, then lets training go on a little and asks the run to stop (as
SIGTERM would). It waits on the learner's own state (its version, its open leases), never on time."""

from __future__ import annotations

import random
import threading
import time

import psutil


class Killer:
    def __init__(self, learner, kills: int, steps_between: int, pause_s: float, seed: int, timeout_s: float = 240.0):
        self.learner, self.count, self.steps_between, self.pause_s = learner, kills, steps_between, pause_s
        self.rng, self.timeout_s = random.Random(seed), timeout_s
        self.kills: list[int] = []  # the version at each kill
        self.problems: list[str] = []  # what was waited for in vain
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Killer":
        self.thread.start()
        return self

    def join(self) -> None:
        self.thread.join(timeout=5)

    @staticmethod
    def generators() -> list[psutil.Process]:
        out = []
        for p in psutil.Process().children(recursive=True):
            try:
                if "generate" in " ".join(p.cmdline()):
                    out.append(p)
            except psutil.Error:  # it exited (or is a zombie) while we looked: not a generator to kill
                pass
        return out

    def _holding_leases(self) -> bool:
        try:
            return self.learner.leases.outstanding() > 0
        except RuntimeError:  # the lease table changed under this thread's read: look again
            return False

    def _wait(self, cond, what: str) -> bool:
        deadline = time.monotonic() + self.timeout_s
        while not cond():
            if time.monotonic() > deadline:
                self.problems.append(what)
                return False
            time.sleep(0.002)
        return True

    def _trained(self, steps: int, what: str) -> bool:
        target = self.learner.trainer.version + steps
        return self._wait(lambda: self.learner.trainer.version >= target, what)

    def _run(self) -> None:
        try:
            for _ in range(self.count):
                if not self._trained(self.steps_between, "training to go on"):
                    return
                time.sleep(self.rng.uniform(0.0, self.pause_s))  # a random point: mid-batch, mid-update or idle
                if not self._wait(lambda: self._holding_leases() and self.generators(), "a generator holding leases"):
                    return
                for p in self.generators():
                    try:
                        p.kill()
                    except psutil.Error:
                        pass
                self.kills.append(self.learner.trainer.version)
                # the supervisor restarts it before the next kill (the learner's own count, not a
                # process list that may still show the dying one under load)
                if not self._wait(lambda: self.learner.supervisor.restarts >= len(self.kills),
                                  f"the restart after kill {len(self.kills)}"):
                    return
            self._trained(2, "training after the last restart")
        finally:
            self.learner.stop_requested = True
