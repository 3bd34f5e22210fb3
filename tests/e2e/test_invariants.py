"""docs/design.md §3's invariants pinned end to end on the real pipeline (learner, a vLLM generator process,
ZeroMQ, gloo), observed through the learner's events (learner/observe/events.py), which only record: ERPO's temperature path from the tracker to the trained
batch, asynchrony, in-flight updates, and the dropped-filtered and failed outcomes of a real run."""

import copy
import dataclasses
import json

import pytest
import torch
import zmq

from learner.observe.events import BatchBuilt, Leased, StepStarted
from learner.session import open_learner
from learner.training.advantages import Outcome
from learner.training.trainer import Trainer
from learner.training.warmstart import prepare_model
from learner.orchestration.schedule import temperature
from pipeline.data import load_problems
from pipeline.messages import Rollout, Sample, encode, pack_floats, pack_ids
from tests.conftest import assert_every_lease_accounted_for, make_config, run_pipeline


class Recorder:
    """An observer (learner/observe/events.py) that records what the learner shows: every lease with its
    prompt's H at that moment, every step's groups with what the tracker's schedule says for their
    prompts by then, and every batch as the trainer trains it. Optionally it scores the rows sampled
    above T = 1 with the weights that generated them (kept per version), at the row's temperature."""

    def __init__(self, learner=None, checker=None, schedule=None):
        self.learner, self.checker, self.schedule = learner, checker, schedule
        self.leased = []  # (lease id, H at lease time, temperature leased)
        self.steps = []
        self.weights = {}
        self.gaps_hot = []  # |learner log-prob - mu| on rows sampled above T = 1

    def __call__(self, event) -> None:
        if isinstance(event, Leased):
            a = event.assignment
            self.leased.append((a.lease_id, event.h, a.temperature))
        elif isinstance(event, StepStarted):
            tracker = self.learner.tracker if self.learner is not None else None
            self.steps.append({"version": event.version,
                               "groups": [(g.lease_id, g.temperature, g.prompt_id, g.token_versions) for g in event.groups],
                               "schedule_now": {g.lease_id: temperature(tracker.h(g.prompt_id), self.schedule)
                                                for g in event.groups} if tracker and self.schedule else {}})
        elif isinstance(event, BatchBuilt):
            b = event.batch
            self.steps[-1].update(temperature=b.temperature.tolist(), group=b.group.tolist(),
                                  token_lag=[row[m.bool()].tolist() for row, m in zip(b.token_lag, b.response_mask)])
            if self.checker is not None:
                self._score(event.version, b)

    def _score(self, v: int, batch) -> None:
        self.weights[v] = copy.deepcopy(self.learner.trainer.model.state_dict())
        for gen_version in set((v - batch.lag).tolist()):
            # (drain mode: all tokens of a sample share its generation version)
            rows = ((v - batch.lag == gen_version) & (batch.temperature > 1.0)).nonzero().flatten()
            if len(rows) and gen_version in self.weights:
                self.checker.model.load_state_dict(self.weights[gen_version])
                sub = batch.select(rows)
                with torch.no_grad():
                    lp = self.checker.logprobs(sub)
                mask = sub.response_mask.bool()
                self.gaps_hot.append(float((lp - sub.mu)[mask].abs().max()))


