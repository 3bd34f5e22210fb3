"""`run.py bench weights`: one version of the weights into a running vLLM engine through vLLM's
weight-transfer protocol, beside a bare broadcast of the same buckets; the learner's extra memory
during the send; and, for a pool of 1, 2, 4 and 8 receivers (processes of their own:
benchmarks/receivers.py), the seconds per version, the bytes that leave the learner's process, its
CPU seconds and its extra memory, with one group shared by the pool (weights.group = "shared")
beside a group each ("own")."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.timing import median_time, print_table

LATE_S = 0.5
POOL = (1, 2, 4, 8)
ROOT = Path(__file__).resolve().parent.parent


def _each_on_a_thread(fn, items) -> None:
    """`fn(item)` for every item at once, each on a thread of its own; returns when all are done."""
    threads = [threading.Thread(target=fn, args=(item,)) for item in items]
    [t.start() for t in threads]
    [t.join() for t in threads]


def _sent_bytes() -> int:
    """Bytes this process has written through write-like calls so far (gloo's TCP pairs send with
    writev, which this counts): what left the learner's process."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("wchar:"))


class ReceiverProcesses:
    """vLLM's client protocol for a group whose receivers are `count` processes, one rank each
    (benchmarks/receivers.py): the init info starts them, each update is a line on their stdin."""

    def __init__(self, count: int):
        self.count, self.procs = count, []

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        for i in range(self.count):
            info = json.dumps({**init_info, "rank_offset": init_info["rank_offset"] + i})
            self.procs.append(subprocess.Popen([sys.executable, "-m", "benchmarks.receivers", info],
                                               stdin=subprocess.PIPE, text=True, cwd=ROOT))

    def start_weight_update(self) -> None:
        pass

    def update_weights(self, update_info: dict) -> None:
        line = json.dumps(update_info) + "\n"
        for p in self.procs:
            p.stdin.write(line)
            p.stdin.flush()

    def finish_weight_update(self, weight_version=None) -> None:
        pass

    def close(self) -> None:
        for p in self.procs:
            p.stdin.close()
        for p in self.procs:
            p.wait(60)


def _pool(source, n: int, shared: bool, trials: int, bucket_bytes: int, model_bytes: int) -> dict:
    """One version to `n` receivers, `trials` times: its median seconds (until every receiver has
    it), the bytes that left this process per version over the model's, this process's CPU seconds
    per version and its extra memory."""
    clients = [ReceiverProcesses(n)] if shared else [ReceiverProcesses(1) for _ in range(n)]
    with ThreadPoolExecutor(len(clients)) as exe:  # each rendezvous waits for its receivers to start
        senders = list(exe.map(lambda c: _sender(source, c, c.count + 1, bucket_bytes), clients))
    try:
        def version() -> float:
            t0 = time.perf_counter()

            def one(sender) -> None:
                sender.send_weights()
                sender.group.pg.barrier().wait()  # every receiver has it

            _each_on_a_thread(one, senders)
            return time.perf_counter() - t0

        version()  # warm-up: first-touch of the receivers' buffers
        sent0, cpu0 = _sent_bytes(), _cpu_s()
        times = [version() for _ in range(trials)]
        sent, cpu = (_sent_bytes() - sent0) / trials / model_bytes, (_cpu_s() - cpu0) / trials
        with PeakMemory() as peak:  # apart from the timed versions: its sampling costs CPU too
            version()
        return {"s": statistics.median(times), "sent_x": sent, "cpu_s": cpu, "extra_mb": peak.extra_mb}
    finally:
        for c in clients:
            c.close()


