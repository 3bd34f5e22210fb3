"""When each generator was last heard from: the one record of liveness in the learner.

The supervisor writes it, once per heartbeat (learner/orchestration/supervisor.py), and it is the
only writer. Two decisions read it, each with its own threshold, because they ask different
questions: the supervisor kills and restarts a generator silent for `generator.heartbeat_timeout_s`
(it is dead or hung), and a shared weight group whose broadcast failed blames the members silent for
a few heartbeats (learner/weights/shared.py: they held the broadcast up). The weights' room reads it
through `silent_for` only, so it imports nothing from here.
"""

from __future__ import annotations


class Liveness:
    def __init__(self) -> None:
        self._heard: dict[int, float] = {}

    def heard(self, gid: int, now: float) -> None:
        """Generator `gid` spoke (a heartbeat) at `now` (time.monotonic())."""
        self._heard[gid] = now

    def last_heard(self, gid: int) -> float | None:
        """When it was last heard from; None if never (or since it was forgotten)."""
        return self._heard.get(gid)

    def silent_for(self, gid: int, now: float) -> float:
        """Seconds since it was last heard from (infinite if never)."""
        last = self._heard.get(gid)
        return float("inf") if last is None else now - last

    def forget(self, gid: int) -> None:
        self._heard.pop(gid, None)
