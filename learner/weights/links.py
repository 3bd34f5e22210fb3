"""Sends new weights to the generators through vLLM's weight-transfer protocol, in background threads
so the learner keeps training while generators catch up.

The learner side of each generator is a vLLM trainer-side engine (`TrainerWeightTransferEngine`:
vLLM's own `nccl` one on GPUs, `pipeline/weight_transfer.py`'s `gloo` one on CPU), built by
`WeightTransferTrainerFactory.trainer_init` and driven per version by `send_weights()`. Its control
plane is `ControlClient`: the protocol's calls become msgspec messages on the ZeroMQ control channel
(WeightInit, WeightUpdate), and the generator runs the matching phases on its engine at its next safe
point. The engine's workers join at ranks 1..tensor_parallel_size, so a tensor-parallel generator's
workers each receive the weights.

A link is one weight group: the learner at rank 0 and the workers of one or more generators after it
(learner/weights/membership.py decides which: the whole pool, or one generator each).

What is sent is a `Snapshot`: the weights copied into host memory one parameter at a time (so training
goes on meanwhile, and the learner's device holds no second copy of the model), sent in packed buckets
of `weights.bucket_bytes`. One broadcast at a time per link: while one is in progress, newer
versions wait and only the latest is sent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from pipeline.config import WeightsConfig
from pipeline.messages import WeightInit, WeightUpdate
from pipeline.transport import Ports

log = logging.getLogger(__name__)


@dataclass
class Snapshot:
    """One version of the weights in host memory, in the dtype they travel in."""

    version: int
    weights: list[tuple[str, torch.Tensor]] = field(repr=False)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for _, t in self.weights)


def take_snapshot(version: int, trainer, dtype: str, reuse: Snapshot | None = None) -> Snapshot:
    """The trainer's weights now, as `version`, in the host memory of `reuse` (a snapshot no link
    holds any more) if given."""
    return Snapshot(version, trainer.host_weights(getattr(torch, dtype), reuse.weights if reuse else None))


class ControlClient:
    """vLLM's `VLLMWeightSyncClient` over the control channel, for the generators of one weight group.
    `post(generator, msg)` queues a message for one generator (safe from any thread; the loop's
    endpoint sends it). `members`: the group's generators in rank order, each with its engine's
    worker count: the first one's workers take ranks 1.., the next one's follow (a group of one
    generator is the case vLLM's trainer engines know; the rank offsets are all a shared group adds).
    A generator starts, loads and finishes an update on one WeightUpdate message, at a point where no
    decode step runs, and records `version` as vLLM's weight version; so start and finish need no
    message of their own."""

    def __init__(self, backend: str, post: Callable[[int, object], None], members: dict[int, int]):
        self.backend, self.post, self.members = backend, post, dict(members)
        self.version = -1  # the version the next update carries
        self.posted = -1  # the version of the last WeightUpdate handed to `post`

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        offset = init_info.get("rank_offset", 1)  # vLLM's trainer engines put the (first) engine's workers at 1
        for gid, workers in self.members.items():
            self.post(gid, WeightInit(backend=self.backend, info={**init_info, "rank_offset": offset}))
            offset += workers

    def start_weight_update(self) -> None:
        pass

    def update_weights(self, update_info: dict) -> None:
        for gid in self.members:
            self.post(gid, WeightUpdate(version=self.version, info=update_info))
        self.posted = self.version

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        pass


def trainer_init_info(backend: str, host: str, port: int, workers: int, bucket_bytes: int, timeout_s: float):
    """vLLM's trainer init info for `backend`: the learner at rank 0, `workers` engine workers after it."""
    if backend == "gloo":
        from pipeline.weight_transfer import GlooTrainerInitInfo, register

        register()
        return GlooTrainerInitInfo(master_address=host, master_port=port, world_size=1 + workers,
                                   bucket_bytes=bucket_bytes, timeout_s=timeout_s, rank=0)
    if backend == "nccl":
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        return NCCLTrainerInitInfo(master_address=host, master_port=port, world_size=1 + workers, packed=True,
                                   packed_buffer_size_bytes=bucket_bytes, packed_num_buffers=2, rank=0)
    raise ValueError(f"unknown weight-transfer backend {backend!r} (gloo or nccl)")


def choose_backend(setting: str, device: torch.device, shares_gpu: bool = False) -> str:
    """`weights.backend`: "auto" is NCCL from a learner on a GPU of its own, else gloo. `shares_gpu`:
    a generator sees the learner's GPU (no `generator.devices` on a CUDA machine), where NCCL would put
    two ranks on one GPU and refuse."""
    if setting != "auto":
        return setting
    if device.type == "cuda" and shares_gpu:
        log.warning("generator.devices is empty, so the generators share the learner's GPU: weights go through "
                    "host memory (gloo); give them GPUs of their own in generator.devices for NCCL")
        return "gloo"
    return "nccl" if device.type == "cuda" else "gloo"


def opener(backend: str, wc, host: str, device: torch.device, post: Callable[[int, object], None],
           ports: list[int] | tuple[int, ...] = ()) -> Callable[[dict[int, int]], "GeneratorLink"]:
    """What opens a weight link to `members` (generator -> its engine's workers: one generator for a
    group of its own, the pool for a shared one): a port on `host` (transport.host) from `ports`
    (transport.weight_ports; any free one if empty), settings from the `weights` section (`wc`)."""
    chooser = Ports(host, ports)

    def open_link(members: dict[int, int]) -> GeneratorLink:
        info = trainer_init_info(backend, host, chooser.take(), sum(members.values()), wc.bucket_bytes, wc.timeout_s)
        # NCCL sends from the learner's GPU; gloo from the snapshot's host memory, where it already is
        return GeneratorLink(info, ControlClient(backend, post, members),
                             device if backend == "nccl" else torch.device("cpu"), wc.timeout_s)

    return open_link


class SnapshotSource:
    """vLLM's `WeightSource` over the snapshot being sent, in host memory: the gloo engine sends from
    there, and the NCCL one (learner/weights/nccl.py) copies each tensor into its own device buffer."""

    def __init__(self):
        self.snapshot: Snapshot | None = None

    def metadata(self):
        from vllm.distributed.weight_transfer.base import ParamMeta

        return [ParamMeta(name, t.dtype, tuple(t.shape)) for name, t in self.snapshot.weights]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(self.snapshot.weights)


def trainer_engine(init_info, client: ControlClient, source: SnapshotSource):
    """vLLM's trainer-side engine for `init_info`: NCCL's on streams of its own (learner/weights/nccl.py),
    else the registered one (gloo: pipeline/weight_transfer.py)."""
    if init_info.backend == "nccl":
        from learner.weights.nccl import LinkNcclTrainer

        return LinkNcclTrainer.trainer_init(init_info, client=client, source=source)
    from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

    return WeightTransferTrainerFactory.trainer_init(init_info, client=client, source=source)


class GeneratorLink:
    """One weight group (learner side: its generators are the control client's members) and the thread
    that feeds it.

    Joining and each broadcast are bounded by `timeout_s` (weights.timeout_s): past it, `failure()`
    reports a TimeoutError and shuts the group down, which for vLLM's NCCL engine aborts the
    communicator (`PyNcclCommunicator.destroy`: ncclCommAbort), so a thread blocked on a dead or
    stopped generator is released; gloo ops time out by themselves. The supervisor then kills and
    restarts the generator as for any death.
    """

    def __init__(self, init_info, client: ControlClient, device: torch.device | str = "cpu",
                 timeout_s: float | None = None):
        """`init_info`: vLLM's trainer init info (`trainer_init_info`); `device`: the learner's (NCCL
        sends from it: set as this thread's current device, never the default cuda:0); `timeout_s`:
        the longest a join or a broadcast may take (default: the init info's)."""
        self.port, self.client, self.device = init_info.master_port, client, torch.device(device)
        self.timeout_s = timeout_s if timeout_s is not None else getattr(init_info, "timeout_s", 1800.0)
        self.engine = None  # vLLM's trainer-side engine, once the generator has joined
        self.error: BaseException | None = None
        self.version = -1  # last version handed to this link
        self._job: Snapshot | None = None
        self._busy_since: float | None = time.monotonic()  # joining, or sending `_job`
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, args=(init_info,), name=f"weights-{self.port}", daemon=True)
        self._thread.start()

    def _run(self, init_info) -> None:
        engine = None
        try:
            if self.device.type == "cuda":
                # vLLM's engines take the thread's current device, and its communicator set-up the
                # thread's current stream: both this link's own, never the training stream
                torch.cuda.set_device(self.device)
                torch.cuda.set_stream(torch.cuda.Stream(self.device))
            source = SnapshotSource()
            engine = trainer_engine(init_info, self.client, source)
            with self._cv:
                if self.error is not None or self._closed:
                    return  # timed out or closed while joining
                self.engine, self._busy_since = engine, None
                self._cv.notify_all()
            while True:
                with self._cv:
                    self._cv.wait_for(lambda: self._job is not None or self._closed)
                    if self._closed or self.error is not None:
                        return
                    source.snapshot = self._job
                self.client.version = source.snapshot.version
                engine.send_weights()
                with self._cv:
                    self._job, self._busy_since = None, None
                    self._cv.notify_all()
        except BaseException as exc:  # noqa: BLE001 - surfaced through .error; the learner restarts it
            with self._cv:
                # kept without its traceback: the failed broadcast's frames hold its gloo work, which
                # keeps the group's sockets open, and the other members of a shared group would wait
                # on them until their own timeout instead of failing now
                self.error = self.error or exc.with_traceback(None)
                self._cv.notify_all()
            log.warning("weight link on port %d ended: %s", self.port, exc)
        finally:
            if engine is not None:
                engine.shutdown()  # the group goes with the thread: nothing is left per restart

    @property
    def joined(self) -> bool:
        return self.engine is not None

    @property
    def sending(self) -> Snapshot | None:
        """The snapshot this link is sending, if any."""
        return self._job

    @property
    def ready(self) -> bool:
        """Group formed, alive, and no broadcast in progress."""
        return self.engine is not None and self._job is None and self.error is None

    def failure(self, now: float | None = None) -> BaseException | None:
        """Why this link failed, if it did: an error of its thread, or a join or broadcast that has
        taken longer than `timeout_s` (which then shuts the group down)."""
        now = time.monotonic() if now is None else now
        with self._cv:
            if self.error is not None or self._busy_since is None or now - self._busy_since <= self.timeout_s:
                return self.error
            what = "joining" if self.engine is None else f"the broadcast of version {self.version}"
            self.error = TimeoutError(f"{what} took over {self.timeout_s:.0f} s (weights.timeout_s)")
            self._cv.notify_all()
            engine = self.engine
        log.error("weight link on port %d: %s; shutting its group down", self.port, self.error)
        if engine is not None:  # NCCL: ncclCommAbort frees the thread blocked in the broadcast
            getattr(engine, "abort", engine.shutdown)()
        return self.error

    @property
    def ended(self) -> bool:
        """Its thread is gone (closed or failed, and out of any broadcast)."""
        return not self._thread.is_alive()

    def wait_joined(self, timeout: float) -> bool:
        """Block until the generator has joined the weight group (True), the link failed, or `timeout`."""
        with self._cv:
            self._cv.wait_for(lambda: self.engine is not None or self.error is not None, timeout)
            return self.engine is not None and self.error is None

    def submit(self, snapshot: Snapshot) -> None:
        with self._cv:
            if self.engine is None:
                raise RuntimeError(f"weight link on port {self.port}: no generator has joined yet (check `ready`)")
            assert self._job is None, "a broadcast is already in progress"
            self._job, self._busy_since = snapshot, time.monotonic()
            self.version = snapshot.version
            self._cv.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: self._job is None or self.error is not None, timeout)

    def close(self, timeout: float = 0.0) -> bool:
        """End the link; its thread shuts the group down as it leaves. A thread inside a broadcast
        leaves when that ends (the generator is killed, or the transfer times out). Waits up to
        `timeout` for the thread; True if it has ended."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()


def await_generator(endpoint, gid: int, backend: str = "gloo", bucket_bytes: int = 64 << 20,
                    timeout_s: float = 120.0) -> GeneratorLink:
    """The learner's part of a generator's start, for a caller that runs no learner loop (benchmarks,
    tests that play the learner): wait until its heartbeat says its engine is up, open its weight link
    (WeightInit goes out through the endpoint), and pump the endpoint until the generator has joined.
    Other messages are dropped meanwhile."""
    deadline = time.monotonic() + timeout_s
    up = False
    while not up:  # its engine is up once it says anything but "starting"
        if time.monotonic() > deadline:
            raise TimeoutError(f"generator {gid} never got its engine up")
        up = any(getattr(m, "generator_id", None) == gid and getattr(m, "status", "") != "starting"
                 for m in endpoint.recv(20))
    link = opener(backend, WeightsConfig(timeout_s=timeout_s, bucket_bytes=bucket_bytes), endpoint.addresses.host,
                  torch.device("cpu"), endpoint.post)({gid: 1})
    while not link.joined and link.error is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"generator {gid} never joined its weight group")
        endpoint.recv(20)
    if link.error is not None:
        raise RuntimeError(f"generator {gid}: its weight group failed: {link.error}")
    return link
