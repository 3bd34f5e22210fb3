"""The one owner of the weights that leave the learner: it decides when to snapshot them, sends them
to the generators over their weight groups (learner/weights/membership.py: one shared by the pool, or one
each), and checks from the generators' heartbeats that each really holds them, by comparing the probe
log-probs a generator reports with the learner's own (pipeline/probe.py).

A snapshot is a copy of the weights in host memory (so training may go on) plus the probe log-probs a
generator must report back for that version. Versions go out every `learner.sync_every` steps, and
always the last one. The links' control messages go out from their own threads through the
endpoint's thread-safe `post`, so a broadcast never waits for the loop's tick.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from learner.training.clock import StageClock
from learner.weights.membership import WeightGroups
from learner.weights.links import Snapshot, take_snapshot
from pipeline.messages import Heartbeat
from pipeline.probe import PROBE_TOLERANCE, PROBE_TOLERANCE_GPU, probe_matches

log = logging.getLogger(__name__)

# Generators report recent versions only: older probes are pruned, so the table stays small.
PROBES_KEPT = 64


@dataclass(frozen=True)
class ProbeCheck:
    """One comparison of the probe log-probs generator `gid` reported for `version` with the
    learner's: `diff` the largest gap, `ok` within tolerance. The loop hands it to the statistics."""

    gid: int
    version: int
    ok: bool
    diff: float


