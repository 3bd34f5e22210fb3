"""The lease book: leases prompt visits to generators, with the temperature the tracker schedules,
and accounts for every one of them. (Which generator gets the next lease is the dispatch policy's
call: learner/orchestration/bounded.py.)

Every dispatched lease ends as exactly one outcome (docs/design.md §3, "no silent loss"):
trained, dropped_stale, dropped_filtered, failed, or reissued (expired; the visit goes back in the
queue under a new lease). Until then it is open: out at a generator, or back and waiting in the
group buffer. So at any time: dispatched == sum(outcomes) + open.

The book also counts each outcome by the prompt's H when it was leased and by the group's mean
response length (in quarters of `max_tokens`): dropping stale groups is known to favour short,
easy prompts, and these counts show whether it does (`run.py sweep` reports them).
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import random
import time
from dataclasses import dataclass

from learner.orchestration.schedule import temperature
from learner.orchestration.tracker import Tracker
from pipeline.config import ScheduleConfig
from pipeline.problems import Problem
from pipeline.messages import Assignment, pack_ids


class LeaseIdentityError(RuntimeError):
    pass


class LeaseOutcome(enum.StrEnum):
    """How a lease ended: exactly one of these, once."""

    TRAINED = "trained"
    DROPPED_STALE = "dropped_stale"
    DROPPED_FILTERED = "dropped_filtered"
    FAILED = "failed"
    REISSUED = "reissued"  # expired (or its generator died); the visit went back in the queue


@dataclass
class Lease:
    lease_id: int
    prompt_id: int
    epoch: int
    generator_id: int
    temperature: float
    version: int
    deadline: float
    returned: bool = False
    h: int = 0  # the prompt's H when it was leased


H_BINS = 3  # H is counted as 0, 1, 2 and "3+"
LENGTH_BINS = 4  # response length in quarters of max_tokens


def h_bin(h: int) -> str:
    return str(h) if h < H_BINS else f"{H_BINS}+"


def length_bin(mean_tokens: float, max_tokens: int) -> str:
    """The quarter of `max_tokens` that a group's mean response length falls in: "q1" .. "q4"."""
    return f"q{min(LENGTH_BINS, int(LENGTH_BINS * mean_tokens / max(max_tokens, 1)) + 1)}"


def assignment(lease_id: int, prompt_id: int, epoch: int, problem: Problem, prompt: bytes, temperature: float,
               n: int, version: int, max_tokens: int, **wave) -> Assignment:
    """The message that hands one prompt visit to a generator (a training lease or a held-out one);
    `wave`: seed, wave and wave_size under exact lag control (learner/orchestration/exact.py)."""
    return Assignment(lease_id=lease_id, prompt_id=prompt_id, epoch=epoch, temperature=temperature, n=n,
                      policy_version=version, prompt_tokens=prompt, answer=problem.answer,
                      verifier=problem.verifier, metadata=problem.metadata, max_tokens=max_tokens, **wave)


