"""Sends new weights to the generators: a WeightUpdate message over ZeroMQ, then one flat buffer over
torch.distributed, in background threads so the learner keeps training while generators catch up.

Each generator has its own two-rank group (learner = rank 0, generator = rank 1) on its own port.
A collective needs every member, so with one shared group a dead generator would stall every
broadcast until the group was rebuilt; with one group per generator, a crash only ends that
generator's group, and its replacement joins a fresh one. The price: the learner sends the buffer
once per generator (for many generators on NCCL, a shared group rebuilt on membership change is the
faster design; see the notes on the throughput issue).

One broadcast at a time per generator: while one is in progress, newer versions wait and only the
latest is sent (a generator joins a collective only between generation batches).
"""

from __future__ import annotations

import logging
import threading

import torch

from pipeline.collective import WeightGroup, empty_buffer
from pipeline.messages import WeightUpdate

log = logging.getLogger(__name__)


class GeneratorLink:
    """The weight group to one generator process and the thread that feeds it."""

    def __init__(self, backend: str, host: str, port: int, timeout_s: float, device: torch.device | str = "cpu"):
        """`device`: the learner's (its buffers are sent from there)."""
        self.port, self.device = port, torch.device(device)
        self.group: WeightGroup | None = None
        self.error: BaseException | None = None
        self.version = -1  # last version handed to this link
        self._job: torch.Tensor | None = None
        self._after = None  # CUDA: the event the job's buffer was filled by
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, args=(backend, host, port, timeout_s),
                                        name=f"weights-{port}", daemon=True)
        self._thread.start()

    def _run(self, backend, host, port, timeout_s) -> None:
        try:
            group = WeightGroup(backend, host, port, 0, 2, timeout_s, self.device)  # waits for the generator
            with self._cv:
                self.group = group
                self._cv.notify_all()
            while True:
                with self._cv:
                    self._cv.wait_for(lambda: self._job is not None or self._closed)
                    if self._closed:
                        return
                    flat, after = self._job, self._after
                self.group.broadcast(flat, after)
                with self._cv:
                    self._job = None
                    self._cv.notify_all()
        except BaseException as exc:  # noqa: BLE001 - surfaced through .error; the learner restarts it
            with self._cv:
                self.error = exc
                self._cv.notify_all()
            log.warning("weight link on port %d ended: %s", port, exc)

    @property
    def ready(self) -> bool:
        """Group formed, alive, and no broadcast in progress."""
        return self.group is not None and self._job is None and self.error is None

    def wait_joined(self, timeout: float) -> bool:
        """Block until the generator has joined the weight group (True), the link failed, or `timeout`."""
        with self._cv:
            self._cv.wait_for(lambda: self.group is not None or self.error is not None, timeout)
            return self.group is not None and self.error is None

    def submit(self, version: int, flat: torch.Tensor) -> None:
        with self._cv:
            if self.group is None:
                raise RuntimeError(f"weight link on port {self.port}: no generator has joined yet (check `ready`)")
            assert self._job is None, "a broadcast is already in progress"
            self._job = flat.to(self.group.device)
            self._after = None
            if self._job.is_cuda:  # the broadcast's stream waits for the copy, and only for it
                self._after = torch.cuda.Event()
                self._after.record()
            self.version = version
            self._cv.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: self._job is None or self.error is not None, timeout)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()


def prepare(version: int, trainer, dtype: str) -> tuple[WeightUpdate, torch.Tensor]:
    """Snapshot the trainer's weights (so training may go on) into one buffer, filled a parameter at a
    time, and the WeightUpdate message that describes them."""
    metas = trainer.weight_metas()
    flat = empty_buffer(metas, dtype, trainer.device)
    trainer.copy_weights(flat)
    return WeightUpdate(version=version, tensors=metas, dtype=dtype), flat
