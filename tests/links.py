"""A real weight link (learner/weights/links.py) to a real engine in the test's own process.

The link's control messages (WeightInit, WeightUpdate) would go over ZeroMQ to a generator process;
here they queue in an `Outbox`, and the test hands them to the engine itself, at the point it chooses
(between two decode steps, say), as the generator's loop would. Everything else is the real thing:
vLLM's trainer-side engine, the gloo group, packed buckets, vLLM's worker-side engine.
"""

from __future__ import annotations

import queue

from learner.weights.links import ControlClient, GeneratorLink, take_snapshot, trainer_init_info
from pipeline.messages import WeightInit, WeightUpdate
from pipeline.transport import free_port


class Outbox:
    """Stands in for the learner endpoint's `post` to one generator."""

    def __init__(self):
        self.messages: queue.Queue = queue.Queue()

    def __call__(self, msg) -> None:
        self.messages.put(msg)

    def take(self, kind: type, timeout: float = 120.0):
        msg = self.messages.get(timeout=timeout)
        assert isinstance(msg, kind), msg
        return msg


def open_link(engine, workers: int = 1, bucket_bytes: int = 64 << 20) -> tuple[GeneratorLink, Outbox]:
    """A link to `engine` (its `workers` workers joined at ranks 1..workers)."""
    outbox = Outbox()
    info = trainer_init_info("gloo", "127.0.0.1", free_port(), workers, bucket_bytes, 120.0)
    link = GeneratorLink(info, ControlClient("gloo", lambda gid, msg: outbox(msg), {0: workers}))
    init = outbox.take(WeightInit)
    engine.init_weight_transfer(init.backend, init.info)
    assert link.wait_joined(120) and link.error is None
    return link, outbox


def send(link: GeneratorLink, outbox: Outbox, engine, trainer, dtype: str = "float32") -> None:
    """The trainer's weights now, through the link into `engine`, as one version."""
    link.submit(take_snapshot(trainer.version, trainer, dtype))
    engine.load_weights(outbox.take(WeightUpdate))
    assert link.wait_idle(120) and link.error is None
