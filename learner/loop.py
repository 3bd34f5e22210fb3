"""The learner's main loop: lease prompts, collect complete groups, train, broadcast, account.

One thread owns the sockets and the bookkeeping; the optimiser step runs beside it (learner/training/stepper.py)
and so do the weight broadcasts (learner/weights/links.py). Each job has its own module:

  supervisor.py  generator processes: start, welcome, restart, forget, their rates and probe checks
  dispatch.py    how many leases, to which generator         leases.py      the lease book
  intake.py      rollout -> complete group -> buffer         groups.py      groups and their buffer
  stepper.py     the optimiser step on its thread            trainer.py     the step itself
  publisher.py   weight snapshots, their sending, probes     stats.py       run statistics (observe only)
  checkpoint.py  the files of a checkpoint                   evaluation.py  held-out rounds
  events.py      what an observer may see

Words: a *step* is an optimiser step (one weight version); one pass of `Learner.run`'s loop is a
*tick*; the engine's forward over its running requests is a *decode step* (actors/engine.py).
Read `Learner.run` top to bottom for the whole asynchronous step.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import msgspec
import torch

from learner.training import checkpoint
from learner.orchestration import bounded as dispatch
from learner.observe import health
from learner.observe.clock import StageClock
from learner.training.advantages import AdvantageRule
from learner.weights.links import choose_backend, opener
from learner.orchestration.heldout import Evaluator
from learner.observe.events import BatchBuilt, Leased, Observer, StepStarted
from learner.training.groups import GroupBuffer, group_to_state
from learner.orchestration.intake import Intake
from learner.orchestration.leases import LeaseBook
from learner.observe.metrics import MetricsLog
from learner.weights.publisher import Publisher
from learner.observe.stats import Arrivals, RunStats, run_counters, tracker_metrics
from learner.training.stepper import RunningStep, Stepper
from learner.orchestration.supervisor import Supervisor
from learner.orchestration.tracker import Tracker
from learner.orchestration.exact import Waves, exact_steps, lease_seed
from learner.training.trainer import Trainer, check_fits
from pipeline.config import Config, to_toml_dict
from pipeline.data import Problem
from pipeline.messages import Heartbeat, Rollout
from pipeline.model_settings import derive, resolved
from pipeline.models import load_tokenizer
from pipeline.transport import LearnerEndpoint
from pipeline.prompts import render

log = logging.getLogger(__name__)


class LearnerError(RuntimeError):
    pass


class Learner:
    def __init__(self, cfg: Config, model_path: str, problems: list[Problem], resume: Path | None = None,
                 trainer: Trainer | None = None, observer: Observer | None = None):
        """`resume`: a checkpoint folder; the run continues from it (model, optimiser, tracker, cursor,
        counters, RNG) and its model folder becomes what generators load at start. `observer`: called
        with each event of learner/observe/events.py (it only records)."""
        self.model_path = str(resume) if resume is not None else model_path
        if not resolved(cfg):  # a config straight from a file: its model-derived settings, decided now
            cfg = derive(cfg, self.model_path, cfg.generator.max_inflight * cfg.learner.group_size)[0]
        if cfg.learner.lag_control == "exact" and cfg.learner.sample_budget:  # a budget of whole waves
            steps = exact_steps(cfg.learner, cfg.dapo)
            cfg = msgspec.structs.replace(cfg, learner=msgspec.structs.replace(cfg.learner, steps=steps, sample_budget=0))
        self.cfg = cfg
        lc, gc = cfg.learner, cfg.generator
        self.waves = Waves(lc, cfg.dapo, cfg.run.seed) if lc.lag_control == "exact" else None
        self._wave_rest: dict[int, list] = {}  # step -> its wave's groups not trained (visits recorded at its end)
        if self.waves is not None:
            log.info("exact lag control: step t trains the wave leased under version t - %d (%d leases per wave; "
                     "%d steps)", lc.max_lag, self.waves.size, lc.steps)
        self.observe = observer or (lambda event: None)
        tokenizer = load_tokenizer(self.model_path)
        prompt_tokens = [render(tokenizer, p.question, cfg.data) for p in problems]
        check_fits(lc.micro_batch_tokens, gc.max_tokens, max(len(t) for t in prompt_tokens))
        self.tracker = Tracker(len(problems), cfg.tracker.reset_on_mixed)
        self.leases = LeaseBook(problems, prompt_tokens, self.tracker, cfg.schedule, lc.group_size, gc.max_tokens,
                                lc.lease_timeout_s, cfg.data.seed)
        torch.manual_seed(cfg.run.seed)
        self.trainer = trainer or Trainer.from_config(cfg, self.model_path)
        self.buffer = GroupBuffer()
        rule = AdvantageRule.from_config(cfg.advantage, cfg.ra, cfg.dapo, gc.max_tokens)
        self.stats = RunStats(Arrivals(cfg.schedule.t0))
        if resume is not None:
            self.stats = checkpoint.restore(resume, self.trainer, self.tracker, self.leases, self.buffer, rule,
                                            cfg.schedule.t0)
            if self.waves is not None and "waves" in (saved := checkpoint.load_state(resume)[0]):
                self.waves.load_state_dict(saved["waves"])  # leases then out at generators are re-issued
        t = cfg.transport
        self.endpoint = LearnerEndpoint(t.host, t.control_port, t.rollout_port, t.max_frame_bytes, t.curve_dir)
        self.initial_version = self.trainer.version
        # weights leave from the learner's own device (NCCL from a GPU)
        self.weights_backend = choose_backend(cfg.weights.backend, self.trainer.device)
        self.supervisor = Supervisor(gc, self.endpoint.send, self._generator_gone,
                                     link=opener(self.weights_backend, cfg.weights, t.host, self.trainer.device,
                                                 self.endpoint.post))
        self.intake = Intake(self.leases, self.tracker, self.buffer, self.stats, rule, cfg.dapo, lc.group_size,
                             lc.groups_per_step, cfg.schedule.t0, in_arrival_order=self.waves is None)
        self.publisher = Publisher(self.trainer, cfg.model.dtype, self.stats, self.endpoint.wake)
        self.stepper = Stepper(self.trainer, self.endpoint.wake,
                               on_batch=(lambda v, b: self.observe(BatchBuilt(v, b))) if observer else None)
        self.evaluator = (Evaluator(cfg.eval, cfg.data, gc.max_tokens, tokenizer, cfg.run.seed)
                          if cfg.eval.every or cfg.eval.final or cfg.eval.first else None)
        self._eval_first = cfg.eval.first and resume is None  # a round on the starting weights
        self.metrics = MetricsLog(cfg.run_dir / "metrics.jsonl", use_wandb=cfg.log.wandb,
                                  wandb_mode=cfg.log.wandb_mode, run_name=cfg.run.name, config=to_toml_dict(cfg),
                                  resumed_at=self.trainer.version if resume is not None else None,
                                  checkpoint=resume.name if resume is not None else "")
        self.stop_requested = False  # set by a signal handler: finish the step, checkpoint, stop
        self.checkpoint_failures = 0
        self._checkpoint_started = 0.0
        self.writer = checkpoint.Writer(cfg.run_dir / "checkpoints", model_path, cfg.learner.keep_checkpoints)
        # The loop's own stages (probe checks, checkpoints), beside the trainer's in each step's metrics.
        # Not synchronised with the device: a step may be running on the stepper's thread meanwhile.
        self.clock = StageClock()
        self._finishing = False  # the last version always goes out, whatever sync_every says
        self._first_rollout_at: float | None = None
        self._started, self._started_wall, self._health_at = time.monotonic(), time.time(), 0.0
        self._last_lag = (0.0, 0)  # the last step's mean and largest lag (for the health file)

    # ---- the loop --------------------------------------------------------------------------------

    def run(self, launcher=None, progress=None) -> RunStats:
        lc = self.cfg.learner
        if launcher is not None:
            self.supervisor.start_all(launcher)
        start = last_rollout = time.monotonic()
        while self.stepper.running is not None or (  # a started step is always finished
                self.trainer.version < lc.steps and not self.stop_requested and not self._budget_spent()):
            # one tick:
            self.supervisor.check(launcher)             # 1. generators alive, restarted, or let go
            if self._eval_first and len(self.supervisor.ready_weights()) >= max(self.supervisor.expected, 1):
                self._eval_first = False
                self._start_eval()                      #    (a held-out round on the starting weights)
            self._dispatch()                            # 2. lease prompt visits to them
            if self._poll(timeout_ms=20):               # 3. rollouts -> groups -> buffer
                last_rollout = time.monotonic()
            self.leases.expire()                        # 4. overdue leases go back in the queue
            done = self.stepper.collect()               # 5. a finished step, if any
            if done is None or not self._checkpoint_due():
                self._start_if_ready()                  # 6. the next step starts at once, before the bookkeeping
            if done is not None:                        # 7. bookkeeping; a checkpoint between two steps
                self._after_step(self._finish_step(done), progress)
                self._start_if_ready()
            self._publish()                             # 8. new weights out to the generators
            self._written(wait=False)                   # 9. a checkpoint written behind the loop
            self._watch(last_rollout)                   # 10. stalls named, health written
        # throughput clock: from the first rollout, so generator start-up (loading vLLM) is not in it
        self.stats.seconds += time.monotonic() - (self._first_rollout_at or start)
        self.intake.close_window()  # what arrived after the last step counts in the run's totals
        self._finishing = True
        self.checkpoint()  # which checks the lease identity in full first
        if not self.stop_requested:
            self._finish_broadcasts()
            if self.evaluator is not None and self.cfg.eval.final:
                self._final_eval()
        self._write_health(finished=True)
        return self.stats

    def _poll(self, timeout_ms: int) -> bool:
        """Handle whatever arrives within `timeout_ms`; True if a rollout did."""
        got_rollout = False
        for msg in self.endpoint.recv(timeout_ms):
            if isinstance(msg, Heartbeat):
                self.supervisor.on_heartbeat(msg, self._verify)
            elif isinstance(msg, Rollout):
                self._first_rollout_at = self._first_rollout_at or time.monotonic()
                got_rollout = True
                if self.evaluator is not None and self.evaluator.owns(msg.lease_id):
                    self.evaluator.record(msg, self.stats, self.metrics, self.trainer.version)
                elif self.intake.on_rollout(msg) is not None:
                    self.supervisor.count_group(msg.generator_id)
        return got_rollout

    def _verify(self, *args):
        with self.clock.stage("probe"):
            return self.publisher.verify(*args)

    def _dispatch(self) -> None:
        """Keep every live generator busy, but never lease more than can be trained within max_lag."""
        if self.waves is not None:
            return self._dispatch_waves()
        budget = dispatch.lease_budget(self.cfg.learner, self.leases.open, self.leases.dispatched)
        if budget <= 0:
            return
        ready = self.supervisor.ready_weights()
        if self._first_rollout_at is None and len(ready) < self.supervisor.expected:
            return  # at the start, wait until every generator is ready, so the first wave is spread over all
        info = self.supervisor.generators
        slots = {gid: dispatch.Slot(w, self.leases.outstanding(gid), info[gid].groups, info[gid].busy_s)
                 for gid, w in ready.items()}
        in_step = self.stepper.groups_in_step
        for gid in dispatch.plan(budget, slots, self.cfg.learner, self.cfg.generator.max_inflight,
                                 soonest=self.trainer.version + (self.stepper.running is not None),
                                 ahead=self.leases.open - in_step):
            a = self.leases.lease(gid, self.trainer.version)
            self.observe(Leased(gid, a, self.tracker.h(a.prompt_id)))
            if not self.endpoint.send(gid, a):
                self.leases.expire(generator_id=gid)
                return  # its socket is gone; the supervisor will notice, the next tick re-plans

    def _dispatch_waves(self) -> None:
        """Exact lag control: the waves due at this version go out whole, at a fixed point (no step
        running, the last one's bookkeeping done) and once every generator holds this version."""
        v, lc = self.trainer.version, self.cfg.learner
        due = self.waves.due(v, lc.steps) if self.stepper.running is None else []
        ready = self.supervisor.ready_weights()
        if not due or not ready or len(ready) < self.supervisor.expected or any(w != v for w in ready.values()):
            return
        for step in due:
            slots = [self.waves.generator_for(i, list(ready)) for i in range(self.waves.size)]
            self.waves.leased[step] = []
            for i, gid in enumerate(slots):
                a = self.leases.lease(gid, v, seed=lease_seed(self.cfg.run.seed, step, i), wave=step,
                                      wave_size=slots.count(gid))
                self.waves.leased[step].append(a.lease_id)
                self.observe(Leased(gid, a, self.tracker.h(a.prompt_id)))
                if not self.endpoint.send(gid, a):
                    self.leases.expire(generator_id=gid)  # its socket is gone: re-issued, counted

    def _start_wave_step(self) -> None:
        """Exact lag control: step t starts once its whole wave is back, and only after the waves
        due at version t went out (they must be generated under these weights, before they change)."""
        t, lc = self.trainer.version, self.cfg.learner
        if not self.waves.out_before_step(t, lc.steps) or not self.waves.complete(t, self.leases.out_at_generators()):
            return
        arrived = self.buffer.take_leases(self.waves.leased[t])
        if not arrived:  # every lease of the wave failed or was re-issued: the wave goes out again
            del self.waves.leased[t]
            return
        train, rest = self.waves.choose(t, arrived)
        for g in rest:
            self.leases.close(g.lease_id, "dropped_filtered", mean_tokens=g.mean_tokens)
        self.intake.window.filtered += len(rest)
        self._wave_rest[t] = rest
        self._start_step(train)

    def _start_if_ready(self) -> None:
        """Start an optimiser step when a batch is ready (dropping what went stale meanwhile). Once
        the sample budget is all back, the last groups train as a batch of their own (those samples
        were paid for)."""
        lc = self.cfg.learner
        if (self.stepper.running is not None or self.writer.busy or self.trainer.version >= lc.steps
                or self.stop_requested):
            return
        if self.waves is not None:
            return self._start_wave_step()
        for g in self.buffer.drop_stale(self.trainer.version, lc.max_lag):
            self.leases.close(g.lease_id, "dropped_stale", mean_tokens=g.mean_tokens)
        if len(self.buffer) >= lc.groups_per_step or (len(self.buffer) and self._budget_returned()):
            self._start_step(self.buffer.take(lc.groups_per_step))

    def _start_step(self, groups) -> None:
        lags = [g.lag(self.trainer.version) for g in groups]
        assert max(lags) <= self.cfg.learner.max_lag, "a stale group reached the optimiser"
        v = self.trainer.version
        self.observe(StepStarted(v, groups))
        copy = self.publisher.take_snapshot if self._due(v) and self.publisher.needs_snapshot(v) else None
        self.stepper.start(groups, lags, copy)

    def _finish_step(self, done: RunningStep) -> dict:
        """The bookkeeping of a finished step (the next one may be running already)."""
        metrics = done.future.result()  # re-raises a failure of the step here, in the learner's thread
        self.stats.record_cut([self.leases.bins(g.lease_id, g.mean_tokens) for g in done.groups],
                              metrics.pop("cut_by_group"))
        for g in done.groups:
            self.leases.close(g.lease_id, "trained", mean_tokens=g.mean_tokens)
            self.tracker.record_trained(g.prompt_id, done.version)
        if self.waves is not None:  # the wave's visits, in lease order, at its step's end (learner/orchestration/exact.py)
            for g in self.waves.in_lease_order(done.version, done.groups + self._wave_rest.pop(done.version, [])):
                self.intake.record_visit(g)
            del self.waves.leased[done.version]
        window = self.intake.close_window()
        arrived = window.metrics()
        metrics.update(self.clock.take())  # the loop's stages since the last step, beside the step's own
        metrics.update(arrived, **tracker_metrics(self.tracker),
                       **self.stats.record_step(done.groups, done.lags, arrived["residual_frac"],
                                                done.finished - done.started,
                                                {k: v for k, v in metrics.items() if k.startswith("time/")}))
        metrics.update({"buffered": len(self.buffer), "open_leases": self.leases.open,
                        "leases/dispatched": self.leases.dispatched,
                        **{f"leases/{k}": v for k, v in self.leases.outcomes.items()}})
        self.metrics.log(self.trainer.version, metrics)
        self._last_lag = (metrics["lag_mean"], metrics["lag_max"])
        return metrics

    def _publish(self) -> None:
        self.publisher.publish(self.supervisor.links, set(self.supervisor.generators), self._due(self.trainer.version),
                               self.stepper.running is not None)

    def _due(self, version: int) -> bool:
        return version % self.cfg.learner.sync_every == 0 or version >= self.cfg.learner.steps or self._finishing

    def _checkpoint_due(self) -> bool:
        every = self.cfg.learner.checkpoint_every
        return bool(every) and self.trainer.version % every == 0

    def _after_step(self, metrics: dict, progress) -> None:
        v, lc = self.trainer.version, self.cfg.learner
        if self._checkpoint_due():
            self.checkpoint(wait=False)
        if self.cfg.eval.every and v % self.cfg.eval.every == 0 and v < lc.steps:
            self._start_eval()
        if progress is not None:
            progress.update(1)
            progress.set_postfix(reward=f"{metrics['reward']:.2f}", T=f"{metrics['temperature_mean']:.2f}",
                                 lag=f"{metrics['lag_mean']:.1f}")

    def _watch(self, last_rollout: float) -> None:
        """A stall ends the run with an error naming the stage, never a silent hang; and the run's
        health file is kept fresh for `run.py status`."""
        lc, now = self.cfg.learner, time.monotonic()
        self.trainer.keep_alive()  # sharded: the other training processes wait for the next batch
        running = self.stepper.running
        if running is not None and now - running.started > lc.step_timeout_s:
            self._write_health()  # the run folder says where it stood when it stalled
            raise LearnerError(f"the optimiser step at version {running.version} ({len(running.groups)} groups) has "
                               f"run for {now - running.started:.0f}s (learner.step_timeout_s = {lc.step_timeout_s:.0f})")
        if now - last_rollout > lc.idle_timeout_s:
            self._write_health()
            raise LearnerError(f"no rollout for {lc.idle_timeout_s:.0f}s (learner.idle_timeout_s); generators: "
                               f"{ {g: h.state for g, h in self.supervisor.health(now).items()} }")
        if now - self._health_at > health.WRITE_EVERY_S:
            self._write_health()

    def _write_health(self, finished: bool = False) -> None:
        now, lc = time.monotonic(), self.cfg.learner
        self._health_at = now
        elapsed = now - (self._first_rollout_at or self._started)
        newest = checkpoint.latest(self.cfg.run_dir / "checkpoints")
        steps_done = max(self.trainer.version - self.initial_version, 1)
        health.write(self.cfg.run_dir, health.Health(
            written=time.time(), started=self._started_wall, pid=os.getpid(), step=self.trainer.version, steps=lc.steps,
            samples_per_s=self.stats.samples_trained / elapsed if elapsed > 0 else 0.0,
            lag_mean=self._last_lag[0], lag_max=self._last_lag[1], generators=self.supervisor.health(now),
            leases={"dispatched": self.leases.dispatched, "open": self.leases.open, **self.leases.outcomes},
            weights_mismatch=self.stats.weights_mismatch, checkpoint=newest.name if newest else "",
            checkpoint_time=newest.stat().st_mtime if newest else 0.0,
            checkpoint_every_s=lc.checkpoint_every * elapsed / steps_done if lc.checkpoint_every else 0.0,
            finished=finished))

    def _budget_returned(self) -> bool:
        """The sample budget is all leased and every lease of it has come back."""
        lc = self.cfg.learner
        return (bool(lc.sample_budget) and self.leases.dispatched * lc.group_size >= lc.sample_budget
                and not self.leases.outstanding())

    def _budget_spent(self) -> bool:
        """The sample budget is generated and every group of it is trained or dropped."""
        return self._budget_returned() and not len(self.buffer)

    def _generator_gone(self, gid: int, why: str) -> None:
        if why.startswith("retired"):
            self.metrics.alert(f"generator {gid} retired", why)
        expired = self.leases.expire(generator_id=gid)
        log.warning("generator %d %s; %d leases re-issued", gid, why, len(expired))
        if self.evaluator is not None and self.evaluator.busy:
            self.evaluator.abandon()  # its share of the round is gone; the next round starts afresh

    # ---- held-out rounds ---------------------------------------------------------------------------

    def _start_eval(self) -> None:
        self.evaluator.start_round(self.trainer.version, self.leases.new_lease_id,
                                   sorted(self.supervisor.generators), self.endpoint.send)

    def _final_eval(self) -> None:
        """A held-out round on the final weights (the generators hold them after _finish_broadcasts).
        Its timeout is on progress, not on the whole round (AIME at k = 32 and 16k tokens takes
        hours): it fails only when no rollout at all arrives for `learner.idle_timeout_s`."""
        idle = self.cfg.learner.idle_timeout_s
        for start in (False, True):  # a mid-run round still out finishes first
            if start:
                self._start_eval()
            last = time.monotonic()
            while self.evaluator.busy:
                if time.monotonic() - last > idle:
                    raise LearnerError(f"held-out evaluation: no result for {idle:.0f}s (learner.idle_timeout_s); "
                                       f"{len(self.evaluator.current.pending)} problems still out")
                if self._poll(timeout_ms=50):
                    last = time.monotonic()

    def _finish_broadcasts(self, timeout_s: float = 60.0) -> None:
        """Let the last broadcast land and the generators report its probe, so it is verified."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._publish()
            last = self.publisher.latest
            if last == self.trainer.version and self.supervisor.all_hold(last):
                return
            self._poll(timeout_ms=20)

    # ---- checkpoints, end of run -------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"version": self.trainer.version, "probe_logprobs": self.trainer.probe_logprobs(),
                "tracker": self.tracker.state_dict(),
                "leases": self.leases.state_dict(), "stats": self.stats.to_state(),
                "buffer": [group_to_state(g) for g in self.buffer.groups], "config": msgspec.to_builtins(self.cfg),
                **({"waves": self.waves.state_dict()} if self.waves is not None else {})}

    def check_leases(self) -> None:
        """The lease identity in full: each open lease is out at a generator, buffered with its
        group, or in the running step, and nothing is buffered or trained without an open lease."""
        running = self.stepper.running
        self.leases.check_identity([g.lease_id for g in self.buffer.groups],
                                       [g.lease_id for g in running.groups] if running is not None else [])

    def checkpoint(self, wait: bool = True) -> Path | None:
        """A consistent cut, taken between two steps (the loop holds the next step until it is
        written): model, optimiser, version, tracker, lease book and buffer describe one moment.
        `wait=False` leaves the files to the writer's thread (the loop goes on answering heartbeats)."""
        if self.stepper.running is not None:
            raise LearnerError("a checkpoint must not be taken while an optimiser step runs")
        self._written(wait=True)  # the one before, if still being written
        self.check_leases()
        self._checkpoint_started = time.monotonic()
        self.writer.start(self.trainer, self.state_dict())
        return self._written(wait=True) if wait else None

    def _written(self, wait: bool) -> Path | None:
        outcome = self.writer.collect(wait)
        if outcome is not None:  # the steps were held for this long
            self.clock.spent["checkpoint"] += time.monotonic() - self._checkpoint_started
        if isinstance(outcome, checkpoint.CheckpointError):
            # Training goes on: losing the run to a full disk would be worse than a missed checkpoint.
            self.checkpoint_failures += 1
            log.error("%s", outcome)
            return None
        if outcome is not None:
            log.info("checkpoint written: %s", outcome)
        return outcome

    def stop_generators(self) -> None:
        self.supervisor.stop_all()

    def close(self) -> None:
        self._written(wait=True)  # a checkpoint half-written would be lost for nothing
        self.stepper.close()
        self.supervisor.close()
        self.metrics.close()
        self.endpoint.close()

    def counters(self) -> dict:
        return run_counters(self.leases, len(self.buffer), self.stats, rejected_frames=self.endpoint.rejected.counts,
                            rejected_rollouts=self.intake.rejected, checkpoint_failures=self.checkpoint_failures,
                            generator_restarts=self.supervisor.restarts, generators_retired=self.supervisor.retired,
                            **({"short_waves": self.waves.short} if self.waves is not None else {}))
