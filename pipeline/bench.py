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


# ---- learner ------------------------------------------------------------------------------------

def bench_learner(cfg, model_path: str, trials: int = 20) -> dict:
    """One optimiser step with the lag-corrected loss (tis) at per-sample temperatures, beside the same
    step with plain GRPO's clipped loss at T = 1, on the same batch and the same starting weights."""
    import copy

    import msgspec
    import torch

    from learner.groups import Group
    from learner.trainer import Trainer

    torch.manual_seed(0)
    lc = cfg.learner
    trainer = Trainer(cfg, model_path)
    vocab = trainer.model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    groups = []
    for i in range(lc.groups_per_step):
        responses = [torch.randint(3, vocab, (int(torch.randint(2, cfg.generator.max_tokens + 1, (1,), generator=gen)),),
                                   generator=gen) for _ in range(lc.group_size)]
        groups.append(Group(lease_id=i, prompt_id=i, epoch=0, temperature=1.0 + 0.02 * (i % 10),
                            prompt=torch.randint(3, vocab, (18,), generator=gen), responses=responses,
                            behaviour_logprobs=[-torch.rand(len(r), generator=gen) for r in responses],
                            rewards=torch.tensor([float(j % 2) for j in range(lc.group_size)]),
                            version_first=0, version_last=0))
    state = copy.deepcopy(trainer.model.state_dict())
    plain_cfg = msgspec.structs.replace(cfg, loss=msgspec.structs.replace(
        cfg.loss, correction="ppo_behaviour", logprob_temperature="one"))

    def step(c):
        def run():
            trainer.model.load_state_dict(state)
            trainer.cfg = c
            trainer.step(groups)
        return run

    # interleave the two so drift in machine load hits both alike
    t_tis, t_plain = [], []
    for _ in range(trials):
        t_plain.append(median_time(step(plain_cfg), 1, warmup=0))
        t_tis.append(median_time(step(cfg), 1, warmup=0))
    tis, plain = statistics.median(t_tis), statistics.median(t_plain)
    out = {"tis_step_s": tis, "plain_step_s": plain, "overhead": tis / plain}
    print_table([
        ("batch", f"{lc.groups_per_step} groups x {lc.group_size} samples"),
        ("step, tis + per-sample T", f"{tis * 1000:.1f} ms"),
        ("step, plain GRPO clip at T = 1", f"{plain * 1000:.1f} ms"),
    ])
    print(f"RESULT overhead={out['overhead']:.3f}")
    return out


# ---- weights ------------------------------------------------------------------------------------

def bench_weights(cfg, model_path: str, trials: int = 5) -> dict:
    """A full weight update into a running vLLM engine (announce metadata, broadcast over the group,
    in-place reload, prefix-cache reset), beside a bare broadcast of the same bytes on the same group."""
    import torch

    from actors.engine import Engine
    from learner.broadcast import GeneratorLink, prepare
    from pipeline.models import load_causal_lm
    from pipeline.transport import free_port

    model = load_causal_lm(model_path, cfg.model.dtype)
    named = list(model.named_parameters())
    engine = Engine(cfg, model_path, seed=0, worker_extension="actors.vllm_ext.BenchReceiver")
    port = free_port()
    link = GeneratorLink("gloo", "127.0.0.1", port, timeout_s=120)
    engine.join_weight_group("gloo", "127.0.0.1", port, rank=1, world_size=2)
    update, flat = prepare(1, named, cfg.model.dtype)

    def full():
        link.submit(1, flat)
        engine.load_weights(update)
        link.wait_idle(60)

    def bare():
        link.submit(1, flat)
        engine.llm.collective_rpc("rl_receive_only", args=(flat.numel(), cfg.model.dtype))
        link.wait_idle(60)

    t_full, t_bare = [], []
    for _ in range(trials + 1):
        t_bare.append(median_time(bare, 1, warmup=0))
        t_full.append(median_time(full, 1, warmup=0))
    full_s, bare_s = statistics.median(t_full[1:]), statistics.median(t_bare[1:])
    link.close()
    mb = flat.numel() * flat.element_size() / 1e6
    out = {"mb": mb, "seconds": full_s, "bare_seconds": bare_s, "ratio": bare_s / full_s}
    print_table([
        ("weights", f"{sum(t.numel() for _, t in named) / 1e6:.1f} M parameters, {mb:.0f} MB ({cfg.model.dtype})"),
        ("broadcast + load into vLLM", f"{full_s:.3f} s  ({mb / full_s:.0f} MB/s)"),
        ("bare broadcast, same group", f"{bare_s:.3f} s  ({mb / bare_s:.0f} MB/s)"),
    ])
    print(f"RESULT ratio={out['ratio']:.3f} seconds={full_s:.3f}")
    return out