class LeaseBook:
    """Open leases, the data cursor, and the outcome counters."""

    def __init__(self, problems: list[Problem], prompt_tokens: list[list[int]], tracker: Tracker,
                 schedule: ScheduleConfig, group_size: int, max_tokens: int, timeout_s: float, order_seed: int):
        self.problems = problems
        self.schedule = schedule
        self.group_size, self.max_tokens, self.timeout_s = group_size, max_tokens, timeout_s
        self.order_seed = order_seed
        self.prompt_bytes = [pack_ids(t) for t in prompt_tokens]
        self.tracker = tracker
        self.epoch = 0
        self.cursor = 0
        self.order = self._order(0)
        self.requeue: collections.deque[tuple[int, int]] = collections.deque()  # (prompt_id, epoch)
        self.next_lease_id = 1
        self.leases: dict[int, Lease] = {}
        self.dispatched = 0
        self.outcomes: collections.Counter[str] = collections.Counter({str(o): 0 for o in LeaseOutcome})
        self.failures: collections.Counter[str] = collections.Counter()
        # outcome counts by H at lease ("0", "1", "2", "3+") and, for groups that came back, by length quarter
        self.by_h: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.by_length: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.problems)))
        random.Random(self.order_seed * 1_000_003 + epoch).shuffle(order)
        return order

    def _next_visit(self) -> tuple[int, int]:
        if self.requeue:
            return self.requeue.popleft()
        if self.cursor >= len(self.order):
            self.epoch += 1
            self.cursor = 0
            self.order = self._order(self.epoch)
        pid = self.order[self.cursor]
        self.cursor += 1
        return pid, self.epoch

    def lease(self, generator_id: int, version: int, now: float | None = None, **wave) -> Assignment:
        now = time.monotonic() if now is None else now
        prompt_id, epoch = self._next_visit()
        h = self.tracker.h(prompt_id)
        temp = temperature(h, self.schedule)
        lease = Lease(self.new_lease_id(), prompt_id, epoch, generator_id, temp, version, now + self.timeout_s, h=h)
        self.leases[lease.lease_id] = lease
        self.dispatched += 1
        return assignment(lease.lease_id, prompt_id, epoch, self.problems[prompt_id], self.prompt_bytes[prompt_id],
                          temp, self.group_size, version, self.max_tokens, **wave)

    def new_lease_id(self) -> int:
        """Lease ids are unique across training and evaluation leases."""
        self.next_lease_id += 1
        return self.next_lease_id - 1

    def outstanding(self, generator_id: int | None = None) -> int:
        """Leases out at generators (not yet returned)."""
        return sum(1 for l in self.leases.values()
                   if not l.returned and (generator_id is None or l.generator_id == generator_id))

    def out_at_generators(self) -> set[int]:
        """Open leases whose group has not come back."""
        return {i for i, l in self.leases.items() if not l.returned}

    def returned(self, lease_id: int) -> Lease | None:
        """Mark a lease's group as arrived; None for an unknown, closed or duplicate lease."""
        lease = self.leases.get(lease_id)
        if lease is None or lease.returned:
            return None
        lease.returned = True
        return lease

    def bins(self, lease_id: int, mean_tokens: float) -> tuple[str, str]:
        """An open lease's H bin and the length bin of its group."""
        return h_bin(self.leases[lease_id].h), length_bin(mean_tokens, self.max_tokens)

    def close(self, lease_id: int, outcome: LeaseOutcome, reason: str = "", mean_tokens: float | None = None) -> None:
        """End a lease as `outcome`; `mean_tokens`: its group's mean response length, where one came back."""
        outcome = str(LeaseOutcome(outcome))  # counted under its plain name (summaries, checkpoints)
        lease = self.leases.pop(lease_id)
        self.outcomes[outcome] += 1
        self.by_h[h_bin(lease.h)][outcome] += 1
        if mean_tokens is not None:
            self.by_length[length_bin(mean_tokens, self.max_tokens)][outcome] += 1
        if outcome == LeaseOutcome.FAILED:
            self.failures[reason or "unknown"] += 1

    def expire(self, now: float | None = None, generator_id: int | None = None) -> list[Lease]:
        """Close leases past their deadline (or all of a dead generator's) and queue their visits again."""
        now = time.monotonic() if now is None else now
        expired = [l for l in self.leases.values() if not l.returned and (
            l.deadline < now if generator_id is None else l.generator_id == generator_id)]
        for l in expired:
            self.close(l.lease_id, LeaseOutcome.REISSUED)
            self.requeue.append((l.prompt_id, l.epoch))
        return expired

    def metrics(self) -> dict:
        """The book as a step's metrics show it."""
        return {"open_leases": self.open, "leases/dispatched": self.dispatched,
                **{f"leases/{k}": v for k, v in self.outcomes.items()}}

    @property
    def open(self) -> int:
        return len(self.leases)

    def check_identity(self, buffered: list[int], in_step: list[int]) -> None:
        """Every open lease is out at a generator (not yet returned), or returned with its group in
        the buffer or in the running step; every buffered or training group holds an open lease.
        Raises LeaseIdentityError naming the leases that break it."""
        held = collections.Counter(buffered) + collections.Counter(in_step)
        returned = {i for i, l in self.leases.items() if l.returned}
        lost = sorted(returned - set(held))
        orphans = sorted(i for i in held if i not in returned)
        doubled = sorted(i for i, c in held.items() if c > 1)
        if lost or orphans or doubled or not self.counts_add_up():
            raise LeaseIdentityError(
                f"lease identity broken: returned leases with no group anywhere {lost[:20]}, groups without "
                f"an open lease {orphans[:20]}, groups held twice {doubled[:20]}; dispatched {self.dispatched}, "
                f"outcomes {dict(self.outcomes)}, open {self.open}")

    def counts_add_up(self) -> bool:
        """Every dispatch is trained, dropped, failed, re-issued, or still open."""
        return self.dispatched == sum(self.outcomes.values()) + self.open

    def state_dict(self) -> dict:
        """The cursor and counters as a resumed run must see them. Leases still out at generators die
        with them, so they are saved as re-issued (their visits go back in the queue); leases whose
        group came back and waits in the buffer stay open, and the buffer is saved with them."""
        out_at_generators = [l for l in self.leases.values() if not l.returned]
        outcomes = dict(self.outcomes)
        outcomes["reissued"] += len(out_at_generators)
        requeue = list(self.requeue) + [(l.prompt_id, l.epoch) for l in out_at_generators]
        returned = [dataclasses.astuple(l) for l in self.leases.values() if l.returned]
        return {"epoch": self.epoch, "cursor": self.cursor, "requeue": requeue,
                "next_lease_id": self.next_lease_id, "dispatched": self.dispatched,
                "outcomes": outcomes, "failures": dict(self.failures), "returned_leases": returned,
                **self.binned()}

    def binned(self) -> dict[str, dict[str, dict[str, int]]]:
        """The outcome counts by H at lease and by response length, as plain dicts."""
        return {"by_h": {k: dict(c) for k, c in sorted(self.by_h.items())},
                "by_length": {k: dict(c) for k, c in sorted(self.by_length.items())}}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = state["epoch"], state["cursor"]
        self.order = self._order(self.epoch)
        self.requeue = collections.deque(tuple(v) for v in state["requeue"])
        self.next_lease_id, self.dispatched = state["next_lease_id"], state["dispatched"]
        self.outcomes = collections.Counter(state["outcomes"])
        self.failures = collections.Counter(state["failures"])
        self.leases = {l[0]: Lease(*l) for l in state["returned_leases"]}
        for key in ("by_h", "by_length"):  # absent from checkpoints of older versions
            counts = collections.defaultdict(collections.Counter)
            counts.update({k: collections.Counter(c) for k, c in state.get(key, {}).items()})
            setattr(self, key, counts)
