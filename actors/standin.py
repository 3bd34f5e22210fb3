"""Benchmark-only stand-in for the vLLM engine (`run.py bench pipeline`): it returns pre-recorded
completions after a fixed delay per batch, so the orchestration around it can be measured alone.
It joins the real weight group and receives every real broadcast; only sampling is replaced."""

from __future__ import annotations

import random
import time

from actors.engine import Completion, Request
from pipeline.collective import WeightGroup, empty_buffer
from pipeline.messages import WeightUpdate
from pipeline.models import load_tokenizer


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
        self.max_model_len = 1 << 20

    def generate(self, requests: list[Request]) -> list[list[Completion]]:
        time.sleep(self.delay_s)
        return [[self.recorded[(i * 7 + j) % len(self.recorded)] for j in range(r.n)]
                for i, r in enumerate(requests)]

    def join_weight_group(self, backend: str, host: str, port: int, rank: int, world_size: int) -> None:
        self.group = WeightGroup(backend, host, port, rank, world_size)

    def load_weights(self, update: WeightUpdate) -> None:
        self.group.broadcast(empty_buffer(update.tensors, update.dtype, self.group.device))

    def probe(self) -> list[float]:
        return []  # no model: nothing to verify
