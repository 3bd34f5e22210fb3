"""Benchmark-only stand-in for the vLLM engine (`run.py bench pipeline`): it returns pre-recorded
completions a fixed delay after each group was submitted, any number of groups at once (as vLLM's
continuous batching does, with throughput max_inflight / delay), so the orchestration around it can be
measured alone. It joins the real weight group and receives every real broadcast; only sampling is
replaced. Tests may use it as a test double for the generator loop."""

from __future__ import annotations

import random
import time

from actors.engine import Completion, Request
from pipeline.collective import WeightGroup
from pipeline.messages import WeightUpdate
from pipeline.models import load_tokenizer
from pipeline.weight_wire import BucketBuffers, GlooInit, GlooUpdate, receive


class StandInEngine:
    def __init__(self, model_path: str, delay_s: float, seed: int = 0):
        self.tokenizer = load_tokenizer(model_path)
        self.delay_s = delay_s
        rng = random.Random(seed)
        eos = self.tokenizer.eos_token_id
        # recorded once: short numeric answers, as the default task's generations look
        self.recorded = [Completion(self.tokenizer.encode(str(rng.randint(-9, 18))) + [eos], [], "stop")
                         for _ in range(64)]
        for c in self.recorded:
            c.logprobs = [-0.5] * len(c.tokens)
        self.group: WeightGroup | None = None
        self.tick_s = 0.005  # a decode step's length: how often the generator loop gets control back
        self._due: dict[int, tuple[float, int, int]] = {}  # key -> (time it is done, n, version at submit)
        self._version = 0  # the weights the last decode step sampled under
        self.peak_running = 0  # most groups running at once (tests check that groups overlap)
        self.events: list[tuple[str, int]] = []  # ("submit", key), ("done", key), ("load", version), in order
        self.max_model_len = 1 << 20
        self.weight_version = 0

    def submit(self, key: int, r: Request, weights: str = "") -> None:
        self._due[key] = (time.monotonic() + self.delay_s, r.n, self._version)
        self.peak_running = max(self.peak_running, len(self._due))
        self.events.append(("submit", key))

    @property
    def running(self) -> int:
        return len(self._due)

    def decode_step(self, version: int) -> list[tuple[int, list[Completion]]]:
        """Wait one decode step (at most `tick_s`, less if a group is due sooner); hand back the
        groups whose delay is over."""
        self._version = version
        now = time.monotonic()
        time.sleep(max(0.0, min(self.tick_s, min(t for t, _, _ in self._due.values()) - now)))
        now = time.monotonic()
        done = [key for key, (t, _, _) in self._due.items() if t <= now]
        out = []
        for key in done:
            _, n, first = self._due.pop(key)
            self.events.append(("done", key))
            out.append((key, [self._recorded(key, j, first, version) for j in range(n)]))
        return out

    def _recorded(self, key: int, j: int, first: int, last: int) -> Completion:
        """A recorded completion whose first token was sampled under the weights current at submit
        time and the rest under those current now, so an in-flight update shows in the lag as it would."""
        c = self.recorded[(key * 7 + j) % len(self.recorded)]
        return Completion(c.tokens, c.logprobs, c.finish_reason, [first] + [last] * (len(c.tokens) - 1))

    def init_weight_transfer(self, backend: str, info: dict) -> None:
        """Joins the learner's weight group as the gloo engine's one worker would."""
        init = GlooInit(**info)
        self.buffers = BucketBuffers(init.bucket_bytes)
        self.group = WeightGroup(init.master_address, init.master_port, init.rank_offset, init.world_size,
                                 init.timeout_s, init.key)

    def load_weights(self, update: WeightUpdate) -> None:
        try:
            receive(self.group, GlooUpdate(**update.info), self.buffers, lambda tensors: None)
        except Exception:
            self.group = None  # as the gloo engine: leave at once (pipeline/weight_transfer.py)
            raise
        self.weight_version = self._version = update.version
        self.events.append(("load", update.version))

    def probe(self, version: int = 0) -> list[float]:
        return []  # no model: nothing to verify