def test_erpo_temperature_path_asynchrony_and_every_outcome(tiny_model, tmp_path):
    """Few prompts, so they come back: leases go out above T0 at exactly the schedule of the
    tracker's H; the trainer uses each rollout's recorded T even when the tracker has moved on (a
    group's own visit moves its prompt's H before it trains); the learner's log-probs at that T match
    vLLM's (prox_mu_gap at lag 0); samples train at lag >= 1 (the loop is asynchronous); dynamic
    sampling drops groups, counted; a bad rollout for an open lease closes it as failed.

    Each case is built, not hoped for from the tiny model's numerics: two prompts have a gold answer
    longer than any response (all-wrong, so dynamic sampling drops them), the other six start with
    H = 2 (leased above T0), and with `tracker.reset_on_mixed` any trained visit of theirs (mixed:
    H back to 0; all-correct: H = 3) moves H between its lease and its step."""
    cfg = make_config(tmp_path, "--data.size", "8", "--learner.group_size", "4", "--learner.groups_per_step", "4",
                      "--learner.steps", "12", "--learner.max_lag", "2", "--schedule.ts", "0.1", "--schedule.tmax", "3.0",
                      "--ra.enabled", "true", "--dapo.dynamic_sampling", "true", "--eval.final", "false",
                      "--learner.checkpoint_every", "0", "--tracker.reset_on_mixed", "true")
    cfg.run_dir.mkdir(parents=True)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    recorder = Recorder(checker=Trainer.from_config(cfg, tiny_model), schedule=cfg.schedule)

    def observe(event):
        recorder(event)
        if isinstance(event, Leased) and len(recorder.leased) == 5:
            # one bad rollout (too few samples) for this open lease, ahead of the real one
            a = event.assignment
            bad = Sample(tokens=pack_ids([5]), logprobs=pack_floats([-0.1]), reward=1.0, version_first=0,
                         version_last=0, finish_reason="stop")
            push.send(encode(Rollout(lease_id=a.lease_id, generator_id=0, prompt_id=a.prompt_id, epoch=a.epoch,
                                     temperature=a.temperature, prompt_tokens=a.prompt_tokens, samples=[bad],
                                     gen_seconds=0.0, verify_seconds=0.0)))

    problems = load_problems(cfg.data)
    unreachable = "1" * (cfg.generator.max_tokens + 2)  # a character tokenizer: no response can say it
    problems[:2] = [dataclasses.replace(p, answer=unreachable) for p in problems[:2]]
    learner = open_learner(cfg, tiny_model, problems, observer=observe)
    for prompt_id in range(2, len(problems)):
        for _ in range(2):
            learner.tracker.record_visit(prompt_id, Outcome.POSITIVE, 1.0, cfg.schedule.t0, 0)
    recorder.learner = learner
    recorder.weights[0] = copy.deepcopy(learner.trainer.model.state_dict())
    push.connect(learner.endpoint.addresses.rollouts())
    try:
        stats = run_pipeline(learner, cfg)
    finally:
        push.close(0)
        ctx.term()
    leased, seen, gaps_hot = recorder.leased, recorder.steps, recorder.gaps_hot

    # leases: at the tracker's schedule, above T0 for the prompts with H > 0
    assert all(t == temperature(h, cfg.schedule) for _, h, t in leased)
    assert max(t for _, _, t in leased) > cfg.schedule.t0
    by_lease = {lid: t for lid, _, t in leased}
    # the trained batch: each row at its group's recorded temperature, which is the leased one
    for s in seen:
        temps = {lid: t for lid, t, _, _ in s["groups"]}
        assert temps == {lid: by_lease[lid] for lid in temps}
        order = [lid for lid, *_ in s["groups"]]
        assert s["temperature"] == pytest.approx([temps[order[g]] for g in s["group"]])  # float32 rows
    # the tracker moved on for some trained groups (their prompts' H grew after the lease): each of
    # their rows still trains at the temperature recorded on the rollout, not the schedule's now
    moved = [(s, lid) for s in seen for lid, t, _, _ in s["groups"] if s["schedule_now"][lid] != pytest.approx(t)]
    assert moved
    for s, lid in moved:
        order = [x for x, *_ in s["groups"]]
        rows = [i for i, g in enumerate(s["group"]) if order[g] == lid]
        assert rows and all(s["temperature"][i] == pytest.approx(by_lease[lid]) for i in rows)
    # the learner's log-probs at each row's recorded T, with the weights that generated it, are vLLM's
    # mu, on rows sampled above T = 1 (a learner at T = 1 misses them by ~1e-1)
    assert len(gaps_hot) > 0 and max(gaps_hot) < 1e-3, gaps_hot
    gaps = [m["prox_mu_gap/lag0"] for m in map(json.loads, (cfg.run_dir / "metrics.jsonl").read_text().splitlines())
            if "prox_mu_gap/lag0" in m]
    assert gaps and max(gaps) < 1e-3
    # asynchronous: samples trained on weights newer than those that generated them
    assert sum(n for lag, n in stats.lag_hist.items() if lag >= 1) > 0
    # every outcome in one real run, and the identity holds
    d = learner.leases
    assert d.outcomes["dropped_filtered"] > 0 and d.outcomes["failed"] == 1 and d.failures["bad_rollout"] == 1
    assert learner.intake.rejected["unknown_lease"] >= 1  # the real rollout of the failed lease, rejected
    assert_every_lease_accounted_for(learner)


def test_inflight_updates_train_samples_that_span_two_versions(tmp_path):
    """With in-flight updates some trained sample's tokens were sampled under two weight versions,
    and the learner's per-token lags for it are the trained version minus each token's version
    (in drain mode no sample spans two versions)."""
    # The tiny model without its warm start writes until max_tokens (its answers would end after 2-4
    # tokens), so every update finds requests mid-generation: the learner, which trains on 2 of the
    # 8 groups in flight, always waits on the generator. With the warm-started model a loaded
    # machine once let the generator finish all it held before each version came: no sample spanned
    # two. Leases over-provisioned (max_open_groups) for the same reason. This run once crashed the
    # generator at each such update: its probe ran `generate` over the streaming requests
    # (actors/engine.py, `probe`); the restarts hid it. max_lag 8, not 3: once (1 suite run of 5,
    # 2026-12-08) no sample spanned two versions, as if lag control's bound had left the generator
    # nothing queued whenever a version came; a looser bound keeps work leased ahead of it.
    untrained = prepare_model(make_config(tmp_path / "model", "--warmstart.enabled", "false"), progress=False)
    cfg = make_config(tmp_path, "--learner.steps", "30", "--learner.groups_per_step", "2", "--learner.group_size", "16",
                      "--learner.max_lag", "8", "--learner.max_open_groups", "32", "--generator.max_inflight", "8",
                      "--generator.max_tokens", "32", "--generator.update_mode", "inflight", "--eval.final", "false",
                      "--learner.checkpoint_every", "0")
    cfg.run_dir.mkdir(parents=True)
    recorder = Recorder()
    learner = open_learner(cfg, untrained, load_problems(cfg.data), observer=recorder)
    stats = run_pipeline(learner, cfg)
    seen = recorder.steps
    spanning = 0
    for s in seen:
        row = 0
        for _, _, _, versions in s["groups"]:
            for tv in versions:
                lags = s["token_lag"][row]
                assert lags == [s["version"] - v for v in tv.tolist()]
                spanning += len(set(tv.tolist())) > 1
                row += 1
    assert spanning > 0
    assert stats.weights_mismatch == 0 and stats.trained_lags_max <= cfg.learner.max_lag
    assert learner.supervisor.restarts == 0  # the generator never died (an update mid-generation once killed it)
    assert_every_lease_accounted_for(learner)
