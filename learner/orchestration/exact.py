"""Exact lag control (`learner.lag_control = "exact"`): lag as an experimental variable, not a timing accident.

Optimiser step t trains only the groups of its *wave*: the leases made for it under weight version
v(t) = max(0, t - k), k = `learner.max_lag` (k = 0 is synchronous on-policy). So every group of step t
has lag t - v(t), exactly k once t >= k. What makes a run the same whatever the machine's load:

- Waves are leased at fixed points: waves 0..k at the start, wave t + k + 1 right after step t's
  bookkeeping, once every generator has been handed version t + 1. The data cursor and the tracker's
  temperatures are read then and only then.
- The tracker records a wave's visits at its step's bookkeeping, in lease order, never on arrival.
- Each lease carries a sampling seed derived from `run.seed`, the step and its place in the wave
  (vLLM's per-request seed), and goes to a generator by a fixed rule (place i to the i-th of the live
  generators, round robin); a generator starts a wave's leases together, with nothing else running.
- Step t waits for its whole wave, then trains the first B groups in lease order (with DAPO's dynamic
  sampling: the first B with signal, of ceil(B x `dapo.oversample`) leased; the rest are counted).

What still varies: a generator that dies re-issues its leases (their visits go back to the queue),
and a wave with fewer than B survivors trains smaller. Both are counted in the summary.
"""

from __future__ import annotations

import hashlib
import math

from learner.orchestration.buffer import GroupBuffer
from learner.orchestration.lag import LeaseFn, Pool, Tag, Verdict
from learner.orchestration.leases import LeaseBook, LeaseOutcome
from learner.training.groups import Group
from pipeline.config import DAPOConfig, LearnerConfig


