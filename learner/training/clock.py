"""Where a step's time goes: seconds per stage, summed until read.

On a GPU, kernels run behind the Python thread that launched them; each stage boundary waits for
this thread's current stream so that a stage is charged for its own kernels. Never for the whole
device: a weight broadcast runs on streams of its own and may wait on a slow generator, and a
device-wide synchronise would make every step wait for it (docs/gpu.md). The wait costs a little
throughput, the price of a breakdown that means something.
"""

from __future__ import annotations

import collections
import contextlib
import time

import torch


class StageClock:
    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.spent: collections.Counter[str] = collections.Counter()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()

    @contextlib.contextmanager
    def stage(self, name: str):
        self._sync()
        t = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.spent[name] += time.perf_counter() - t

    def take(self) -> dict[str, float]:
        """The seconds per stage since the last take, as `time/<stage>` metrics; the clock restarts."""
        out = {f"time/{k}": v for k, v in self.spent.items()}
        self.spent.clear()
        return out
