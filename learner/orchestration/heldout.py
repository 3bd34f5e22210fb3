"""Held-out evaluation during training, through the generators (the same vLLM engines that sample).

A round leases every held-out problem once (n = k, temperature = eval.temperature) beside the training
leases; these leases are not training dispatches and stay out of the lease book's accounting. When the
last result is in, the round is scored (mean@k, pass@k). Each problem's samples are drawn with a seed
of its own, the same in every round (common random numbers): two runs of one config score the same
weights alike, and a round's change from the last is less buried in sampling noise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from learner.orchestration.leases import assignment
from learner.orchestration.exact import lease_seed
from pipeline.config import DataConfig, EvalConfig
from pipeline.data import heldout_problems
from pipeline.messages import Assignment, Rollout, pack_ids
from pipeline.scoring import DatasetScore, score
from pipeline.prompts import render


class HeldOutError(RuntimeError):
    pass


@dataclass
class EvalRound:
    step: int
    pending: dict[int, int]  # lease id -> problem index
    rewards: dict[int, list[float]] = field(default_factory=dict)


class Evaluator:
    def __init__(self, ev: EvalConfig, data: DataConfig, max_tokens: int, tokenizer, seed: int = 0):
        """`max_tokens`: the generation length of a held-out sample, unless `eval.max_tokens` sets one;
        `seed`: the run's, from which each problem's sampling seed is derived."""
        self.ev, self.seed = ev, seed
        self.max_tokens = ev.max_tokens or max_tokens
        self.name, self.problems = heldout_problems(data, ev)
        self.prompts = [pack_ids(render(tokenizer, p.question, data)) for p in self.problems]
        self.current: EvalRound | None = None
        self.results: list[tuple[int, DatasetScore]] = []

    def start(self, step: int, new_lease_id, version: int) -> list[Assignment]:
        assignments = [assignment(new_lease_id(), i, -1, p, self.prompts[i], self.ev.temperature, self.ev.k,
                                  version, self.max_tokens, seed=lease_seed(self.seed, -1, i))
                       for i, p in enumerate(self.problems)]
        self.current = EvalRound(step, {a.lease_id: a.prompt_id for a in assignments})
        return assignments

    def start_round(self, version: int, new_lease_id, generators: list[int], send) -> None:
        """Lease the held-out set once, spread over `generators` (skipped while a round is still out)."""
        if self.busy or not generators:
            return
        for i, a in enumerate(self.start(version, new_lease_id, version)):
            send(generators[i % len(generators)], a)

    def owns(self, lease_id: int) -> bool:
        return self.current is not None and lease_id in self.current.pending

    def on_rollout(self, r: Rollout) -> tuple[int, DatasetScore] | None:
        """Record an eval rollout; once its round is complete, the round's step and score."""
        rnd = self.current
        idx = rnd.pending.pop(r.lease_id)
        rnd.rewards[idx] = [s.reward for s in r.samples]
        if rnd.pending:
            return None
        result = score(self.name, [rnd.rewards[i] for i in sorted(rnd.rewards)])
        self.results.append((rnd.step, result))
        self.current = None
        return rnd.step, result

    def wait(self, poll: Callable[[int], bool], idle_s: float) -> None:
        """Until the round out (if any) is complete, `poll(timeout_ms)` handing rollouts in (True when
        one came). Its timeout is on progress, not on the whole round (AIME at k = 32 and 16k tokens
        takes hours): it fails only when no rollout at all arrives for `idle_s` seconds."""
        last = time.monotonic()
        while self.busy:
            if time.monotonic() - last > idle_s:
                raise HeldOutError(f"held-out evaluation: no result for {idle_s:.0f}s (learner.idle_timeout_s); "
                                   f"{len(self.current.pending)} problems still out")
            if poll(50):
                last = time.monotonic()

    def abandon(self) -> None:
        self.current = None

    @property
    def busy(self) -> bool:
        return self.current is not None
