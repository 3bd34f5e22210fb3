"""The learner's tick: poll the sockets, hand each message to its owner, start the work that is due.

Every concern has one owner, built by learner/build.py from the config section it reads; the loop
only wires them:

  orchestration/  supervisor (generator processes), lag control (what to lease, which groups wait,
                  when a step starts and what it trains: bounded or exact), its group buffer, the
                  ledger (its verdicts carried out: leases closed, visits to the tracker), dispatch
                  (a lease out), lease book, intake (rollout -> group), tracker
  training/       stepper (the optimiser step on its own thread), trainer, checkpoints
  weights/        publisher: snapshots, links to the generators, probe checks
  observe/        statistics, metrics, health, events, the watch: they record, nothing reads them to
                  decide. The loop writes them from what each owner reports (the weights'
                  publisher still counts its probe checks and versions in the statistics itself)

One rollout's path passes through two of the loop's functions: `_poll` (the rollout in: intake ->
lag control's `admit` -> the ledger) and `_step` (its group in a step, and that step's bookkeeping).
Its lease goes out from lag control through the dispatch, without the loop.

Words: a *step* is an optimiser step (one weight version); one pass of `Learner.run`'s loop is a
*tick*; the engine's forward over its running requests is a *decode step* (actors/engine.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import msgspec

from learner.training.clock import StageClock
from learner.observe.events import Observer, StepStarted
from learner.observe.metrics import MetricsLog
from learner.observe.stats import RunStats, run_counters
from learner.observe.watch import Watch
from learner.orchestration.dispatch import Dispatch
from learner.orchestration.heldout import Evaluator
from learner.orchestration.intake import Intake
from learner.orchestration.lag import LagControl, Verdict
from learner.orchestration.ledger import Ledger
from learner.orchestration.leases import LeaseBook
from learner.orchestration.supervisor import Supervisor
from learner.orchestration.tracker import Tracker
from learner.training.checkpoint import Checkpoints
from learner.training.groups import group_to_state
from learner.training.stepper import RunningStep, Stepper
from learner.training.trainer import TrainerLike
from learner.weights.publisher import WeightPublisher
from pipeline.config import EvalConfig, LearnerConfig
from pipeline.messages import Heartbeat, Rollout

log = logging.getLogger(__name__)


@dataclass
class Rooms:
    """The learner's parts, one owner per concern (learner/build.py makes them from the config)."""

    trainer: TrainerLike  # learner/training/trainer.py's Trainer, a sharded one, or a test's stand-in
    tracker: Tracker
    leases: LeaseBook
    intake: Intake
    lag: LagControl  # with the group buffer
    ledger: Ledger
    dispatch: Dispatch
    supervisor: Supervisor
    weights: WeightPublisher
    stepper: Stepper
    heldout: Evaluator | None
    stats: RunStats
    metrics: MetricsLog
    checkpoints: Checkpoints
    clock: StageClock  # the loop's own stages (probe checks, checkpoint holds), beside the step's


class Endpoint(Protocol):
    """The learner's sockets: pipeline/transport.py's LearnerEndpoint, or a test's queue (tests/doubles.py)."""

    rejected: object  # the count of malformed frames dropped, by kind (`.counts`)

    def recv(self, timeout_ms: int) -> list: ...
    def send(self, gid: int, msg) -> bool: ...
    def post(self, gid: int, msg) -> bool: ...  # thread-safe: from the weight links' threads
    def wake(self) -> None: ...
    def close(self) -> None: ...


