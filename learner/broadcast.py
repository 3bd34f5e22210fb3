"""Sends new weights to every generator: an announce over ZeroMQ, then one flat buffer over
torch.distributed, in a background thread so the learner keeps training while generators catch up.

One broadcast at a time: a collective needs every generator to join, and a generator joins only
between generation batches. While one is in progress, newer versions wait; only the latest is sent.
"""

from __future__ import annotations

import logging
import threading

import torch

from pipeline.collective import WeightGroup, flatten, tensor_metas
from pipeline.messages import WeightUpdate

log = logging.getLogger(__name__)


class Broadcaster:
    def __init__(self, backend: str, host: str, port: int, world_size: int, dtype: str):
        self.dtype = dtype
        self.group: WeightGroup | None = None
        self.error: BaseException | None = None
        self._job: torch.Tensor | None = None
        self._cv = threading.Condition()
        self._closed = False
        self.sent_versions: list[int] = []
        self._thread = threading.Thread(target=self._run, args=(backend, host, port, world_size),
                                        name="weight-broadcast", daemon=True)
        self._thread.start()

    def _run(self, backend, host, port, world_size) -> None:
        try:
            self.group = WeightGroup(backend, host, port, 0, world_size)  # waits for all generators
            while True:
                with self._cv:
                    self._cv.wait_for(lambda: self._job is not None or self._closed)
                    if self._closed:
                        return
                    flat = self._job
                self.group.broadcast(flat)
                with self._cv:
                    self._job = None
                    self._cv.notify_all()
        except BaseException as exc:  # noqa: BLE001 - surfaced to the learner loop via .error
            self.error = exc
            log.error("weight broadcast failed: %s", exc)

    @property
    def ready(self) -> bool:
        """Group formed and no broadcast in progress."""
        return self.group is not None and self._job is None and self.error is None

    def prepare(self, version: int, named: list[tuple[str, torch.Tensor]]) -> tuple[WeightUpdate, torch.Tensor]:
        """Snapshot the weights (so training may go on) and the announce that describes them."""
        dtype = getattr(torch, self.dtype)
        flat = flatten(named, dtype)
        update = WeightUpdate(version=version, tensors=tensor_metas(named), dtype=self.dtype)
        return update, flat

    def submit(self, version: int, flat: torch.Tensor) -> None:
        with self._cv:
            assert self._job is None, "a broadcast is already in progress"
            self._job = flat.to(self.group.device)
            self.sent_versions.append(version)
            self._cv.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: self._job is None or self.error is not None, timeout)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
