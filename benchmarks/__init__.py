"""Throughput and memory benchmarks, each measured beside its bare baseline in one run
(`run.py bench WHAT`). Each prints a `RESULT ...` line of ratios."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# `bench weights` moves a model big enough that the transfer, not fixed overheads, dominates (~120 M
# parameters, ~480 MB in fp32), built locally like the tiny default.
WEIGHTS_MODEL = ["--model.tiny.hidden_size", "1024", "--model.tiny.intermediate_size", "4096",
                 "--model.tiny.num_layers", "8", "--model.tiny.num_heads", "16",
                 "--model.tiny.num_kv_heads", "4", "--warmstart.enabled", "false"]
# `bench generator` runs on the real model, every group in flight at once on both sides.
GENERATOR_CONFIG = ROOT / "configs" / "real" / "smollm2-135m-arithmetic.toml"
GENERATOR_PRESET = ["--generator.max_inflight", "32"]


def run_bench(what: str, config: list[str], overrides: list[str], default_config: bool, minutes: float = 10.0) -> None:
    """Run benchmark `what` on the config files `config` (merged in order) and `overrides`;
    `default_config`: the user named no config file (a benchmark may then pick its own); `minutes`:
    how long `soak` runs."""
    if what == "soak":  # a training run of its own, in a child process, watched from here
        from benchmarks.soak import bench_soak

        bench_soak(config, ["--log.wandb", "false", *overrides], minutes, ROOT / "runs")
        return
    import torch

    from learner.training.warmstart import prepare_model
    from pipeline import config as config_mod
    from pipeline.model_settings import derive

    preset = WEIGHTS_MODEL if what == "weights" else GENERATOR_PRESET if what == "generator" else []
    if what == "generator" and default_config:
        config = [str(GENERATOR_CONFIG)]
    cfg = config_mod.load(config, ["--log.wandb", "false", *preset, *overrides])
    torch.set_num_threads(cfg.run.torch_threads)
    if what == "transport":
        from benchmarks.transport import bench_transport

        bench_transport()
        return
    model = prepare_model(cfg, progress=False)
    cfg = derive(cfg, model, sequences=cfg.generator.max_inflight * cfg.learner.group_size)[0]
    if what == "generator":
        from benchmarks.generator import bench_generator

        bench_generator(cfg, model)
    elif what == "weights":
        from benchmarks.weights import bench_weights

        bench_weights(cfg, model)
    elif what == "learner":
        from benchmarks.learner import bench_learner

        bench_learner(cfg, model)
    else:
        from benchmarks.pipeline import bench_pipeline

        bench_pipeline(cfg, model)
