"""The real pipeline: learner in this process, a vLLM generator process, ZeroMQ, gloo broadcast."""

import json
import signal
import re
import subprocess
import sys
import threading
import time

import psutil

from learner.session import open_learner
from pipeline.data import load_problems
from tests.conftest import ROOT, CACHE_ARGS, assert_every_lease_accounted_for, make_config, run_pipeline


def _run(cfg, model):
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    learner = open_learner(cfg, model, load_problems(cfg.data))
    return learner, run_pipeline(learner, cfg)


def test_async_run_versions_lag_and_accounting(tiny_model, tmp_path):
    cfg = make_config(tmp_path, "--learner.steps", "6", "--learner.groups_per_step", "4",
                      "--learner.max_lag", "1")
    learner, stats = _run(cfg, tiny_model)
    assert len(stats.step_rewards) == 6 and learner.trainer.version == 6
    # versions strictly increase, and every announced version reached the engine intact
    assert learner.weights.published == sorted(set(learner.weights.published))
    assert learner.weights.published[-1] == 6
    assert stats.weights_mismatch == 0 and stats.weights_verified >= 2
    assert stats.version_regressions == 0
    assert stats.trained_lags_max <= 1
    assert learner.leases.outcomes["trained"] == 6 * 4
    assert_every_lease_accounted_for(learner)
    lines = (cfg.run_dir / "metrics.jsonl").read_text().splitlines()
    assert sum('"loss"' in line for line in lines) == 6
    # the final held-out round ran through the generator on the final weights
    (step, result), = stats.evals
    assert step == 6 and result["problems"] == cfg.eval.size and result["k"] == cfg.eval.k
    assert 0.0 < result["mean_at_k"] <= result["pass_at_k"] <= 1.0


def test_stale_samples_are_dropped_and_counted_never_trained(tiny_model, tmp_path):
    # over-provision leases with max_lag = 0: groups generated under an older version must be dropped
    cfg = make_config(tmp_path, "--learner.steps", "5", "--learner.groups_per_step", "2",
                      "--learner.max_lag", "0", "--learner.max_open_groups", "12",
                      "--generator.max_inflight", "12")
    learner, stats = _run(cfg, tiny_model)
    assert stats.trained_lags_max == 0
    assert set(stats.lag_hist) == {0}
    assert learner.leases.outcomes["dropped_stale"] > 0
    assert_every_lease_accounted_for(learner)


def test_train_command_prints_summary_and_leaves_no_processes(tmp_path):
    cmd = [sys.executable, str(ROOT / "run.py"), "train", "--learner.steps", "4",
           "--run.out_dir", str(tmp_path), *CACHE_ARGS, "--run.name", "cli",
           "--log.wandb", "false"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"RESULT steps=(\d+) samples=(\d+) reward_first=([\d.]+) reward_last=([\d.]+) "
                     r"residual_frac=([\d.]+) mean_temp=([\d.]+) samples_per_s=([\d.]+)", last)
    assert m, last
    assert int(m.group(1)) == 4 and int(m.group(2)) == 4 * 8 * 8
    assert 1.0 <= float(m.group(6)) <= 1.2
    # the mechanism's figures are in the summary, and the run left its machine-readable summary
    assert re.search(r"residual share of arriving groups: first quarter [\d.]+ -> last quarter [\d.]+", out.stdout)
    assert re.search(r"leased temperatures: min [\d.]+ / median [\d.]+ / max [\d.]+ +groups leased above T0 \d+",
                     out.stdout)
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["result"] == last and summary["counters"]["weights_mismatch"] == 0
    leftovers = [p for p in psutil.process_iter(["cmdline"])
                 if p.info["cmdline"] and "generate" in p.info["cmdline"]
                 and str(tmp_path) in " ".join(p.info["cmdline"])]
    assert leftovers == []


