"""The learner put together: each part built from the config section it reads, a resumed run's state
put back, and the loop (learner/loop.py) handed its endpoint and launcher. learner/session.py's
`open_learner` opens the sockets and calls it:

    endpoint = LearnerEndpoint(t.host, t.control_port, t.rollout_port, t.max_frame_bytes, t.curve_dir)
    learner = build(cfg, model_path, problems, endpoint, launcher)
    learner.run()
"""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec
import torch

from learner.loop import Endpoint, Learner, Rooms
from learner.training.clock import StageClock
from learner.observe.events import BatchBuilt, Observer
from learner.observe.metrics import MetricsLog
from learner.observe.stats import Arrivals, RunStats
from learner.orchestration.heldout import Evaluator
from learner.orchestration.departures import Departures
from learner.orchestration.dispatch import Dispatch
from learner.orchestration.intake import Intake
from learner.orchestration.lag import LagControl
from learner.orchestration.ledger import Ledger
from learner.orchestration.modes import lag_control
from learner.orchestration.leases import LeaseBook
from learner.orchestration.liveness import Liveness
from learner.orchestration.supervisor import Supervisor
from learner.orchestration.tracker import Tracker
from learner.training import checkpoint
from learner.training.advantages import AdvantageRule
from learner.training.groups import group_from_state
from learner.training.stepper import Stepper
from learner.training.trainer import Trainer, TrainerLike
from learner.training.batch import check_fits
from learner.weights.membership import OpenLink, OwnGroups
from learner.weights.links import choose_backend, opener
from learner.weights.shared import SharedGroup
from learner.weights.publisher import WeightPublisher
from pipeline.config import Config, to_toml_dict
from pipeline.problems import Problem
from pipeline.model_settings import resolved
from pipeline.models import load_tokenizer
from pipeline.prompts import render

log = logging.getLogger(__name__)

# A shared weight group's member unheard for this many heartbeats is taken for dead or stopped when a
# broadcast fails (its beacon beats even inside a transfer: actors/beacon.py); a few, for a busy machine.
STALE_BEATS = 5


