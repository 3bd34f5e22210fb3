"""`run.py bench generator`: the generator loop against vLLM's own `LLM.generate`, on the real model.

Ours: a real `Generator` (continuous batching, per-token log-probs and versions, verification, one
Rollout message per group over ZeroMQ) fed leases by a bare learner endpoint in this process.
vLLM's: `LLM.generate` on the same engine, the same prompts and the same sampling parameters
(temperature, n, max_tokens, processed log-probs). Tokens per second of each, alternated trials;
the last line is `RESULT ratio=..` (ours over vLLM's).
"""

from __future__ import annotations

import statistics
import threading
import time

from benchmarks.timing import print_table


def bench_generator(cfg, model_path: str, prompts_n: int = 32, trials: int = 2) -> dict:
    from actors.engine import Engine, Request
    from pipeline.config import GeneratorSettings
    from actors.generator import Generator
    from learner.weights.links import await_generator
    from pipeline.data import load_problems
    from pipeline.messages import Assignment, Rollout, Stop, pack_ids, unpack_ids
    from pipeline.prompts import render
    from pipeline.transport import LearnerEndpoint

    engine = Engine(GeneratorSettings.of(cfg), model_path, seed=0)
    problems = load_problems(cfg.data)[:prompts_n]
    prompts = [render(engine.tokenizer, p.question, cfg.data) for p in problems]
    n, T, max_tokens = cfg.learner.group_size, 1.0, cfg.generator.max_tokens

    ep = LearnerEndpoint("127.0.0.1", 0, 0, cfg.transport.max_frame_bytes)
    link = []
    lease_ids = iter(range(1, 1 << 30))
    rates: dict[str, list[float]] = {"ours": [], "vllm": []}

    def ours() -> float:
        """Tokens per second through the generator loop: all leases out at once, up to max_inflight run."""
        ids = [next(lease_ids) for _ in problems]
        t0 = time.perf_counter()
        for i, (p, ptoks) in zip(ids, zip(problems, prompts)):
            assert ep.send(0, Assignment(lease_id=i, prompt_id=p.prompt_id, epoch=0, temperature=T, n=n,
                                         policy_version=0, prompt_tokens=pack_ids(ptoks), answer=p.answer,
                                         verifier=p.verifier, metadata=p.metadata, max_tokens=max_tokens))
        tokens, waiting = 0, set(ids)
        while waiting:
            for msg in ep.recv(50):
                if isinstance(msg, Rollout) and msg.lease_id in waiting:
                    waiting.discard(msg.lease_id)
                    tokens += sum(len(unpack_ids(s.tokens)) for s in msg.samples)
        return tokens / (time.perf_counter() - t0)

    def vllms() -> float:
        """The same prompts and sampling parameters through LLM.generate, max_inflight groups at a time."""
        t0, tokens = time.perf_counter(), 0
        step = cfg.generator.max_inflight
        for s in range(0, len(prompts), step):
            for group in engine.generate([Request(p, n, T, max_tokens) for p in prompts[s:s + step]]):
                tokens += sum(len(c.tokens) for c in group)
        return tokens / (time.perf_counter() - t0)

    def feed() -> None:  # the learner's side, on its own thread: leases out, rollouts in, then Stop
        try:
            link.append(await_generator(ep, 0))  # its first heartbeat; its weight group
            for _ in range(trials):
                rates["ours"].append(ours())
        finally:
            ep.send(0, Stop(reason="bench done"))

    # vLLM's CPU kernels must run on one thread throughout, so the engine stays on this one: the
    # generator loop runs here, and the learner's side is the feeder thread.
    try:
        rates["vllm"].append(vllms())
        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        Generator(GeneratorSettings.of(cfg), 0, ep.addresses, model_path, engine=engine).run()  # until the feeder's Stop
        feeder.join(30)
        for _ in range(trials - 1):
            rates["vllm"].append(vllms())
    finally:
        for lk in link:
            lk.close()
        ep.close()
    a, b = statistics.median(rates["ours"]), statistics.median(rates["vllm"])
    print_table([
        ("model, prompts x samples, max tokens", f"{model_path}, {len(prompts)} x {n}, {max_tokens}"),
        ("generator loop (verify, versions, messages)", f"{a:.0f} tokens/s  (trials {[round(x) for x in rates['ours']]})"),
        ("vLLM LLM.generate, same params", f"{b:.0f} tokens/s  (trials {[round(x) for x in rates['vllm']]})"),
    ])
    print(f"RESULT ratio={a / b:.3f}")
    return {"ours_tok_s": a, "vllm_tok_s": b, "ratio": a / b}
