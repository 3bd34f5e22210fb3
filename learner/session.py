"""One training run from start to end, as `run.py train` starts it: the model to start from, the
learner and its generator processes, the run folder's summary. Under torchrun, rank 0 does all
this; the other ranks hold shards and follow (learner/training/sharded.py).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import msgspec
import torch
from tqdm import tqdm

from learner.training import sharded
from learner.build import build
from learner.loop import Learner
from learner.observe.events import Observer
from learner.observe.metrics import summarize
from learner.orchestration.exact import exact_steps
from learner.training.warmstart import prepare_model
from pipeline.config import Config
from pipeline.data import load_problems
from pipeline.problems import Problem
from pipeline.launcher import Launcher
from pipeline.model_settings import ModelSettings, derive
from pipeline.model_settings import write as write_settings
from pipeline.placement import check_placement
from pipeline.rundir import RunSummary, start_from, write_summary
from pipeline.transport import Addresses, LearnerEndpoint


def start_or_resume(cfg: Config, model_path: str, resume: Path | None = None) -> tuple[Config, str, ModelSettings]:
    """The one place a run's start is decided: (the config as the learner runs it, the model folder it
    starts from, the settings derived from the model). Resuming, the model is the checkpoint's. The
    model-derived settings (lengths, template, KV cache, context) are derived here, once, whatever the
    config set; concrete from here on, generators read them. Under exact lag control a sample budget
    becomes a number of whole waves. (Which checkpoint, if any, the run folder's policy says:
    pipeline/rundir.py's `start_from`.)"""
    model_path = str(resume) if resume is not None else model_path
    cfg, settings = derive(cfg, model_path, sequences=cfg.generator.max_inflight * cfg.learner.group_size)
    lc = cfg.learner
    if lc.lag_control == "exact" and lc.sample_budget:
        lc = msgspec.structs.replace(lc, steps=exact_steps(lc, cfg.dapo), sample_budget=0)
        cfg = msgspec.structs.replace(cfg, learner=lc)
    return cfg, model_path, settings


def open_learner(cfg: Config, model_path: str, problems: list[Problem], resume: Path | None = None,
                 trainer=None, observer: Observer | None = None,
                 launcher: Callable[[Config, Addresses], Launcher] | None = Launcher) -> Learner:
    """A learner on sockets of its own (`cfg.transport`), with generator processes started by
    `launcher(cfg, addresses)` (None: generators join by themselves); as learner/build.py builds it,
    from what `start_or_resume` decides (tests and benchmarks call it with a config as loaded)."""
    cfg, model_path, _ = start_or_resume(cfg, model_path, resume)
    return _open(cfg, model_path, problems, resume, trainer, observer, launcher)


def _open(cfg: Config, model_path: str, problems: list[Problem], resume: Path | None, trainer,
          observer: Observer | None, launcher: Callable[[Config, Addresses], Launcher] | None) -> Learner:
    t = cfg.transport
    endpoint = LearnerEndpoint(t.host, t.control_port, t.rollout_port, t.max_frame_bytes, t.curve_dir)
    try:
        return build(cfg, model_path, problems, endpoint, launcher(cfg, endpoint.addresses) if launcher else None,
                     resume, trainer, observer)
    except BaseException:
        endpoint.close()
        raise


def train(cfg: Config, resume: str | None = None) -> str | None:
    """Train to the end (or until SIGTERM / SIGINT asks to stop, after a checkpoint); the summary
    text and RESULT line, or None on a follower rank. `resume`: as pipeline/rundir.py's `start_from` takes it
    (None: a fresh run, refused where the run folder already holds one)."""
    torch.set_num_threads(cfg.run.torch_threads)
    check_placement(cfg, os.environ.get("CUDA_VISIBLE_DEVICES"), int(os.environ.get("WORLD_SIZE", "1")),
                    cuda=torch.cuda.is_available())
    resume = start_from(cfg.run_dir, resume)
    if resume is not None:
        print(f"resuming from {resume}")

    def start_model() -> str:  # the model folder training starts from: the checkpoint's when resuming
        return str(resume) if resume is not None else prepare_model(cfg, progress=cfg.log.progress)

    trainer, model_path = None, ""
    if sharded.launched():
        trainer, model_path = sharded.lead_or_follow(cfg, start_model)
        if trainer is None:
            return None  # a follower rank: rank 0 has finished the run
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    problems = load_problems(cfg.data)  # fails here, before any process starts, on a bad source
    cfg, model_path, settings = start_or_resume(cfg, model_path or start_model(), resume)
    print(settings.block())
    write_settings(settings, cfg.run_dir / "model_settings.json")
    try:
        learner = _open(cfg, model_path, problems, resume, trainer, None, Launcher)
    except BaseException:
        if trainer is not None:
            trainer.stop_followers()
            sharded.leave_training_group()
        raise

    def request_stop(signum, frame):  # finish the current step, checkpoint, stop generators, exit 0
        learner.stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        with tqdm(total=learner.lc.steps, desc="RL steps", disable=not cfg.log.progress) as bar:
            stats = learner.run(bar)
        learner.stop_generators()
        text, result = summarize(stats, learner.counters())
    except Exception as exc:
        learner.metrics.alert(f"run {cfg.run.name} stopped at step {learner.trainer.version}", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        learner.close()
        if trainer is not None:
            trainer.stop_followers()
            sharded.leave_training_group()
    learner.tracker.dump(cfg.run_dir / "tracker.jsonl")
    if learner.stop_requested:
        text += f"\nstopped on request; resume with: run.py train --config ... --resume {cfg.run_dir}"
    else:  # a finished run
        write_summary(cfg.run_dir, RunSummary(stats=stats.to_state(), counters=learner.counters(), result=result,
                                              config=msgspec.to_builtins(cfg), lease_outcomes=learner.leases.binned()))
    return f"{text}\n{result}"