def build(cfg: Config, model_path: str, problems: list[Problem], endpoint: Endpoint, launcher=None,
          resume: Path | None = None, trainer: TrainerLike | None = None, observer: Observer | None = None, *,
          tokenizer=None, open_link: OpenLink | None = None, writer=None, clock: StageClock | None = None) -> Learner:
    """The learner of one run, every part wired here and only here (tests/unit/learner/test_loop.py
    builds its learner through this too, with its edges faked).

    `cfg`, `model_path`: as learner/session.py's `start_or_resume` decided them. `resume`: a checkpoint
    folder (then `model_path` too); the run continues from it (model, optimiser, tracker, cursor,
    counters, RNG) and generators load its model at start. `launcher`: told what the
    generators start from (model, version, weight backend) before it starts any. The edges, each made
    here unless given: `trainer` (one made already: a sharded one under torchrun, or a test's stand-in),
    `tokenizer` (the model folder's), `open_link` (opens a weight link: learner/weights/links.py's
    `opener`), `writer` (the checkpoint writer's thread), `clock` (the loop's stage clock)."""
    if not resolved(cfg):
        raise ValueError("build() takes a config whose model-derived settings are decided: "
                         "learner/session.py's start_or_resume decides them")
    lc, gc = cfg.learner, cfg.generator
    tokenizer = tokenizer or load_tokenizer(model_path)
    prompt_tokens = [render(tokenizer, p.question, cfg.data) for p in problems]
    check_fits(lc.micro_batch_tokens, gc.max_tokens, max(len(t) for t in prompt_tokens))
    tracker = Tracker(len(problems), cfg.tracker.reset_on_mixed)
    leases = LeaseBook(problems, prompt_tokens, tracker, cfg.schedule, lc.group_size, gc.max_tokens,
                       lc.lease_timeout_s, cfg.data.seed)
    torch.manual_seed(cfg.run.seed)
    trainer = trainer or Trainer.from_config(cfg, model_path)
    clock = clock or StageClock()
    saved = checkpoint.load_state(resume) if resume is not None else None
    stats = RunStats.from_state(saved[0]["stats"], cfg.schedule.t0) if saved else RunStats(Arrivals(cfg.schedule.t0))
    rule = AdvantageRule.from_config(cfg.advantage, cfg.ra, cfg.dapo, gc.max_tokens)
    intake = Intake(leases, rule, lc.group_size)
    lag = lag_control(lc, cfg.dapo, cfg.run.seed, gc.max_inflight, leases)
    if saved is not None:
        _restore(resume, *saved, trainer, tracker, leases, intake, lag)
    if lc.lag_control == "exact":
        log.info("exact lag control: step t trains the wave leased under version t - %d (%d steps)", lc.max_lag, lc.steps)
    # weights leave from the learner's own device; NCCL only to generators on other GPUs
    backend = choose_backend(cfg.weights.backend, trainer.device, shares_gpu=not gc.devices and gc.count > 0)
    open_link = open_link or opener(backend, cfg.weights, cfg.transport.host, trainer.device, endpoint.post,
                                    cfg.transport.weight_ports)
    liveness = Liveness()  # the supervisor writes it; a shared group reads it to blame a failed broadcast
    groups = (SharedGroup(open_link, liveness.silent_for, STALE_BEATS * gc.heartbeat_s) if cfg.weights.group == "shared"
              else OwnGroups(open_link))
    weights = WeightPublisher(trainer, cfg.model.dtype, lc.sync_every, lc.steps, groups, clock, endpoint.wake)
    ev = cfg.eval
    heldout = Evaluator(ev, cfg.data, gc.max_tokens, tokenizer, cfg.run.seed) if ev.every or ev.final or ev.first else None
    metrics = MetricsLog(cfg.run_dir / "metrics.jsonl", use_wandb=cfg.log.wandb, wandb_mode=cfg.log.wandb_mode,
                         run_name=cfg.run.name, config=to_toml_dict(cfg),
                         resumed_at=trainer.version if resume is not None else None,
                         checkpoint=resume.name if resume is not None else "")
    supervisor = Supervisor(gc, endpoint.send, on_gone=Departures(leases, heldout, metrics.alert), weights=weights,
                            liveness=liveness)
    on_batch = (lambda v, b: observer(BatchBuilt(v, b))) if observer else None
    writer = writer or checkpoint.Writer(cfg.run_dir / "checkpoints", model_path, lc.keep_checkpoints)
    rooms = Rooms(trainer, tracker, leases, intake, lag, Ledger(leases, tracker),
                  Dispatch(leases, tracker, endpoint.send, observer or (lambda event: None)), supervisor, weights,
                  Stepper(trainer, endpoint.wake, on_batch=on_batch), heldout, stats, metrics,
                  checkpoint.Checkpoints(writer), clock)
    if launcher is not None:
        launcher.starting_from(model_path, trainer.version, backend)
    return Learner(lc, ev, cfg.run_dir, msgspec.to_builtins(cfg), rooms, endpoint, launcher, observer,
                   eval_first=ev.first and resume is None)


def _restore(ckpt: Path, state: dict, rng: torch.Tensor, trainer: TrainerLike, tracker: Tracker, leases: LeaseBook,
             intake: Intake, lag: LagControl) -> None:
    """Put a run's state back as checkpoint `ckpt` saved it (`state`, `rng`: its learner and RNG
    state; the model itself is loaded from the folder by the trainer, the statistics by `build`)."""
    trainer.version = state["version"]
    trainer.load_optimizer(ckpt)  # first: under FSDP2 a forward (the probe) must not come before it
    checkpoint.verify_weights(ckpt, state, trainer.probe_logprobs(), trainer.dtype)
    torch.set_rng_state(rng)
    tracker.load_state_dict(state["tracker"])
    leases.load_state_dict(state["leases"] if "leases" in state else state["dispatcher"])  # (older checkpoints)
    for raw in state["buffer"]:
        lag.readmit(intake.restored(group_from_state(raw)))
    if state.get("lag") or state.get("waves"):  # exact lag control's waves; leases then out are re-issued
        lag.load_state_dict(state.get("lag") or state["waves"])
    log.info("resumed from %s at version %d (epoch %d, cursor %d)", ckpt, trainer.version, leases.epoch, leases.cursor)
