"""The learner's main loop: lease prompts, collect complete groups, train, broadcast, account.

One thread owns the sockets and the model; the weight broadcast runs beside it (learner/broadcast.py).
Read `Learner.run` top to bottom for the whole asynchronous step.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import time
from pathlib import Path
from dataclasses import dataclass, field

import msgspec
import torch

from learner.advantages import group_advantage
from learner import checkpoint
from learner.broadcast import GeneratorLink, prepare
from learner.dispatcher import Dispatcher
from learner.evaluation import Evaluator
from learner.groups import BadRollout, GroupBuffer, group_from_rollout, group_from_state, group_to_state
from learner.metrics import MetricsLog
from learner.tracker import Tracker
from learner.trainer import Trainer
from pipeline.config import Config, to_toml_dict
from pipeline.data import Problem
from pipeline.messages import Heartbeat, Rollout, Stop, Welcome, WireError
from pipeline.models import load_tokenizer
from pipeline.transport import LearnerEndpoint, free_port

log = logging.getLogger(__name__)


# How far a generator's probe log-probs may be from the learner's for the same weights.
PROBE_TOLERANCE = {"float32": 1e-3, "bfloat16": 5e-2, "float16": 2e-2}


class LearnerError(RuntimeError):
    pass


@dataclass
class GeneratorInfo:
    status: str = "starting"
    version: int = 0
    last_seen: float = 0.0
    pid: int = 0
    checked: int = -1  # newest version whose probe log-probs were compared
    busy_s: float = 0.0  # its cumulative generating time, as it last reported


@dataclass
class RunStats:
    """What the summary is made of; also what the tests inspect."""

    step_rewards: list[float] = field(default_factory=list)
    step_residual: list[float] = field(default_factory=list)  # share of arriving groups all-correct
    evals: list[tuple[int, dict]] = field(default_factory=list)  # (step, score) of held-out rounds
    group_kinds: collections.Counter = field(default_factory=collections.Counter)
    trained_temp_sum: float = 0.0  # running sums, not lists: a run may last days
    trained_groups: int = 0
    lag_hist: collections.Counter = field(default_factory=collections.Counter)
    trained_lags_max: int = 0
    samples_trained: int = 0
    versions_announced: list[int] = field(default_factory=list)
    weights_verified: int = 0
    weights_mismatch: int = 0
    probe_max_diff: float = 0.0
    rollouts_by_generator: collections.Counter = field(default_factory=collections.Counter)
    version_regressions: int = 0  # a generator's rollouts going back in weight version (must stay 0)
    seconds: float = 0.0
    train_seconds: float = 0.0  # time inside optimiser steps (the rest of `seconds` the learner waited)


@dataclass
class Window:
    """Groups that arrived since the last optimiser step, for the residual-prompt metrics (§6)."""

    kinds: collections.Counter = field(default_factory=collections.Counter)
    by_temp: dict = field(default_factory=lambda: collections.defaultdict(collections.Counter))
    temps: list[float] = field(default_factory=list)
    above_t0: int = 0
    above_t0_mixed: int = 0
    filtered: int = 0

    def add(self, kind: str, temperature: float, t0: float) -> None:
        self.kinds[kind] += 1
        self.by_temp[round(temperature, 2)][kind] += 1
        self.temps.append(temperature)
        if temperature > t0 + 1e-9:
            self.above_t0 += 1
            self.above_t0_mixed += kind == "mixed"

    def metrics(self, tracker) -> dict:
        total = sum(self.kinds.values()) or 1
        out = {f"groups/{k}": self.kinds[k] / total for k in ("positive", "negative", "mixed")}
        out["residual_frac"] = self.kinds["positive"] / total
        for t, c in sorted(self.by_temp.items()):
            out[f"residual_by_temp/{t:.2f}"] = c["positive"] / (sum(c.values()) or 1)
        if self.temps:  # a step may see no arrivals at all; then there is no temperature to report
            out["leased_temp_mean"] = sum(self.temps) / len(self.temps)
            out["leased_temp_max"] = max(self.temps)
        if self.above_t0:
            out["reactivated_rate"] = self.above_t0_mixed / self.above_t0
        hs = [p.h for p in tracker.prompts]
        out["h_mean"] = sum(hs) / len(hs)
        out["h_max"] = max(hs)
        out["h_positive_frac"] = sum(h > 0 for h in hs) / len(hs)
        out["dynamic_sampling_filtered"] = self.filtered
        return out


class Learner:
    def __init__(self, cfg: Config, model_path: str, problems: list[Problem], resume: Path | None = None,
                 trainer: Trainer | None = None):
        """`resume`: a checkpoint folder; the run continues from it (model, optimiser, tracker, cursor,
        counters, RNG) and its model folder becomes what generators load at start."""
        self.cfg = cfg
        if resume is not None:
            model_path = str(resume)
        self.model_path = model_path
        tokenizer = load_tokenizer(model_path)
        prompt_tokens = [tokenizer.encode(cfg.data.prompt_template.format(question=p.question))
                         for p in problems]
        self.tracker = Tracker(len(problems), cfg.tracker.reset_on_mixed)
        self.dispatcher = Dispatcher(cfg, problems, prompt_tokens, self.tracker)
        torch.manual_seed(cfg.run.seed)
        self.trainer = trainer or Trainer(cfg, model_path)
        self.buffer = GroupBuffer()
        t = cfg.transport
        self.endpoint = LearnerEndpoint(t.host, t.control_port, t.rollout_port, t.max_frame_bytes, t.curve_dir)
        self.backend = "nccl" if torch.cuda.is_available() else "gloo"
        self.links: dict[int, GeneratorLink] = {}  # weight group per generator process
        self.restarts = 0
        self.generators: dict[int, GeneratorInfo] = {}
        self.stats = RunStats()
        self.stop_requested = False  # set by a signal handler: finish the step, checkpoint, stop
        self.checkpoint_failures = 0
        if resume is not None:
            self._restore(resume)
        # The learner's probe log-probs per announced version: what each generator must report back.
        self.probes: dict[int, list[float]] = {self.trainer.version: self.trainer.probe_logprobs()}
        self.initial_version = self.trainer.version
        self.rejected_rollouts: collections.Counter[str] = collections.Counter()
        self.evaluator = Evaluator(cfg, tokenizer) if cfg.eval.every or cfg.eval.final else None
        self.window = Window()  # what arrived since the last optimiser step
        self._finishing = False
        self._snapshot = None  # (version, announce, flat weights) of the newest broadcast
        self._first_rollout_at: float | None = None
        # the optimiser step runs on this one worker thread; (future, groups, version, lags, start)
        self._stepper = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="optimiser")
        self._snapshotter = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot")
        self._pending = None
        self._last_rollout_version: dict[int, int] = {}
        self.metrics = MetricsLog(cfg.run_dir / "metrics.jsonl", use_wandb=cfg.log.wandb,
                                  wandb_mode=cfg.log.wandb_mode, run_name=cfg.run.name,
                                  config=to_toml_dict(cfg))

    # ---- checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"version": self.trainer.version, "tracker": self.tracker.state_dict(),
                "dispatcher": self.dispatcher.state_dict(), "stats": msgspec.to_builtins(self.stats),
                "buffer": [group_to_state(g) for g in self.buffer.groups],
                "config": msgspec.to_builtins(self.cfg)}

    def _restore(self, ckpt: Path) -> None:
        state, rng = checkpoint.load_state(ckpt)
        self.trainer.version = state["version"]
        self.trainer.load_optimizer(ckpt)
        torch.set_rng_state(rng)
        self.tracker.load_state_dict(state["tracker"])
        self.dispatcher.load_state_dict(state["dispatcher"])
        for raw in state["buffer"]:
            self.buffer.add(group_from_state(raw))
        st = state["stats"]
        for key in ("group_kinds", "lag_hist", "rollouts_by_generator"):
            st[key] = collections.Counter({(k if key == "group_kinds" else int(k)): v for k, v in st[key].items()})
        st["evals"] = [tuple(e) for e in st["evals"]]
        self.stats = RunStats(**st)
        self.stats.versions_announced = [self.trainer.version]  # the generators start from this one
        log.info("resumed from %s at version %d (epoch %d, cursor %d)", ckpt, self.trainer.version,
                 self.dispatcher.epoch, self.dispatcher.cursor)

    def checkpoint(self) -> Path | None:
        try:
            model_state, optimizer_state = self.trainer.full_state()
            path = checkpoint.save(self.cfg.run_dir / "checkpoints", self.trainer.version, self.trainer.model,
                                   optimizer_state, self.state_dict(), self.model_path,
                                   self.cfg.learner.keep_checkpoints, model_state)
        except checkpoint.CheckpointError as exc:
            # Training goes on: losing the run to a full disk would be worse than a missed checkpoint.
            self.checkpoint_failures += 1
            log.error("%s", exc)
            return None
        log.info("checkpoint written: %s", path)
        return path

    # ---- messages in -------------------------------------------------------------------------

    def _on_heartbeat(self, hb: Heartbeat) -> None:
        if hb.generator_id not in self.links:
            if hb.status == "stopping":
                return  # the last word of one that has already been let go
            self._welcome(hb.generator_id)
        info = self.generators.setdefault(hb.generator_id, GeneratorInfo())
        info.status, info.version, info.pid, info.busy_s = hb.status, hb.version, hb.pid, hb.busy_s
        info.last_seen = time.monotonic()
        expected = self.probes.get(hb.probe_version)
        if hb.probe_logprobs and expected is not None and hb.probe_version > info.checked:
            info.checked = hb.probe_version
            diff = max(abs(a - b) for a, b in zip(hb.probe_logprobs, expected))
            self.stats.probe_max_diff = max(self.stats.probe_max_diff, diff)
            if len(hb.probe_logprobs) == len(expected) and diff <= PROBE_TOLERANCE[self.cfg.model.dtype]:
                self.stats.weights_verified += 1
            else:
                self.stats.weights_mismatch += 1
                log.error("generator %d: weights of version %d differ from the learner's (probe log-probs "
                          "differ by up to %.2e)", hb.generator_id, hb.probe_version, diff)

    def _on_rollout(self, r: Rollout) -> None:
        if self._first_rollout_at is None:
            self._first_rollout_at = time.monotonic()
        if self.evaluator is not None and self.evaluator.owns(r.lease_id):
            result = self.evaluator.on_rollout(r)
            if result is not None:
                self.stats.evals.append((self.evaluator.results[-1][0], msgspec.to_builtins(result)))
                self.metrics.log(self.trainer.version, {"eval/mean_at_k": result.mean_at_k,
                                                        "eval/pass_at_k": result.pass_at_k})
            return
        lease = self.dispatcher.returned(r.lease_id)
        if lease is None:  # expired and re-issued, duplicated, or never ours: not a dispatch outcome
            self._reject_rollout("unknown_lease", r)
            return
        if (r.prompt_id, r.epoch) != (lease.prompt_id, lease.epoch):
            self.dispatcher.close(r.lease_id, "failed", "mismatched_rollout")
            self._reject_rollout("mismatched_rollout", r)
            return
        try:
            group = group_from_rollout(r, self.cfg.learner.group_size)
        except BadRollout as exc:
            self.dispatcher.close(r.lease_id, "failed", "bad_rollout")
            self._reject_rollout("bad_rollout", r, str(exc))
            return
        if group.version_first < self._last_rollout_version.get(r.generator_id, 0):
            self.stats.version_regressions += 1
        self._last_rollout_version[r.generator_id] = group.version_last
        self.stats.rollouts_by_generator[r.generator_id] += 1
        self.tracker.record_visit(group.prompt_id, group.rewards.tolist(), group.temperature, group.version_first)
        self.stats.group_kinds[group.kind] += 1
        self.window.add(group.kind, group.temperature, self.cfg.schedule.t0)
        if self._filtered_out(group):
            self.dispatcher.close(r.lease_id, "dropped_filtered")
            self.window.filtered += 1
            return
        self.buffer.add(group)

    def _filtered_out(self, group) -> bool:
        """DAPO dynamic sampling: a group whose advantages are all zero teaches nothing; drop it and
        let the dispatcher draw another, up to max_gen_batches batches' worth of drops per step."""
        ds = self.cfg.dapo
        if not ds.dynamic_sampling or self.window.filtered >= ds.max_gen_batches * self.cfg.learner.groups_per_step:
            return False
        return not group_advantage(group.rewards, [len(x) for x in group.responses], self.cfg).has_signal

    def _reject_rollout(self, kind: str, r: Rollout, detail: str = "") -> None:
        if self.rejected_rollouts[kind] == 0:
            log.warning("rejected rollout for lease %d from generator %d: %s %s", r.lease_id,
                        r.generator_id, kind, detail)
        self.rejected_rollouts[kind] += 1

    def _poll(self, timeout_ms: int) -> bool:
        """Handle whatever arrives within `timeout_ms`; True if a rollout did."""
        got_rollout = False
        for msg in self.endpoint.recv(timeout_ms):
            if isinstance(msg, Heartbeat):
                self._on_heartbeat(msg)
            elif isinstance(msg, Rollout):
                self._on_rollout(msg)
                got_rollout = True
        return got_rollout

    # ---- actions -------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Keep every live generator busy, but never lease more than can be trained within max_lag.
        Leases go one at a time to the generator that would get through its queue soonest at its
        measured rate (groups per busy second), so a faster engine gets a larger share."""
        lc, B = self.cfg.learner, self.cfg.learner.groups_per_step
        budget = (lc.max_open_groups or (lc.max_lag + 1) * B) - self.dispatcher.open
        if lc.sample_budget:
            budget = min(budget, lc.sample_budget // lc.group_size - self.dispatcher.dispatched)
        if budget <= 0:
            return
        # When can a new lease be trained? Groups are trained in arrival order, B per step, and the
        # `ahead` leases open outside the running step go first: at the soonest in the step starting
        # at version `soonest + ahead // B`. It starts under the newest weights handed to its
        # generator (the update goes first on the same socket and is loaded before any later lease
        # starts), so a generator holding version g may take leases while that lag stays within
        # max_lag; past it the lease would be stale before it began (with max_open_groups set, the
        # user over-provisions on purpose and only the cap applies).
        soonest = self.trainer.version + (self._pending is not None)
        ahead = self.dispatcher.open - (len(self._pending[1]) if self._pending is not None else 0)
        weights = {gid: max(info.version, self.links[gid].version) for gid, info in self.generators.items()
                   if info.status in ("ready", "generating", "updating")
                   and gid in self.links and self.links[gid].group is not None}  # joined its weight group

        def in_time(gid: int) -> bool:
            return lc.max_open_groups > 0 or soonest + ahead // B - weights[gid] <= lc.max_lag

        queued = {gid: self.dispatcher.outstanding(gid) for gid in weights
                  if soonest - weights[gid] <= lc.max_lag}  # else it could only make stale samples
        if self._first_rollout_at is None and len(queued) < self.cfg.generator.count:
            return  # at the start, wait until every generator is ready, so the first wave is spread over all
        rate = self._rates(queued)
        while budget > 0:
            open_slots = [gid for gid, q in queued.items() if q < self.cfg.generator.max_inflight and in_time(gid)]
            if not open_slots:
                return
            # An idle engine starts a lease at once, so it goes first. Otherwise, when the learner is
            # the bottleneck and only a few leases free up per step, the engine that batches most
            # would take them all. A generator held at one group at a time looks slow per busy
            # second, so it would never get more (a joiner starved this way).
            gid = min(open_slots, key=lambda g: (queued[g] > 0, (queued[g] + 1) / rate[g], g))
            if not self.endpoint.send(gid, self.dispatcher.lease(gid, self.trainer.version)):
                self.dispatcher.expire(generator_id=gid)
                del queued[gid]
                continue
            queued[gid] += 1
            ahead += 1
            budget -= 1

    def _rates(self, gids) -> dict[int, float]:
        """Each generator's throughput in groups per busy second, shrunk towards the pool's rate by a
        few pseudo-groups. A newcomer thus starts at the pool's rate, not at an arbitrary prior: with
        a fixed prior of 1 group/s, a joiner beside an engine measured at ~100 groups/s never won a
        lease, so it was never measured and starved for good."""
        n = {gid: self.stats.rollouts_by_generator[gid] for gid in gids}
        busy = {gid: self.generators[gid].busy_s for gid in gids}
        n_all, busy_all = sum(n.values()), sum(busy.values())
        pool = n_all / busy_all if n_all > 0 and busy_all > 0 else 1.0
        prior_groups = 4.0
        return {gid: (n[gid] + prior_groups) / (busy[gid] + prior_groups / pool) for gid in gids}

    def _announce(self) -> None:
        """Send the newest weights to every generator whose link is free and that lacks them.
        A generator that restarted gets them at once; the others every `sync_every` steps."""
        v = self.trainer.version
        due = self._due(v)
        latest = self.stats.versions_announced[-1] if self.stats.versions_announced else 0
        # a generator behind the newest announced version (it restarted) is brought up to date at once
        targets = [gid for gid, link in self.links.items()
                   if gid in self.generators and link.ready and link.version < v and (due or link.version < latest)]
        if not targets:
            return
        if self._snapshot is None or (due and self._snapshot[0] != v):
            if self._pending is not None:
                return  # a step is changing the weights: its worker snapshots them once it is done
            self._take_snapshot()
        v, update, flat = self._snapshot
        for gid in targets:
            if self.links[gid].version < v and self.endpoint.send(gid, update):
                self.links[gid].submit(v, flat)

    def _due(self, version: int) -> bool:
        return version % self.cfg.learner.sync_every == 0 or version >= self.cfg.learner.steps or self._finishing

    def _take_snapshot(self) -> None:
        """Copy the weights as they are now (training may go on) and the probe log-probs the
        generators must match for them. Runs on the loop's thread when no step is running, else on
        the snapshot thread beside the next step (see `_step_job`)."""
        v = self.trainer.version
        update, flat = prepare(v, self.trainer.named_weights(), self.cfg.model.dtype)
        self.probes[v] = self.trainer.probe_logprobs()
        for old in [k for k in self.probes if k < v - 64]:  # generators report recent versions only
            del self.probes[old]
        self._snapshot = (v, update, flat)
        self.stats.versions_announced.append(v)
        self.endpoint.wake()  # the loop sends it now

    def _collect(self):
        """Take the running optimiser step if it is done (None while it runs, or if none)."""
        if self._pending is None or not self._pending[0].done():
            return None
        done, self._pending = (*self._pending, time.monotonic()), None
        return done

    def _start_if_ready(self) -> None:
        """Start an optimiser step in the background when a batch is ready. While it runs, this thread
        keeps receiving rollouts and leasing prompts, so generators never wait on the optimiser."""
        lc = self.cfg.learner
        if self._pending is not None or self.trainer.version >= lc.steps or self.stop_requested:
            return
        for g in self.buffer.drop_stale(self.trainer.version, lc.max_lag):
            self.dispatcher.close(g.lease_id, "dropped_stale")
        if len(self.buffer) >= lc.groups_per_step:
            self._start_step(self.buffer.take(lc.groups_per_step))

    def _train(self, groups) -> dict:
        """One step, start to finish (for a last partial batch; the loop calls it with none running)."""
        assert self._pending is None, "a step is already running"
        self._start_step(groups)
        self._pending[0].result()  # waits for it
        return self._finish_step(self._collect())

    def _start_step(self, groups) -> None:
        version = self.trainer.version
        lags = [g.lag(version) for g in groups]
        assert max(lags) <= self.cfg.learner.max_lag, "a stale group reached the optimiser"
        future = self._stepper.submit(self._step_job, groups)
        future.add_done_callback(lambda _: self.endpoint.wake())  # the loop picks the result up at once
        self._pending = (future, groups, version, lags, time.monotonic())

    def _step_job(self, groups) -> dict:
        """On the optimiser thread. If the weights as they are now are due to go out and not yet
        copied, a second thread copies them while this step's forward and backward run; the
        optimiser update waits for the copy. So the snapshot costs the step next to nothing."""
        v = self.trainer.version
        snap = None
        if self._due(v) and (self._snapshot is None or self._snapshot[0] != v):
            if not self.trainer.concurrent_snapshot:
                self._take_snapshot()  # here, before the step: a sharded copy is a collective
            else:
                snap = self._snapshotter.submit(self._take_snapshot)
        return self.trainer.step(groups, before_update=snap.result if snap is not None else None)

    def _finish_step(self, done) -> dict:
        """The bookkeeping of a step collected by `_collect` (the next one may be running already)."""
        future, groups, version, lags, t0, t1 = done
        metrics = future.result()  # re-raises a failure of the step here, in the learner's thread
        self.stats.train_seconds += t1 - t0
        for g, lag in zip(groups, lags):
            self.dispatcher.close(g.lease_id, "trained")
            self.tracker.record_trained(g.prompt_id, version)
            self.stats.lag_hist[lag] += g.n
            self.stats.trained_temp_sum += g.temperature
            self.stats.trained_groups += 1
        rewards = torch.cat([g.rewards for g in groups])
        window = self.window.metrics(self.tracker)
        self.stats.step_rewards.append(float(rewards.mean()))
        self.stats.step_residual.append(window["residual_frac"])
        self.window = Window()
        self.stats.samples_trained += int(rewards.numel())
        self.stats.trained_lags_max = max(self.stats.trained_lags_max, max(lags))
        metrics.update({
            **window, "reward": float(rewards.mean()),
            "temperature_mean": sum(g.temperature for g in groups) / len(groups),
            "trained_residual_frac": sum(g.kind == "positive" for g in groups) / len(groups),
            "lag_mean": sum(lags) / len(lags), "lag_max": max(lags), "step_seconds": t1 - t0,
            "buffered": len(self.buffer), "open_leases": self.dispatcher.open,
            **{f"leases/{k}": v for k, v in self.dispatcher.outcomes.items()},
            "leases/dispatched": self.dispatcher.dispatched,
        })
        self.metrics.log(self.trainer.version, metrics)
        return metrics

    # ---- the loop --------------------------------------------------------------------------------

    def _start_generator(self, launcher, gid: int) -> None:
        port = free_port(self.cfg.transport.host)
        self.links[gid] = GeneratorLink(self.backend, self.cfg.transport.host, port, self.cfg.learner.lease_timeout_s)
        self.links[gid].version = self.initial_version
        launcher.start(gid, port)

    def _welcome(self, gid: int) -> None:
        """A generator this learner did not start (`run.py generate` by hand, here or on another
        host) joins: it gets a weight group of its own, then the newest weights at once (its link is
        behind every announced version), then leases like the others."""
        port = free_port(self.cfg.transport.host)
        self.links[gid] = GeneratorLink(self.backend, self.cfg.transport.host, port, self.cfg.learner.lease_timeout_s)
        self.endpoint.send(gid, Welcome(weights_port=port))
        log.info("generator %d joined: its weight group is on port %d", gid, port)

    def _forget(self, gid: int, why: str) -> None:
        """A generator is gone: re-issue its leases and drop its weight link."""
        expired = self.dispatcher.expire(generator_id=gid)
        log.warning("generator %d %s; %d leases re-issued", gid, why, len(expired))
        if self.evaluator is not None and self.evaluator.busy:
            self.evaluator.abandon()  # its share of the round is gone; the next round starts afresh
        self.generators.pop(gid, None)
        self.links.pop(gid).close()

    def _supervise(self, launcher) -> None:
        """Restart the generators it launched that died, went silent, or lost their weight link; let
        the ones that joined by themselves leave (cleanly, or by going silent)."""
        now = time.monotonic()
        timeout = self.cfg.generator.heartbeat_timeout_s
        for gid, link in list(self.links.items()):
            info = self.generators.get(gid)
            silent = info is not None and now - info.last_seen > timeout
            if launcher is not None and launcher.manages(gid):
                if silent or link.error is not None:
                    launcher.kill(gid)  # dead to us (e.g. it never joined its weight group): restarted below
            elif silent or link.error is not None or (info is not None and info.status == "stopping"):
                self._forget(gid, "left")
        for gid, code in (launcher.dead() if launcher is not None else {}).items():
            if self.restarts >= self.cfg.generator.max_restarts:
                raise LearnerError(f"generator {gid} exited with code {code} after {self.restarts} restarts "
                                   f"(generator.max_restarts):\n{launcher.log_tail(gid)}")
            self._forget(gid, f"exited (code {code}): restarting")
            self.restarts += 1
            self._start_generator(launcher, gid)

    def run(self, launcher=None, progress=None) -> RunStats:
        lc = self.cfg.learner
        if launcher is not None:
            for gid in range(self.cfg.generator.count):
                self._start_generator(launcher, gid)
        start = time.monotonic()
        last_progress = time.monotonic()
        while self._pending is not None or (  # a started step is always finished
                self.trainer.version < lc.steps and not self.stop_requested and not self._budget_spent()):
            self._supervise(launcher)
            self._dispatch()
            if self._poll(timeout_ms=20):
                last_progress = time.monotonic()
            self.dispatcher.expire()
            done = self._collect()
            self._start_if_ready()  # first: the optimiser never waits on the bookkeeping below
            metrics = self._finish_step(done) if done is not None else None
            self._announce()
            if metrics is not None:
                if lc.checkpoint_every and self.trainer.version % lc.checkpoint_every == 0:
                    self.checkpoint()
                every = self.cfg.eval.every
                if every and self.trainer.version % every == 0 and self.trainer.version < lc.steps:
                    self._start_eval()
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(reward=f"{metrics['reward']:.2f}", T=f"{metrics['temperature_mean']:.2f}",
                                         lag=f"{metrics['lag_mean']:.1f}")
            if time.monotonic() - last_progress > lc.idle_timeout_s:
                raise LearnerError(f"no rollout for {lc.idle_timeout_s:.0f}s (learner.idle_timeout_s)")
        # throughput clock: from the first rollout, so generator start-up (loading vLLM) is not in it
        self.stats.seconds += time.monotonic() - (self._first_rollout_at or start)
        self._finishing = True  # the last version always goes out, whatever sync_every says
        self.checkpoint()
        if self.stop_requested:
            return self.stats
        self._finish_broadcasts()
        if self.evaluator is not None and self.cfg.eval.final:
            self._final_eval()
        return self.stats

    def _budget_spent(self) -> bool:
        """True once the sample budget is generated and every group of it is trained or dropped
        (a last partial batch is trained as it is: those samples were paid for)."""
        lc = self.cfg.learner
        if not lc.sample_budget or self.dispatcher.dispatched * lc.group_size < lc.sample_budget:
            return False
        if self.dispatcher.outstanding():
            return False
        if len(self.buffer):
            self._train(self.buffer.take(len(self.buffer)))
            self._announce()
        return True

    def _start_eval(self) -> None:
        if self.evaluator.busy:
            return  # the previous round is still out; skip rather than pile up
        gids = sorted(self.generators)
        for i, a in enumerate(self.evaluator.start(self.trainer.version, self.dispatcher.new_lease_id,
                                                   self.trainer.version)):
            self.endpoint.send(gids[i % len(gids)], a)

    def _final_eval(self, timeout_s: float = 600.0) -> None:
        """A held-out round on the final weights (the generators hold them after _finish_broadcasts)."""
        self._pump(timeout_s)  # a mid-run round still out: let it finish first
        self._start_eval()
        self._pump(timeout_s)

    def _pump(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.evaluator.busy:
            if time.monotonic() > deadline:
                raise LearnerError(f"held-out evaluation did not finish within {timeout_s:.0f}s")
            self._poll(timeout_ms=50)

    def _finish_broadcasts(self, timeout_s: float = 60.0) -> None:
        """Let the last broadcast land and the generators report its probe, so it is verified."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._announce()
            last = self.stats.versions_announced[-1] if self.stats.versions_announced else 0
            if last == self.trainer.version and all(
                    l.ready and l.version == last for l in self.links.values()) and all(
                    g.checked >= last for g in self.generators.values()):
                return
            self._poll(timeout_ms=20)

    def stop_generators(self) -> None:
        for gid in self.generators:
            self.endpoint.send(gid, Stop(reason="run finished"))

    def close(self) -> None:
        self._stepper.shutdown(wait=True)
        self._snapshotter.shutdown(wait=True)
        for link in self.links.values():
            link.close()
        self.metrics.close()
        self.endpoint.close()

    def counters(self) -> dict:
        d = self.dispatcher
        return {"dispatched": d.dispatched, **dict(d.outcomes), "open": d.open,
                "in_flight": d.outstanding(), "buffered": len(self.buffer),
                "rejected_frames": dict(self.endpoint.rejected.counts),
                "rejected_rollouts": dict(self.rejected_rollouts),
                "weights_verified": self.stats.weights_verified,
                "weights_mismatch": self.stats.weights_mismatch,
                "probe_max_diff": self.stats.probe_max_diff,
                "checkpoint_failures": self.checkpoint_failures, "generator_restarts": self.restarts}