def test_two_generator_processes_share_the_work(tiny_model, tmp_path):
    cfg = make_config(tmp_path, "--learner.steps", "5", "--learner.groups_per_step", "4",
                      "--generator.count", "2", "--generator.max_inflight", "4", "--eval.final", "false")
    learner, stats = _run(cfg, tiny_model)
    assert set(stats.rollouts_by_generator) == {0, 1}  # both engines sampled
    assert stats.weights_mismatch == 0 and stats.version_regressions == 0
    assert stats.weights_verified >= 2 * 2  # every broadcast version checked on each engine (v0 and the last at least)
    assert stats.trained_lags_max <= cfg.learner.max_lag
    assert_every_lease_accounted_for(learner)


def test_inflight_update_mode_end_to_end(tiny_model, tmp_path):
    cfg = make_config(tmp_path, "--learner.steps", "5", "--learner.groups_per_step", "4",
                      "--generator.update_mode", "inflight", "--eval.final", "false")
    learner, stats = _run(cfg, tiny_model)
    assert len(stats.step_rewards) == 5
    assert stats.weights_mismatch == 0 and stats.weights_verified >= 2
    assert learner.supervisor.restarts == 0
    assert stats.trained_lags_max <= cfg.learner.max_lag  # lag counted from each sample's oldest token
    assert_every_lease_accounted_for(learner)


def test_a_generator_joins_and_leaves_a_running_run(tiny_model, tmp_path):
    """`run.py generate` started by hand (as on another node) while a run goes on: the learner gives
    it a weight group and the newest weights, it is leased to and its groups are trained; on SIGTERM
    it leaves cleanly, its leases are re-issued, and the run goes on without it (not a restart)."""
    cfg = make_config(tmp_path, "--learner.steps", "100000", "--eval.final", "false",
                      "--learner.checkpoint_every", "0")
    cfg.run_dir.mkdir(parents=True)
    learner = open_learner(cfg, tiny_model, load_problems(cfg.data))
    seen: dict = {}

    def wait(cond, what, timeout=240.0):
        end = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > end:
                seen["timeout"] = what
                return False
            time.sleep(0.05)
        return True

    def by_hand():
        try:
            if not wait(lambda: learner.trainer.version >= 3, "training to start"):
                return
            a = learner.endpoint.addresses
            log = open(cfg.run_dir / "joiner.log", "wb")
            proc = subprocess.Popen(
                [sys.executable, str(ROOT / "run.py"), "generate", "--config-json",
                 str(cfg.run_dir / "resolved_config.json"), "--generator-id", "7", "--host", a.host,
                 "--control-port", str(a.control_port), "--rollout-port", str(a.rollout_port),
                 "--model-path", tiny_model], stdout=log, stderr=subprocess.STDOUT)
            seen["joined_at"] = learner.trainer.version
            if wait(lambda: learner.stats.rollouts_by_generator[7] >= 20, "the joiner's rollouts"):
                seen["checked"] = learner.weights.checked.get(7, -1)
            proc.send_signal(signal.SIGTERM)
            seen["rc"] = proc.wait(60)
            if wait(lambda: 7 not in learner.supervisor.joined, "the joiner to be let go", 30):
                v = learner.trainer.version
                wait(lambda: learner.trainer.version >= v + 3, "training to go on without it", 60)
        finally:
            learner.stop_requested = True

    t = threading.Thread(target=by_hand, daemon=True)
    t.start()
    stats = run_pipeline(learner, cfg)
    t.join(10)
    assert "timeout" not in seen, (seen, (cfg.run_dir / "joiner.log").read_text()[-3000:])
    assert seen["rc"] == 0  # SIGTERM is a clean leave
    assert stats.rollouts_by_generator[7] >= 20 and stats.rollouts_by_generator[0] > 0
    assert seen["checked"] >= seen["joined_at"]  # it got the newest weights, not its model folder's
    assert stats.weights_mismatch == 0
    assert learner.supervisor.restarts == 0 and 7 not in learner.supervisor.joined and 7 not in learner.supervisor.generators
    assert_every_lease_accounted_for(learner)
