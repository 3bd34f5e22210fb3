"""`run.py bench transport`: a generator process streaming rollouts to the learner's endpoint, beside a
bare ZeroMQ PUSH of the same bytes to the same socket."""

from __future__ import annotations

import statistics
import time

import numpy as np

from benchmarks.timing import print_table


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


def _transport_sender(host: str, control_port: int, rollout_port: int, raw: bool, messages: int) -> None:
    """A generator-side process: the real GeneratorEndpoint.send_rollout, or a bare PUSH socket sending
    the same frame (already encoded, zero-copy) to the same learner socket."""
    import zmq

    from pipeline.messages import Encoder
    from pipeline.transport import Addresses, GeneratorEndpoint

    rollout = realistic_rollout()
    if raw:
        frame = bytes(Encoder().encode(rollout))
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.connect(Addresses(host, control_port, rollout_port).rollouts())
        for _ in range(messages):
            push.send(frame, copy=False)
        push.close(linger=-1)
        ctx.term()
    else:
        ep = GeneratorEndpoint(Addresses(host, control_port, rollout_port), 0, 64 << 20)
        for _ in range(messages):
            ep.send_rollout(rollout)
        ep.close(linger_ms=-1)


def bench_transport(messages: int = 3000, trials: int = 5) -> dict:
    """Rollouts/s from a generator process to the learner, as the pipeline moves them: encode and
    GeneratorEndpoint.send_rollout there, LearnerEndpoint.recv (with its checks) and decode here;
    beside a bare PUSH in the same kind of process sending the same bytes to the same socket, read
    with a bare recv. Sender and receiver are separate processes, as in a run (in one process the two
    ends would mostly measure their contention for the GIL). Real and bare trials alternate, and the
    ratio is of their medians, so a drift in the machine's speed hits both alike."""
    import multiprocessing

    from pipeline.messages import Encoder, Rollout
    from pipeline.transport import LearnerEndpoint

    frame_mb = len(Encoder().encode(realistic_rollout())) / 1e6
    ep = LearnerEndpoint("127.0.0.1", 0, 0, 64 << 20)
    a = ep.addresses

    def trial(raw: bool) -> float:
        """Seconds for `messages` rollouts (the first message, which carries the sender's start-up,
        starts the clock)."""
        sender = multiprocessing.get_context("spawn").Process(
            target=_transport_sender, args=(a.host, a.control_port, a.rollout_port, raw, messages + 1))
        sender.start()
        received = 0

        def receive_until(total: int) -> None:  # one recv() may return several rollouts
            nonlocal received
            while received < total:
                if raw:
                    ep.rollouts.recv()
                    received += 1
                else:
                    received += sum(isinstance(m, Rollout) for m in ep.recv(1000))

        receive_until(1)
        t0 = time.perf_counter()
        receive_until(messages + 1)
        elapsed = time.perf_counter() - t0
        sender.join()
        return elapsed * messages / (received - 1)

    trial(raw=False), trial(raw=True)  # warm-up: the first of each pays for allocations and page faults
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(trials):
        for raw in (False, True):
            times[raw].append(trial(raw))
    t_real, t_raw = statistics.median(times[False]), statistics.median(times[True])
    ep.close()
    out = {"frame_mb": frame_mb, "real_rollouts_s": messages / t_real, "raw_rollouts_s": messages / t_raw,
           "real_mb_s": messages * frame_mb / t_real, "raw_mb_s": messages * frame_mb / t_raw,
           "ratio": t_raw / t_real, "rejected": ep.rejected.total}
    print_table([
        ("rollout (16 samples x 1024 tokens + log-probs)", f"{frame_mb * 1000:.1f} kB per frame"),
        ("generator process -> learner (msgspec + ZeroMQ)", f"{out['real_rollouts_s']:.0f} rollouts/s  {out['real_mb_s']:.0f} MB/s"),
        ("bare PUSH -> PULL, same bytes", f"{out['raw_rollouts_s']:.0f} rollouts/s  {out['raw_mb_s']:.0f} MB/s"),
        ("ratio per trial", "  ".join(f"{r / t:.2f}" for t, r in zip(times[False], times[True]))),
    ])
    print(f"RESULT ratio={out['ratio']:.3f}")
    return out
