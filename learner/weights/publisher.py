"""Weight publication: snapshot the learner's weights, send them to the generators (each over its
weight link, learner/weights/links.py), and check that each generator really holds them by comparing its
probe log-probs with the learner's.

A snapshot is a copy of the weights in host memory (so training may go on) plus the probe log-probs
that a generator must report back for that version (`pipeline/collective.py` defines the probe sequence).
The publisher owns the newest published version; the run statistics only count what it did.
"""

from __future__ import annotations

import logging
from collections.abc import Callable


from learner.weights.links import GeneratorLink, Snapshot, take_snapshot
from learner.observe.stats import RunStats

log = logging.getLogger(__name__)

# How far a generator's probe log-probs may be from the learner's for the same weights. In bf16 the two
# sides differ in kernels and summation order (and the learner may run bf16-mixed against the engine's
# pure bf16): a bf16 logit holds ~3 significant digits, and on a trained model's peaked distributions
# a log-prob moves by up to ~0.1-0.2 nats for the same weights (tests/gpu already allows 0.1 on a
# random model's flat ones). So bf16 catches a load that garbled or skipped most weights, not one
# optimiser step at a small learning rate; fp32 (the CPU default) catches both.
PROBE_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.25, "float16": 5e-2}
# Generators report recent versions only: older probes are pruned, so the table stays small.
PROBES_KEPT = 64


def probe_matches(reported: list[float], expected: list[float], dtype: str,
                  tolerance: dict[str, float] = PROBE_TOLERANCE) -> tuple[bool, float]:
    """(match, largest difference) of probe log-probs (a generator's, or a reloaded checkpoint's)
    against the learner's, within `tolerance[dtype]`."""
    diff = max((abs(a - b) for a, b in zip(reported, expected)), default=0.0)
    return len(reported) == len(expected) and diff <= tolerance[dtype], diff


class Publisher:
    def __init__(self, trainer, dtype: str, stats: RunStats, wake: Callable[[], None]):
        self.trainer = trainer
        self.dtype = dtype
        self.stats = stats  # versions published, verified and mismatched are counted there
        self.wake = wake  # tells the loop a snapshot is ready to go out
        self.probes: dict[int, list[float]] = {trainer.version: trainer.probe_logprobs()}
        self.snapshot: Snapshot | None = None
        self.latest = trainer.version  # the newest version published (the generators start from this one)

    def take_snapshot(self) -> None:
        """Copy the weights as they are now and compute their probe log-probs. Runs on the loop's
        thread when no step is running, else on the snapshot thread beside the next step."""
        v = self.trainer.version
        snapshot = take_snapshot(v, self.trainer, self.dtype)
        self.probes[v] = self.trainer.probe_logprobs()
        for old in [k for k in self.probes if k < v - PROBES_KEPT]:
            del self.probes[old]
        self.snapshot = snapshot
        self.latest = v
        self.stats.versions_published.append(v)
        self.wake()

    def needs_snapshot(self, version: int) -> bool:
        return self.snapshot is None or self.snapshot.version != version

    def publish(self, links: dict[int, GeneratorLink], joined: set[int], due: bool, step_running: bool) -> None:
        """Send the newest weights to every joined generator whose link is free and that lacks them.
        A generator behind the newest published version (it restarted or joined) gets them at once;
        the others when `due` (every `learner.sync_every` steps)."""
        v = self.trainer.version
        targets = [gid for gid, link in links.items()
                   if gid in joined and link.ready and link.version < v and (due or link.version < self.latest)]
        if not targets:
            return
        if self.snapshot is None or (due and self.snapshot.version != v):
            if step_running:
                return  # a step is changing the weights: its worker snapshots them once it is done
            self.take_snapshot()
        snap = self.snapshot
        for gid in targets:
            if links[gid].version < snap.version:
                links[gid].submit(snap)

    def verify(self, gid: int, version: int, reported: list[float]) -> bool | None:
        """Whether the probe log-probs generator `gid` reports for `version` match the learner's
        (counted either way); None when the learner has no probe of that version to compare."""
        expected = self.probes.get(version)
        if expected is None:
            return None
        ok, diff = probe_matches(reported, expected, self.dtype)
        self.stats.probe_max_diff = max(self.stats.probe_max_diff, diff)
        if ok:
            self.stats.weights_verified += 1
        else:
            self.stats.weights_mismatch += 1
            log.error("generator %d: weights of version %d differ from the learner's (probe log-probs "
                      "differ by up to %.2e)", gid, version, diff)
        return ok
