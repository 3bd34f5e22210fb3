"""`run.py bench transport | weights | learner | pipeline`: each measures the real path beside its
bare baseline in one run and prints a table, then one `RESULT name=value ...` line.

Timings are medians of repeated trials, taken side by side in the same process, so that the ratio
means something on a shared, noisy machine.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Callable

import numpy as np


def median_time(fn: Callable[[], None], trials: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(trials):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


# ---- transport --------------------------------------------------------------------------------

def realistic_rollout(samples: int = 16, tokens: int = 1024, seed: int = 0):
    from pipeline.messages import Rollout, Sample, pack_floats, pack_ids

    rng = np.random.default_rng(seed)
    return Rollout(
        lease_id=1, generator_id=0, prompt_id=7, epoch=0, temperature=1.1,
        prompt_tokens=pack_ids(rng.integers(0, 150_000, 256)),
        samples=[Sample(tokens=pack_ids(rng.integers(0, 150_000, tokens)),
                        logprobs=pack_floats(-rng.exponential(1.0, tokens)), reward=float(i % 2),
                        version_first=3, version_last=3, finish_reason="length") for i in range(samples)],
        gen_seconds=1.0, verify_seconds=0.1)


def bench_transport(messages: int = 2000, trials: int = 5) -> dict:
    """Rollouts/s through encode -> PUSH -> PULL -> decode (the learner's path, with its checks),
    beside raw ZeroMQ moving the same bytes PUSH -> PULL."""
    import zmq

    from pipeline.messages import Decoder, Encoder, ToLearner

    rollout = realistic_rollout()
    encoder = Encoder()
    frame = bytes(encoder.encode(rollout))
    decoder = Decoder(ToLearner, 64 << 20)
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    for s in (push, pull):
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)

    def run(send_one, recv_one):
        def sender():
            for _ in range(messages):
                send_one()
        t = threading.Thread(target=sender)
        t.start()
        for _ in range(messages):
            recv_one()
        t.join()

    def real():
        # the generator's send and the learner's receive, as in pipeline/transport.py
        run(lambda: push.send(encoder.encode(rollout), copy=False), lambda: decoder.decode(pull.recv()))

    def raw():
        run(lambda: push.send(frame, copy=False), lambda: pull.recv())

    t_real = median_time(real, trials)
    t_raw = median_time(raw, trials)
    push.close(0), pull.close(0), ctx.term()
    mb = len(frame) / 1e6
    out = {"frame_mb": mb, "real_rollouts_s": messages / t_real, "raw_rollouts_s": messages / t_raw,
           "real_mb_s": messages * mb / t_real, "raw_mb_s": messages * mb / t_raw, "ratio": t_raw / t_real}
    print_table([
        ("rollout (16 samples x 1024 tokens + log-probs)", f"{mb * 1000:.1f} kB per frame"),
        ("msgspec + ZeroMQ (learner path)", f"{out['real_rollouts_s']:.0f} rollouts/s  {out['real_mb_s']:.0f} MB/s"),
        ("raw ZeroMQ, same bytes", f"{out['raw_rollouts_s']:.0f} rollouts/s  {out['raw_mb_s']:.0f} MB/s"),
    ])
    print(f"RESULT ratio={out['ratio']:.3f}")
    return out