def _cpu_s() -> float:
    """CPU seconds this process (the learner's side; the receivers are processes of their own) has
    used so far, on all its threads: what a version costs the learner, apart from the cores it shares."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """This process's resident memory, sampled every millisecond on a thread: its peak above the
    level at the start (on CPU the learner's buffers are plain host allocations; large ones are
    returned to the system when freed, so the samples see them come and go)."""

    def __enter__(self):
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def extra_mb(self) -> float:
        return (self.peak - self.base) / 1e6


class BareWorkers:
    """The receiving side without vLLM: `workers` threads that join the group and receive every
    bucket into the same two buffers as the gloo engine does, loading nothing (vLLM's client
    protocol, structurally)."""

    def __init__(self, workers: int, late_s: float = 0.0):
        """`late_s`: worker 0 joins each update that late (a generator still finishing a decode step
        or, in drain mode, its running groups)."""
        self.workers, self.groups, self.late_s = workers, [], late_s
        self.done_at: list[float] = []  # when each worker had the whole update

    def _each(self, fn) -> None:
        _each_on_a_thread(fn, range(self.workers))

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        from pipeline.collective import WeightGroup
        from pipeline.weight_wire import BucketBuffers, GlooInit

        info = GlooInit(**init_info)
        self.buffers = [BucketBuffers(info.bucket_bytes) for _ in range(self.workers)]
        self.groups = [None] * self.workers

        def join(r):
            self.groups[r] = WeightGroup(info.master_address, info.master_port, info.rank_offset + r, info.world_size,
                                         key=info.key)
        self._each(join)

    def start_weight_update(self) -> None:
        pass

    def update_weights(self, update_info: dict) -> None:
        from pipeline.weight_wire import GlooUpdate, receive

        info = GlooUpdate(**update_info)
        self.done_at = [0.0] * self.workers

        def worker(r):
            if r == 0 and self.late_s:
                time.sleep(self.late_s)
            receive(self.groups[r], info, self.buffers[r], lambda pairs: None)
            self.done_at[r] = time.perf_counter()
        self._each(worker)

    def finish_weight_update(self, weight_version=None) -> None:
        pass


def _sender(source, workers, world: int, bucket_bytes: int):
    from pipeline.transport import free_port
    from pipeline.weight_transfer import GlooTrainerInitInfo, GlooTrainerWeightTransferEngine

    info = GlooTrainerInitInfo(master_address="127.0.0.1", master_port=free_port(), world_size=world,
                               bucket_bytes=bucket_bytes, rank=0)
    return GlooTrainerWeightTransferEngine.trainer_init(info, client=workers, source=source)


def _per_version(senders) -> tuple[float, float]:
    """(seconds for one version to reach every generator, mean seconds until a generator has it),
    each sender on its own thread (as the learner's links run)."""
    t0 = time.perf_counter()
    _each_on_a_thread(lambda s: s.send_weights(), senders)
    got = [t - t0 for s in senders for t in s.client.done_at]
    return time.perf_counter() - t0, statistics.mean(got)


def bench_weights(cfg, model_path: str, trials: int = 5, counts: tuple[int, ...] = POOL) -> dict:
    import torch

    from actors.engine import Engine

    from pipeline.config import GeneratorSettings
    from learner.training.trainer import host_buffer
    from learner.weights.links import ControlClient, GeneratorLink, SnapshotSource, take_snapshot, trainer_init_info
    from pipeline.messages import WeightInit, WeightUpdate
    from pipeline.models import load_causal_lm
    from pipeline.transport import free_port

    bucket_bytes = cfg.weights.bucket_bytes

    class Learner:  # the trainer's side of a snapshot, over the model loaded here
        device = torch.device("cpu")
        model = load_causal_lm(model_path, cfg.model.dtype)

        def host_weights(self, dtype, into=None):  # laid out as the trainer's: one block
            into = into or host_buffer([(n, tuple(p.shape)) for n, p in self.model.named_parameters()], dtype, False)
            for (_, p), (_, host) in zip(self.model.named_parameters(), into):
                host.copy_(p.detach())
            return into

    snapshot = take_snapshot(1, Learner(), cfg.model.dtype)
    model_mb = snapshot.nbytes / 1e6
    engine = Engine(GeneratorSettings.of(cfg), model_path, seed=0)

    # the full path: learner link -> control messages -> vLLM's worker engine -> load_weights
    posted: list = []
    link = GeneratorLink(trainer_init_info("gloo", "127.0.0.1", free_port(), 1, bucket_bytes, 600.0),
                         ControlClient("gloo", lambda gid, msg: posted.append(msg), {0: 1}))
    while not posted:
        time.sleep(0.01)
    init = posted.pop()
    assert isinstance(init, WeightInit)
    engine.init_weight_transfer(init.backend, init.info)
    assert link.wait_joined(600), link.error
    version = [1]

    def full() -> None:
        version[0] += 1
        snapshot.version = version[0]
        link.submit(snapshot)
        while not posted:
            time.sleep(0.001)
        update = posted.pop()
        assert isinstance(update, WeightUpdate)
        engine.load_weights(update)
        assert link.wait_idle(600) and link.error is None

    source = SnapshotSource()
    source.snapshot = snapshot
    bare_sender = _sender(source, BareWorkers(1), 2, bucket_bytes)

    t_full, t_bare = [], []
    for _ in range(trials + 1):
        t_bare.append(median_time(bare_sender.send_weights, 1, warmup=0))
        t_full.append(median_time(full, 1, warmup=0))
    with PeakMemory() as peak:  # the learner's side and the engine's share this process: both count
        full()
    link.close()
    assert engine.weight_version == version[0]
    full_s, bare_s = statistics.median(t_full[1:]), statistics.median(t_bare[1:])

    # one version to a pool of N receivers: one group of N + 1 ranks beside N groups of 2
    pool = {n: {mode: _pool(source, n, mode == "shared", trials, bucket_bytes, snapshot.nbytes)
                for mode in ("shared", "own")} for n in counts}
    # and with one generator LATE_S late to its safe point: a shared group holds every other
    # generator's update until the late one joins (threads in this process, as before)
    late = {}
    for n in (4,):
        own = [_sender(source, BareWorkers(1, LATE_S if i == 0 else 0.0), 2, bucket_bytes) for i in range(n)]
        shared = [_sender(source, BareWorkers(n, LATE_S), n + 1, bucket_bytes)]
        late[n] = (statistics.median(_per_version(own)[1] for _ in range(trials)),
                   statistics.median(_per_version(shared)[1] for _ in range(trials)))

    big = max(counts)
    out = {"model_mb": model_mb, "seconds": full_s, "bare_seconds": bare_s, "ratio": bare_s / full_s,
           "peak_extra_mb": peak.extra_mb, "pool": pool, "late": late,
           "pool_ratio": pool[1]["shared"]["s"] / pool[big]["shared"]["s"]}
    print_table([
        ("weights", f"{sum(t.numel() for _, t in snapshot.weights) / 1e6:.1f} M parameters, {model_mb:.0f} MB "
                    f"({cfg.model.dtype}), buckets of {bucket_bytes / 1e6:.0f} MB"),
        ("broadcast + load into vLLM", f"{full_s:.3f} s  ({model_mb / full_s:.0f} MB/s)"),
        ("bare broadcast, same buckets", f"{bare_s:.3f} s  ({model_mb / bare_s:.0f} MB/s)"),
        ("peak extra memory, one send", f"{peak.extra_mb:.0f} MB (sender and receiver; the model: {model_mb:.0f} MB)"),
        *[(f"{n} receiver(s): s per version", f"{p['shared']['s']:.3f} one shared group, {p['own']['s']:.3f} a group each")
          for n, p in pool.items()],
        *[(f"{n} receiver(s): sent by the learner", f"{p['shared']['sent_x']:.2f} x the model shared, "
                                                    f"{p['own']['sent_x']:.2f} x a group each") for n, p in pool.items()],
        *[(f"{n} receiver(s): learner's CPU per version", f"{p['shared']['cpu_s']:.3f} s shared, "
                                                         f"{p['own']['cpu_s']:.3f} s a group each") for n, p in pool.items()],
        *[(f"{n} receiver(s): learner's extra memory", f"{p['shared']['extra_mb']:.0f} MB shared, "
                                                       f"{p['own']['extra_mb']:.0f} MB a group each")
          for n, p in pool.items()],
        *[(f"{n}, one {LATE_S:g} s late: mean s to have it", f"{own:.3f} a group each, {shared:.3f} one shared group")
          for n, (own, shared) in late.items()],
    ])
    print(f"RESULT ratio={out['ratio']:.3f} seconds={full_s:.3f} peak_extra_mb={peak.extra_mb:.0f} "
          f"model_mb={model_mb:.0f} pool_ratio={out['pool_ratio']:.3f} "
          + " ".join(f"shared_s_{n}={p['shared']['s']:.3f} own_s_{n}={p['own']['s']:.3f}" for n, p in pool.items())
          + f" learner_sent_x_{big}={pool[big]['shared']['sent_x']:.2f} own_sent_x_{big}={pool[big]['own']['sent_x']:.2f}"
          + f" learner_cpu_s_{big}={pool[big]['shared']['cpu_s']:.3f} own_cpu_s_{big}={pool[big]['own']['cpu_s']:.3f}"
          + f" learner_extra_mb_{big}={pool[big]['shared']['extra_mb']:.0f} own_extra_mb_{big}={pool[big]['own']['extra_mb']:.0f}"
          + "".join(f" late_own_s_{n}={o:.3f} late_shared_s_{n}={s:.3f}" for n, (o, s) in late.items()))
    return out