class Learner:
    def __init__(self, lc: LearnerConfig, ev: EvalConfig, run_dir: Path, config: dict, rooms: Rooms,
                 endpoint: Endpoint, launcher=None, observer: Observer | None = None, eval_first: bool = False):
        """`lc`, `ev`: the config sections the loop reads; `run_dir`: where the health file goes;
        `config`: the resolved config as its checkpoints save it; `launcher`: starts generator
        processes (None: generators join by themselves); `observer`: called with each event of
        learner/observe/events.py; `eval_first`: a held-out round on the starting weights."""
        self.lc, self.ev, self.config = lc, ev, config
        self.rooms, self.endpoint, self.launcher = rooms, endpoint, launcher
        self.trainer, self.tracker, self.leases, self.lag = rooms.trainer, rooms.tracker, rooms.leases, rooms.lag
        self.supervisor, self.weights, self.stepper, self.ledger = rooms.supervisor, rooms.weights, rooms.stepper, rooms.ledger
        self.dispatch = rooms.dispatch
        self.buffer = self.lag.buffer  # lag control's: the loop only reads it (checkpoints, counters)
        self.stats, self.metrics, self.intake = rooms.stats, rooms.metrics, rooms.intake
        self.observe = observer or (lambda event: None)
        self.stop_requested = False  # set by a signal handler: finish the step, checkpoint, stop
        self._eval_first = eval_first
        self.watch = Watch(run_dir, lc, self.trainer.version)

    # ---- the tick ----------------------------------------------------------------------------------

    def run(self, progress=None) -> RunStats:
        if self.launcher is not None:
            self.supervisor.start_all(self.launcher)
        self.watch.last_rollout = time.monotonic()  # generator start-up is not a stall
        while self.stepper.running is not None or (  # a started step is always finished
                self.trainer.version < self.lc.steps and not self.stop_requested and not self.lag.spent()):
            self.tick(progress)
        self.stats.seconds += self.watch.since_first_rollout
        self.stats.close_window()  # what arrived after the last step counts in the run's totals
        self.weights.finishing = True
        self.checkpoint()  # which checks the lease identity in full first
        if not self.stop_requested:  # the last version verified at every generator, then scored
            self.weights.finish(self.trainer.version, lambda: set(self.supervisor.generators), self._poll)
            if self.rooms.heldout is not None and self.ev.final:
                self.rooms.heldout.wait(self._poll, self.lc.idle_timeout_s)  # a mid-run round first
                self._start_eval()
                self.rooms.heldout.wait(self._poll, self.lc.idle_timeout_s)
        self.watch.write(self.trainer.version, self.stats, self.leases, self.supervisor.health(time.monotonic()),
                         finished=True)
        return self.stats

    def tick(self, progress=None, timeout_ms: int = 20) -> None:
        self.supervisor.check(self.launcher)             # 1. generators alive, restarted, or let go
        if self._eval_first and len(self.supervisor.ready_weights()) >= max(self.supervisor.expected, 1):
            self._eval_first = False
            self._start_eval()                           #    (a held-out round on the starting weights)
        v = self.trainer.version
        self.lag.lease(self.supervisor.pool(v, self.stepper.groups_in_step, self.stepper.running is not None),
                       self.dispatch.at(v))              # 2. lease prompt visits to them
        self._poll(timeout_ms)                           # 3. rollouts -> groups -> lag control; heartbeats
        self.leases.expire()                             # 4. overdue leases go back in the queue
        self._step(progress)                             # 5-7. a finished step collected, the next started
        self.weights.publish(self.trainer.version, self.stepper.running is not None)  # 8. new weights out
        self.rooms.checkpoints.collect(wait=False)       # 9. a checkpoint written behind the loop
        self.trainer.keep_alive()                        # 10. sharded: the other ranks wait for the next batch
        self.watch.check(self.stepper.running, self.trainer.version, self.stats, self.leases,
                         self.supervisor.health)         # 11. stalls named, health written

    def _poll(self, timeout_ms: int) -> bool:
        """Hand whatever arrives within `timeout_ms` to its owner; True if a rollout did."""
        got_rollout = False
        for msg in self.endpoint.recv(timeout_ms):
            if isinstance(msg, Heartbeat):
                self.supervisor.on_heartbeat(msg)
                if (check := self.weights.on_heartbeat(msg)) is not None:
                    self.stats.record_probe(check.ok, check.diff)
            elif isinstance(msg, Rollout):
                self.watch.rollout()
                got_rollout = True
                heldout = self.rooms.heldout
                if heldout is not None and heldout.owns(msg.lease_id):
                    if (scored := heldout.on_rollout(msg)) is not None:  # a round complete
                        self.stats.evals.append((scored[0], msgspec.to_builtins(scored[1])))
                        self.metrics.log(self.trainer.version, {"eval/mean_at_k": scored[1].mean_at_k,
                                                                "eval/pass_at_k": scored[1].pass_at_k})
                elif (group := self.intake.on_rollout(msg)) is not None:
                    self.supervisor.count_group(msg.generator_id)
                    self.stats.record_arrival(msg.generator_id, group)
                    self._carry_out(self.lag.admit(group))
        return got_rollout

    def _carry_out(self, verdict: Verdict) -> Verdict:
        """Lag control's verdict takes effect (the ledger: leases closed, visits recorded), and is counted."""
        self.ledger.apply(verdict)
        self.stats.record_visits(verdict.visits, verdict.filtered)
        return verdict

    def _step(self, progress) -> None:
        """5. a finished step collected, if any; 6. the next one starts at once, before the
        bookkeeping, unless a checkpoint is due between the two; 7. the finished step's bookkeeping,
        the checkpoint (written on a thread; no step starts until it is), and the next step."""
        done = self.stepper.collect()
        if done is None or not self._checkpoint_due():
            self._start_if_ready()
        if done is not None:
            self._after_step(self._finish_step(done), progress)
            self._start_if_ready()

    def _start_if_ready(self) -> None:
        """Start an optimiser step when lag control has its batch (never while a checkpoint is cut)."""
        v = self.trainer.version
        if (self.stepper.running is not None or self.rooms.checkpoints.busy or v >= self.lc.steps
                or self.stop_requested):
            return
        groups = self._carry_out(self.lag.next_batch(v)).train
        if groups:
            lags = [g.lag(v) for g in groups]
            assert max(lags) <= self.lc.max_lag, "a stale group reached the optimiser"
            self.observe(StepStarted(v, groups))
            self.stepper.start(groups, lags, self.weights.copy_before_step(v))

    def _finish_step(self, done: RunningStep) -> dict:
        """The bookkeeping of a finished step (the next one may be running already)."""
        result = done.future.result()  # re-raises a failure of the step here, in the learner's thread
        self.stats.record_cut([self.leases.bins(g.lease_id, g.mean_tokens) for g in done.groups], result.cut_by_group)
        self.ledger.trained(done.groups, done.version)
        self._carry_out(self.lag.settle(done.version, done.groups))
        if held := self.rooms.checkpoints.take_held():
            self.rooms.clock.charge("checkpoint", held)  # the time checkpoints held the steps
        metrics = {**result.metrics, **self.rooms.clock.take()}  # the loop's stages since the last step too
        arrived = self.stats.close_window().metrics()
        stages = {k: v for k, v in metrics.items() if k.startswith("time/")}
        metrics.update(arrived, **self.tracker.metrics(), **self.leases.metrics(), buffered=len(self.buffer),
                       **self.stats.record_step(done.groups, done.lags, arrived["residual_frac"],
                                                done.finished - done.started, stages))
        self.metrics.log(self.trainer.version, metrics)
        self.watch.last_lag = (metrics["lag_mean"], metrics["lag_max"])
        return metrics

    def _checkpoint_due(self) -> bool:
        every = self.lc.checkpoint_every
        return bool(every) and self.trainer.version % every == 0

    def _after_step(self, metrics: dict, progress) -> None:
        v, every = self.trainer.version, self.ev.every
        if self._checkpoint_due():
            self.checkpoint(wait=False)
        if every and v % every == 0 and v < self.lc.steps:
            self._start_eval()
        if progress is not None:
            progress.update(1)
            progress.set_postfix(reward=f"{metrics['reward']:.2f}", T=f"{metrics['temperature_mean']:.2f}",
                                 lag=f"{metrics['lag_mean']:.1f}")

    def _start_eval(self) -> None:
        self.rooms.heldout.start_round(self.trainer.version, self.leases.new_lease_id,
                                       sorted(self.supervisor.generators), self.endpoint.send)

    # ---- checkpoints, end of run -------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"version": self.trainer.version, "probe_logprobs": self.trainer.probe_logprobs(),
                "tracker": self.tracker.state_dict(), "leases": self.leases.state_dict(),
                "stats": self.stats.to_state(), "buffer": [group_to_state(g) for g in self.buffer.groups],
                "config": self.config, "lag": self.lag.state_dict()}

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
            raise RuntimeError("a checkpoint must not be taken while an optimiser step runs")
        self.rooms.checkpoints.collect(wait=True)
        self.check_leases()
        self.rooms.checkpoints.start(self.trainer, self.state_dict())
        return self.rooms.checkpoints.collect(wait=True) if wait else None

    def stop_generators(self) -> None:
        self.supervisor.stop_all()
    def close(self) -> None:
        if self.launcher is not None:
            self.launcher.stop()
        self.rooms.checkpoints.collect(wait=True)  # a checkpoint half-written would be lost for nothing
        self.stepper.close()
        self.weights.close()
        self.metrics.close()
        self.endpoint.close()

    def counters(self) -> dict:
        return run_counters(self.leases, len(self.buffer), self.stats, rejected_frames=self.endpoint.rejected.counts,
                            rejected_rollouts=self.intake.rejected, checkpoint_failures=self.rooms.checkpoints.failures,
                            generator_restarts=self.supervisor.restarts, generators_cooling=self.supervisor.cooling,
                            **self.lag.counters())
