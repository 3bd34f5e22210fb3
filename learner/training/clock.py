"""Where a step's time goes: seconds per stage, summed until read.

On a GPU, kernels run behind the Python thread that launched them, so a stage is timed by two CUDA
events recorded on the thread's current stream (the training stream), read when the step's figures
are taken: the time between them on that stream, charged to that stage. Nothing waits for the whole
device: a weight broadcast runs on streams of its own and may wait on a slow generator, and a
device-wide synchronise would make every step wait for it (docs/gpu.md). Reading the events waits
for the training stream alone, once per step. On a CPU, wall-clock time.
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
        self._events: list[tuple[str, object, object]] = []  # (stage, start, end), not read yet

    @contextlib.contextmanager
    def stage(self, name: str):
        if self.device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end = torch.cuda.Event(enable_timing=True)
                end.record()
                self._events.append((name, start, end))
            return
        t = time.perf_counter()
        try:
            yield
        finally:
            self.spent[name] += time.perf_counter() - t

    def charge(self, name: str, seconds: float) -> None:
        """Time spent in stage `name` measured by someone else (a checkpoint's hold, across ticks)."""
        self.spent[name] += seconds

    def take(self) -> dict[str, float]:
        """The seconds per stage since the last take, as `time/<stage>` metrics; the clock restarts.
        On a GPU, waits for each stage's end event (its own stream, up to that point only)."""
        events, self._events = self._events, []
        for name, start, end in events:
            end.synchronize()
            self.spent[name] += start.elapsed_time(end) / 1000.0
        out = {f"time/{k}": v for k, v in self.spent.items()}
        self.spent.clear()
        return out