def exact_steps(lc: LearnerConfig, dapo: DAPOConfig) -> int:
    """The run's steps: `learner.steps`, or as many whole waves as `learner.sample_budget` pays for."""
    if not lc.sample_budget:
        return lc.steps
    return max(1, min(lc.steps, lc.sample_budget // (lc.group_size * wave_size(lc, dapo))))


def wave_size(lc: LearnerConfig, dapo: DAPOConfig) -> int:
    """Leases per wave: B, or ceil(B x `dapo.oversample`) under dynamic sampling."""
    return math.ceil(lc.groups_per_step * dapo.oversample) if dapo.dynamic_sampling else lc.groups_per_step


def lease_seed(run_seed: int, step: int, place: int) -> int:
    """The sampling seed of the `place`-th lease of step `step`'s wave (sample j uses seed + j)."""
    digest = hashlib.blake2b(f"{run_seed}:{step}:{place}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 32  # 32 bits: room for + j, and any engine's seed type


class Waves:
    """Which leases each step trains, and when the next wave is due."""

    def __init__(self, lc: LearnerConfig, dapo: DAPOConfig, run_seed: int):
        self.k, self.B, self.run_seed = lc.max_lag, lc.groups_per_step, run_seed
        self.size = wave_size(lc, dapo)
        self.filtering = dapo.dynamic_sampling
        self.leased: dict[int, list[int]] = {}  # step -> its wave's lease ids, in lease order
        self.short = 0  # steps whose wave gave fewer than B groups (with signal, under dynamic sampling)

    def version_of(self, step: int) -> int:
        """The weight version step `step`'s wave is generated under."""
        return max(0, step - self.k)

    def due(self, version: int, steps: int) -> list[int]:
        """Steps (below `steps`) whose waves are due at `version` and not yet leased: steps version ..
        version + k (all of them at the start; only version + k afterwards, the others went out earlier)."""
        return [s for s in range(version, min(version + self.k + 1, steps)) if s not in self.leased]

    def out_before_step(self, version: int, steps: int) -> bool:
        """Every wave due at `version` has gone out: only then may the weights move past `version`."""
        return not self.due(version, steps)

    @staticmethod
    def generator_for(place: int, generators: list[int]) -> int:
        return sorted(generators)[place % len(generators)]

    def complete(self, step: int, open_at_generators: set[int]) -> bool:
        """Whether every lease of the wave is back (or closed): nothing of it is out at a generator."""
        return step in self.leased and not open_at_generators.intersection(self.leased[step])

    def in_lease_order(self, step: int, groups: list[Group]) -> list[Group]:
        order = {lid: i for i, lid in enumerate(self.leased[step])}
        return sorted(groups, key=lambda g: order[g.lease_id])

    def choose(self, step: int, arrived: list[Group]) -> tuple[list[Group], list[Group]]:
        """(the groups step `step` trains, the wave's other groups), from the wave's `arrived` groups:
        the first B in lease order (with dynamic sampling, the first B with signal). A wave none of
        whose groups has signal trains as it is (it moves nothing, but the version advances)."""
        wave = self.in_lease_order(step, arrived)
        keep = [g for g in wave if g.advantage.has_signal] if self.filtering else wave
        train = (keep or wave)[:self.B]
        if len(keep) < self.B:
            self.short += 1
        chosen = {g.lease_id for g in train}
        return train, [g for g in wave if g.lease_id not in chosen]

    def state_dict(self) -> dict:
        return {"leased": {str(s): ids for s, ids in self.leased.items()}, "short": self.short}

    def load_state_dict(self, state: dict) -> None:
        self.leased = {int(s): ids for s, ids in state["leased"].items()}
        self.short = state["short"]


class ExactLag:
    """Lag exactly `learner.max_lag`, in waves (learner/orchestration/lag.py's interface)."""

    def __init__(self, lc: LearnerConfig, dapo: DAPOConfig, run_seed: int, leases: LeaseBook, buffer: GroupBuffer):
        self.steps, self.run_seed = lc.steps, run_seed
        self.waves = Waves(lc, dapo, run_seed)
        self.leases, self.buffer = leases, buffer
        self._rest: dict[int, list[Group]] = {}  # step -> its wave's groups not trained (recorded at its end)

    def lease(self, pool: Pool, lease: LeaseFn) -> None:
        """The waves due at this version go out whole, at a fixed point (no step running, the last
        one's bookkeeping done) and once every generator holds this version."""
        v = pool.version
        due = self.waves.due(v, self.steps) if not pool.step_running else []
        ready = pool.ready
        if not due or not ready or len(ready) < pool.expected or any(w != v for w in ready.values()):
            return
        owners = [self.waves.generator_for(i, list(ready)) for i in range(self.waves.size)]
        for step in due:
            self.waves.leased[step] = []
            for i, gid in enumerate(owners):
                lease_id, sent = lease(gid, Tag(lease_seed(self.run_seed, step, i), step, owners.count(gid)))
                self.waves.leased[step].append(lease_id)
                if not sent:
                    self.leases.expire(generator_id=gid)  # its socket is gone: re-issued, counted

    def admit(self, group: Group) -> Verdict:
        """Buffered whatever it holds: its visit and the filter wait for its step, in lease order."""
        self.buffer.add(group)
        return Verdict()

    def readmit(self, group: Group) -> None:
        self.buffer.add(group)

    def next_batch(self, version: int) -> Verdict:
        """Step t starts once its whole wave is back, and only after the waves due at version t went
        out (they must be generated under these weights, before they change)."""
        t = version
        if not self.waves.out_before_step(t, self.steps) or not self.waves.complete(t, self.leases.out_at_generators()):
            return Verdict()
        arrived = self.buffer.take_leases(self.waves.leased[t])
        if not arrived:  # every lease of the wave failed or was re-issued: the wave goes out again
            del self.waves.leased[t]
            return Verdict()
        train, rest = self.waves.choose(t, arrived)
        self._rest[t] = rest
        return Verdict(train=train, dropped=[(g, LeaseOutcome.DROPPED_FILTERED) for g in rest])

    def settle(self, version: int, trained: list[Group]) -> Verdict:
        """The wave's visits, in lease order, at its step's end."""
        visits = self.waves.in_lease_order(version, trained + self._rest.pop(version, []))
        del self.waves.leased[version]
        return Verdict(visits=visits)

    def spent(self) -> bool:
        return False  # a sample budget became a number of whole waves (`exact_steps`)

    def counters(self) -> dict:
        return {"short_waves": self.waves.short}

    def state_dict(self) -> dict:
        return self.waves.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.waves.load_state_dict(state)  # leases then out at generators are re-issued
