"""`run.py bench weights`: a full weight update into a running vLLM engine beside a bare broadcast."""

from __future__ import annotations

import statistics

from benchmarks.timing import median_time, print_table


def bench_weights(cfg, model_path: str, trials: int = 5) -> dict:
    """A full weight update into a running vLLM engine (update message, broadcast over the group,
    in-place reload, prefix-cache reset), beside a bare broadcast of the same bytes on the same group."""
    import torch

    import threading

    from actors.engine import Engine
    from pipeline.collective import WeightGroup, flatten, tensor_metas
    from pipeline.messages import WeightUpdate
    from pipeline.models import load_causal_lm
    from pipeline.transport import free_port

    model = load_causal_lm(model_path, cfg.model.dtype)
    named = list(model.named_parameters())
    engine = Engine(cfg, model_path, seed=0, worker_extension="actors.vllm_ext.BenchReceiver")
    port = free_port()
    # the learner's side: rank 0 of the same two-rank group, sending from a thread as the learner does
    sender: dict = {}
    joiner = threading.Thread(target=lambda: sender.setdefault("g", WeightGroup("gloo", "127.0.0.1", port, 0, 2)))
    joiner.start()
    engine.join_weight_group("gloo", "127.0.0.1", port, rank=1, world_size=2)
    joiner.join()
    flat = flatten(named, getattr(torch, cfg.model.dtype))
    update = WeightUpdate(version=1, tensors=tensor_metas(named), dtype=cfg.model.dtype)

    def timed(receive):
        def run():
            t = threading.Thread(target=sender["g"].broadcast, args=(flat,))
            t.start()
            receive()
            t.join()
        return run

    full = timed(lambda: engine.load_weights(update))
    bare = timed(lambda: engine.llm.collective_rpc("rl_receive_only", args=(flat.numel(), cfg.model.dtype)))

    t_full, t_bare = [], []
    for _ in range(trials + 1):
        t_bare.append(median_time(bare, 1, warmup=0))
        t_full.append(median_time(full, 1, warmup=0))
    full_s, bare_s = statistics.median(t_full[1:]), statistics.median(t_bare[1:])
    mb = flat.numel() * flat.element_size() / 1e6
    out = {"mb": mb, "seconds": full_s, "bare_seconds": bare_s, "ratio": bare_s / full_s}
    print_table([
        ("weights", f"{sum(t.numel() for _, t in named) / 1e6:.1f} M parameters, {mb:.0f} MB ({cfg.model.dtype})"),
        ("broadcast + load into vLLM", f"{full_s:.3f} s  ({mb / full_s:.0f} MB/s)"),
        ("bare broadcast, same group", f"{bare_s:.3f} s  ({mb / bare_s:.0f} MB/s)"),
    ])
    print(f"RESULT ratio={out['ratio']:.3f} seconds={full_s:.3f}")
    return out
