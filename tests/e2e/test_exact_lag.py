"""Exact lag control (learner/orchestration/exact.py) on the real pipeline: two runs of one config and seed, one of
them with its generators paused again and again (SIGSTOP / SIGCONT), train the same token ids at the
same temperatures with the same rewards, behaviour log-probs and losses, step by step; and every
group of step t was generated under version t - k."""

import json
import random
import signal
import threading

import psutil
import torch

from learner.observe.events import BatchBuilt, StepStarted
from learner.training.advantages import Outcome
from learner.session import open_learner
from pipeline.data import load_problems
from tests.conftest import ROOT, assert_every_lease_accounted_for, make_config, run_pipeline
from tests.e2e.killer import Killer

STEPS, K = 20, 1


class Pauser:
    """Stops the generator processes for random spells while the run goes on, so that groups arrive
    at other times and in another order than in an undisturbed run."""

    def __init__(self, seed: int):
        self.rng, self.done, self.spells = random.Random(seed), threading.Event(), 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.done.is_set():
            gens = Killer.generators()
            for p in gens:
                try:
                    p.send_signal(signal.SIGSTOP)
                except psutil.Error:
                    pass
            self.done.wait(self.rng.uniform(0.05, 0.4))
            for p in gens:
                try:
                    p.send_signal(signal.SIGCONT)
                except psutil.Error:
                    pass
            self.spells += bool(gens)
            self.done.wait(self.rng.uniform(0.05, 0.3))

    def __enter__(self) -> "Pauser":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join(timeout=10)


def _run(tiny_model, tmp_path, name: str, paused: bool) -> tuple[list[dict], list[float], object]:
    cfg = make_config(tmp_path / name, "--learner.lag_control", "exact", "--learner.max_lag", str(K), "--learner.steps", str(STEPS),
                      "--learner.groups_per_step", "4", "--generator.count", "2", "--data.size", "24",
                      "--eval.final", "false", "--learner.checkpoint_every", "0",
                      presets=(ROOT / "configs" / "algos" / "erpo.toml",))
    cfg.run_dir.mkdir(parents=True)
    steps: list[dict] = []

    def observe(event) -> None:
        if isinstance(event, StepStarted):
            steps.append({"version": event.version, "lags": [g.lag(event.version) for g in event.groups]})
        elif isinstance(event, BatchBuilt):
            b = event.batch
            steps[-1].update(tokens=[row[m.bool()].tolist() for row, m in zip(b.input_ids, b.attention_mask)],
                             temperature=b.temperature.tolist(), adv=b.adv, mu=b.mu)

    learner = open_learner(cfg, tiny_model, load_problems(cfg.data), observer=observe)
    # residual by construction, not by the tiny model's luck: every third prompt starts as if it had
    # come back all-correct twice (H = 2), so ERPO's schedule leases it hot whatever the numerics
    for prompt_id in range(0, len(learner.tracker), 3):
        for _ in range(2):
            learner.tracker.record_visit(prompt_id, Outcome.POSITIVE, 1.0, cfg.schedule.t0, 0)
    if paused:
        with Pauser(seed=1) as pauser:
            run_pipeline(learner, cfg)
        assert pauser.spells >= 5, "the generators were hardly paused: the two runs were not disturbed apart"
    else:
        run_pipeline(learner, cfg)
    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    # the residual share (of the wave's groups, in lease order) is part of what must not move with timing
    return steps, [(r["loss"], r["residual_frac"]) for r in rows if "loss" in r], learner


def test_exact_lag_trains_the_same_run_whatever_the_timing(tiny_model, tmp_path):
    calm, calm_curve, first = _run(tiny_model, tmp_path, "calm", paused=False)
    busy, busy_curve, second = _run(tiny_model, tmp_path, "paused", paused=True)
    assert len(calm) == len(busy) == STEPS and len(calm_curve) == len(busy_curve) == STEPS
    for t, (a, b) in enumerate(zip(calm, busy)):
        # every group of step t was generated under version t - k (the first k steps under version 0)
        assert a["lags"] == [min(t, K)] * len(a["lags"]) and b["lags"] == a["lags"], t
        assert a["tokens"] == b["tokens"], f"step {t}: other token ids trained"
        assert a["temperature"] == b["temperature"], f"step {t}: other temperatures"
        assert torch.equal(a["adv"], b["adv"]), f"step {t}: other rewards"
        assert torch.equal(a["mu"], b["mu"]), f"step {t}: other behaviour log-probs"
    assert calm_curve == busy_curve  # (loss, residual share) step by step
    # the tracker saw the same visits in the same order
    assert [p.h for p in first.tracker.prompts] == [p.h for p in second.tracker.prompts]
    # ERPO's schedule moved: the tracker's path is in the run (the hot prompts above, and whatever the
    # run's own visits made residual)
    assert any(t > 1.0 for s in calm for t in s["temperature"])
    assert_every_lease_accounted_for(second)