class WeightPublisher:
    def __init__(self, trainer, dtype: str, sync_every: int, steps: int,
                 groups: WeightGroups, clock: StageClock, wake: Callable[[], None]):
        """`groups`: the generators' weight groups; `clock`: charged for probe checks; `wake`: tells
        the loop a snapshot is ready to go out."""
        self.trainer, self.dtype = trainer, dtype
        self.sync_every, self.steps = sync_every, steps
        self.groups, self.clock, self.wake = groups, clock, wake
        self.checked: dict[int, int] = {}  # generator -> newest version whose probe was compared
        self.no_probe: set[int] = set()  # generators that report no probe at all (the benchmark's stand-in engine)
        self.probes: dict[int, list[float]] = {trainer.version: trainer.probe_logprobs()}
        on_gpu = getattr(trainer, "device", None) is not None and trainer.device.type == "cuda"
        self.tolerance = PROBE_TOLERANCE_GPU if on_gpu else PROBE_TOLERANCE  # pipeline/probe.py argues both
        self.snapshot: Snapshot | None = None
        self._retired: list[Snapshot] = []  # older snapshots, whose host memory is reused once no link sends them
        self.snapshot_buffers = 0  # host blocks allocated for snapshots over the run (reuse keeps it small)
        self.latest = trainer.version  # the newest version published (the generators start from this one)
        self.published: list[int] = []  # each version this process snapshotted to go out, in order
        self.finishing = False  # the run's end: the last version goes out whatever sync_every says

    # ---- membership: the supervisor says who joined and who is gone -------------------------------

    def join(self, gid: int, workers: int, version: int) -> None:
        """Generator `gid`'s engine is up and holds `version`: it enters a weight group (WeightInit)."""
        self.groups.join(gid, workers, version)

    def leave(self, gid: int) -> None:
        self.checked.pop(gid, None)
        self.groups.leave(gid)

    def joined(self, gid: int) -> bool:
        """It is in a weight group."""
        return self.groups.joined(gid)

    def handed(self, gid: int) -> int:
        """The newest version handed to generator `gid` (-1: none)."""
        return self.groups.handed(gid)

    def failure(self, gid: int, now: float | None = None) -> BaseException | None:
        """Why generator `gid` must go: its link failed (an error, or a join or broadcast past
        weights.timeout_s), or it was cut out of the shared group."""
        return self.groups.failure(gid, time.monotonic() if now is None else now)

    # ---- sending ----------------------------------------------------------------------------------

    def due(self, version: int) -> bool:
        return version % self.sync_every == 0 or version >= self.steps or self.finishing

    def copy_before_step(self, version: int) -> Callable[[], None] | None:
        """What a step starting at `version` must do before it changes the weights: copy them, when
        they are due to go out and not copied yet (the stepper runs it beside the step's forward)."""
        if self.due(version) and (self.snapshot is None or self.snapshot.version != version):
            return self.take_snapshot
        return None

    def take_snapshot(self) -> None:
        """Copy the weights as they are now and compute their probe log-probs. Runs on the loop's
        thread when no step is running, else on the snapshot thread beside the next step."""
        v = self.trainer.version
        reuse = self._free_buffer()
        snapshot = take_snapshot(v, self.trainer, self.dtype, reuse=reuse)
        if reuse is not None:
            self._retired.remove(reuse)  # its memory is the new snapshot's now
        else:
            self.snapshot_buffers += 1
            log.info("weight snapshot: %.1f MB of %s host memory (block %d of the run)", snapshot.nbytes / 2**20,
                     "pinned" if snapshot.weights[0][1].is_pinned() else "pageable", self.snapshot_buffers)
        if self.snapshot is not None:
            self._retired.append(self.snapshot)
        self.probes[v] = self.trainer.probe_logprobs()
        for old in [k for k in self.probes if k < v - PROBES_KEPT]:
            del self.probes[old]
        self.snapshot = snapshot
        self.latest = v
        self.published.append(v)
        self.wake()

    def _free_buffer(self) -> Snapshot | None:
        """A retired snapshot that no link is sending (its memory takes the next copy); at most one
        such spare is kept, so the host holds the current snapshot, those still being sent, and one."""
        busy = self.groups.sending()
        free = [old for old in self._retired if not any(old is b for b in busy)]
        for extra in free[1:]:
            self._retired.remove(extra)  # released
        return free[0] if free else None

    def publish(self, version: int, step_running: bool) -> None:
        """Send the newest weights to every generator whose link is free and that lacks them. One
        behind the newest published version (it restarted or joined) gets them at once; the others
        when they are due."""
        due = self.due(version)
        links = self.groups.behind(version if due else self.latest)
        if not links:
            return
        if self.snapshot is None or (due and self.snapshot.version != version):
            if step_running:
                return  # a step is changing the weights: its worker snapshots them once it is done
            self.take_snapshot()
        for link in links:
            if link.version < self.snapshot.version:
                self.groups.submit(link, self.snapshot)

    def finish(self, version: int, heard: Callable[[], set[int]], poll: Callable[[int], object],
               timeout_s: float = 60.0) -> None:
        """At the run's end: let the last version land everywhere and every generator `heard()` from
        report its probe, so it is verified (`poll(timeout_ms)` hands heartbeats in meanwhile)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.publish(version, step_running=False)
            if self.latest == version and self.all_hold(version, heard()):
                return
            poll(20)

    # ---- checking ---------------------------------------------------------------------------------

    def on_heartbeat(self, hb: Heartbeat) -> ProbeCheck | None:
        """Check a probe a generator reports for the first time (none from one already let go); the
        check, for the statistics, or None where nothing new was compared."""
        self.groups.observe(hb, time.monotonic())
        if hb.status == "stopping" and self.groups.handed(hb.generator_id) < 0:
            return None  # the last word of one already let go
        if hb.status in ("ready", "generating") and not hb.probe_logprobs:
            self.no_probe.add(hb.generator_id)  # an engine with nothing to score by (the stand-in): never waited for
        if not hb.probe_logprobs or hb.probe_version <= self.checked.get(hb.generator_id, -1):
            return None
        with self.clock.stage("probe"):
            check = self.verify(hb.generator_id, hb.probe_version, hb.probe_logprobs)
        if check is not None:
            self.checked[hb.generator_id] = hb.probe_version
        return check

    def verify(self, gid: int, version: int, reported: list[float]) -> ProbeCheck | None:
        """Whether the probe log-probs generator `gid` reports for `version` match the learner's (a
        mismatch cuts it out of its weight group); None when the learner has no probe of that
        version to compare."""
        expected = self.probes.get(version)
        if expected is None:
            return None
        ok, diff = probe_matches(reported, expected, self.dtype, self.tolerance)
        if not ok:
            log.error("generator %d: weights of version %d differ from the learner's (probe log-probs "
                      "differ by up to %.2e)", gid, version, diff)
            self.groups.cut(gid, f"its weights of version {version} differ from the learner's (probe: {diff:.2e})")
        return ProbeCheck(gid, version, ok, diff)

    def all_hold(self, version: int, heard: set[int]) -> bool:
        """Every link has been sent `version`, and every generator `heard` from has reported its probe."""
        return (self.groups.all_handed(version)
                and all(self.checked.get(gid, -1) >= version for gid in heard - self.no_probe))

    def close(self, timeout_s: float = 30.0) -> None:
        """End every link and wait (up to `timeout_s` in all) for their threads to release their groups."""
        self.groups.close(timeout_s)
