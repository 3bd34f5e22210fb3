"""`run.py bench pipeline`: synchronous against asynchronous training, with real stages and with
fixed-cost stand-ins, each against the slower stage's standalone rate."""

from __future__ import annotations

import msgspec

from benchmarks.learner import bench_learner
from benchmarks.timing import print_table


class StandInTrainer:
    """Benchmark-only: an optimiser step of fixed cost (the weights stay real, so broadcasts are real)."""

    def __init__(self, trainer, cost_s: float):
        self._trainer = trainer
        self.cost_s = cost_s

    def __getattr__(self, name):  # everything but the step is the real trainer's
        return getattr(self._trainer, name)

    @property
    def version(self) -> int:
        return self._trainer.version

    @version.setter
    def version(self, value: int) -> None:
        self._trainer.version = value

    def step(self, groups, before_update=None) -> dict:
        import time

        time.sleep(self.cost_s)
        if before_update is not None:
            before_update()
        self._trainer.version += 1
        return {}


def _pipeline_run(cfg, model_path: str, name: str, max_lag: int, standin: tuple[float, float] | None) -> dict:
    from learner.session import open_learner
    from learner.training.trainer import Trainer
    from pipeline.data import load_problems
    from pipeline.launcher import Launcher

    r = msgspec.structs.replace
    c = r(cfg, learner=r(cfg.learner, max_lag=max_lag, checkpoint_every=0), eval=r(cfg.eval, final=False),
          run=r(cfg.run, name=name), log=r(cfg.log, progress=False, wandb=False))
    c.run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer.from_config(c, model_path)
    extra = []
    if standin is not None:
        trainer = StandInTrainer(trainer, standin[1])
        extra = ["--standin-delay", str(standin[0])]
    learner = open_learner(c, model_path, load_problems(c.data), trainer=trainer,
                           launcher=lambda cfg_, addresses: Launcher(cfg_, addresses, extra_args=extra))
    try:
        stats = learner.run()
        busy = sum(g.busy_s for g in learner.supervisor.generators.values())
        learner.stop_generators()
    finally:
        learner.close()
    # measured from the first optimiser step on: the generators' start-up is not the pipeline's rate
    return {"samples_s": stats.samples_trained / stats.seconds, "dropped_stale": learner.leases.outcomes["dropped_stale"],
            "learner_idle": 1 - stats.train_seconds / stats.seconds,
            "generator_idle": max(0.0, 1 - busy / stats.seconds), "seconds": stats.seconds}


def _standalone_generation(cfg, model_path: str, seconds: float = 10.0) -> float:
    """Samples/s of one engine generating full batches back to back (what one generator can do)."""
    import time

    from actors.engine import Engine, Request  # the bench process may hold an engine; the learner never does

    from pipeline.config import GeneratorSettings
    from pipeline.data import load_problems
    from pipeline.models import load_tokenizer
    from pipeline.prompts import render

    tok = load_tokenizer(model_path)
    prompts = [render(tok, p.question, cfg.data) for p in load_problems(cfg.data)]
    engine = Engine(GeneratorSettings.of(cfg), model_path, seed=0)
    g = cfg.generator
    batch = [Request(prompts[i % len(prompts)], cfg.learner.group_size, 1.0, g.max_tokens) for i in range(g.max_inflight)]
    engine.generate(batch)
    n, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        engine.generate(batch)
        n += len(batch) * cfg.learner.group_size
    return n / (time.monotonic() - t0)


def bench_pipeline(cfg, model_path: str) -> dict:
    """Synchronous (max_lag = 0) against asynchronous (max_lag = k) on the same config; pipeline
    efficiency = end-to-end samples/s / min(standalone generation, standalone training) samples/s.
    Then the same with the engine and the optimiser step replaced by fixed-cost stand-ins, which
    isolates the orchestration (on 2 cores the real stages also compete for the CPU)."""
    k = max(cfg.learner.max_lag, 1)
    lc, g = cfg.learner, cfg.generator
    rows, out = [], {}

    real = {mode: _pipeline_run(cfg, model_path, f"bench-{mode}", lag, None) for mode, lag in (("sync", 0), ("async", k))}
    step = bench_learner(cfg, model_path, trials=10, quiet=True)["tis_step_s"]
    train_rate = lc.groups_per_step * lc.group_size / step
    gen_rate = _standalone_generation(cfg, model_path)
    out["speedup"] = real["async"]["samples_s"] / real["sync"]["samples_s"]
    out["efficiency"] = real["async"]["samples_s"] / min(gen_rate, train_rate)

    # Stand-ins: each group takes 0.1 s (up to max_inflight at once), a step of B groups takes 0.1 s.
    # Generation latency equal to a step is the tightest case: with max_lag = k the lease for a step
    # must go out k - 1 steps ahead, so every millisecond of messaging shows as learner idle time.
    delay = cost = 0.1
    other = "inflight" if g.update_mode == "drain" else "drain"
    stand = {mode: _pipeline_run(cfg, model_path, f"bench-standin-{mode}", lag, (delay, cost))
             for mode, lag in (("sync", 0), ("async", k))}
    # the other weight-update mode, for comparison (the RESULT line reports the config's own)
    stand[f"async, {other} updates"] = _pipeline_run(
        msgspec.structs.replace(cfg, generator=msgspec.structs.replace(g, update_mode=other)),
        model_path, "bench-standin-other", k, (delay, cost))
    s_gen = g.max_inflight * lc.group_size / delay
    s_train = lc.groups_per_step * lc.group_size / cost
    out["standin_speedup"] = stand["async"]["samples_s"] / stand["sync"]["samples_s"]
    out["standin_efficiency"] = stand["async"]["samples_s"] / min(s_gen, s_train)
    out[f"standin_efficiency_{other}"] = stand[f"async, {other} updates"]["samples_s"] / min(s_gen, s_train)

    for label, runs in (("real", real), ("stand-in", stand)):
        for mode, m in runs.items():
            lag = 0 if mode == "sync" else k
            rows.append((f"{label} {mode} (max_lag={lag}{', ' + g.update_mode + ' updates' if mode == 'async' else ''})",
                         f"{m['samples_s']:.0f} samples/s   learner idle {m['learner_idle']:.0%}   "
                         f"generator idle {m['generator_idle']:.0%}   stale drops {m['dropped_stale']}"))
    rows += [("real standalone generation / training", f"{gen_rate:.0f} / {train_rate:.0f} samples/s"),
             ("stand-in standalone generation / training", f"{s_gen:.0f} / {s_train:.0f} samples/s"),
             ("real speedup, efficiency", f"{out['speedup']:.2f}x, {out['efficiency']:.2f}"),
             ("stand-in speedup, efficiency", f"{out['standin_speedup']:.2f}x, {out['standin_efficiency']:.2f}")]
    print_table(rows)
    print(f"RESULT speedup={out['speedup']:.3f} efficiency={out['efficiency']:.3f} "
          f"standin_efficiency={out['standin_efficiency']:.3f}")
    return out
