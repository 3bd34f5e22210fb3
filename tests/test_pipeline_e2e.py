"""The real pipeline: learner in this process, a vLLM generator process, ZeroMQ, gloo broadcast."""

import os
import signal
import re
import subprocess
import sys
import threading
import time

import psutil
import pytest

from learner.loop import Learner
from pipeline.data import load_problems
from tests.conftest import ROOT, TEST_CACHE, balanced, make_config, run_pipeline


def _run(cfg, model):
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    learner = Learner(cfg, model, load_problems(cfg.data))
    return learner, run_pipeline(learner, cfg)


def test_async_run_versions_lag_and_accounting(tiny_model, tmp_path):
    cfg = make_config(tmp_path, "--learner.steps", "6", "--learner.groups_per_step", "4",
                      "--learner.max_lag", "1")
    learner, stats = _run(cfg, tiny_model)
    assert len(stats.step_rewards) == 6 and learner.trainer.version == 6
    # versions strictly increase, and every announced version reached the engine intact
    assert stats.versions_announced == sorted(set(stats.versions_announced))
    assert stats.versions_announced[-1] == 6
    assert stats.weights_mismatch == 0 and stats.weights_verified >= 2
    assert stats.version_regressions == 0
    assert stats.trained_lags_max <= 1
    assert learner.dispatcher.outcomes["trained"] == 6 * 4
    assert balanced(learner)
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
    assert learner.dispatcher.outcomes["dropped_stale"] > 0
    assert balanced(learner)


def test_train_command_prints_summary_and_leaves_no_processes(tmp_path):
    cmd = [sys.executable, str(ROOT / "run.py"), "train", "--learner.steps", "4",
           "--run.out_dir", str(tmp_path), "--run.cache_dir", str(TEST_CACHE), "--run.name", "cli",
           "--log.wandb", "false"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"RESULT steps=(\d+) samples=(\d+) reward_first=([\d.]+) reward_last=([\d.]+) "
                     r"residual_frac=([\d.]+) mean_temp=([\d.]+) samples_per_s=([\d.]+)", last)
    assert m, last
    assert int(m.group(1)) == 4 and int(m.group(2)) == 4 * 8 * 8
    assert 1.0 <= float(m.group(6)) <= 1.2
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
    assert balanced(learner)


def test_inflight_update_mode_end_to_end(tiny_model, tmp_path):
    cfg = make_config(tmp_path, "--learner.steps", "5", "--learner.groups_per_step", "4",
                      "--generator.update_mode", "inflight", "--eval.final", "false")
    learner, stats = _run(cfg, tiny_model)
    assert len(stats.step_rewards) == 5
    assert stats.weights_mismatch == 0 and stats.weights_verified >= 2
    assert stats.trained_lags_max <= cfg.learner.max_lag  # lag counted from each sample's oldest token
    assert balanced(learner)


def test_dispatch_leases_only_what_can_be_trained_within_max_lag(tiny_model, tmp_path):
    """A lease is trained B per step behind the open ones, under the newest weights its generator was
    handed; the dispatcher stops where the next lease would exceed max_lag (it would only be dropped
    as stale, wasting generation), and a generator whose weights are too old gets none."""
    from types import SimpleNamespace

    from learner.loop import GeneratorInfo

    cfg = make_config(tmp_path, "--generator.max_inflight", "100", "--learner.max_lag", "2",
                      "--learner.groups_per_step", "8")
    cfg.run_dir.mkdir(parents=True)
    learner = Learner(cfg, tiny_model, load_problems(cfg.data))

    def dispatch(trainer_version: int, handed: int, reported: int, in_step: int = 0) -> int:
        learner.trainer.version = trainer_version
        learner.generators[0] = GeneratorInfo(status="ready", version=reported)
        learner.links[0] = SimpleNamespace(group=object(), version=handed)
        learner._pending = (None, [None] * in_step) if in_step else None
        before = learner.dispatcher.open
        learner._dispatch()
        return learner.dispatcher.open - before

    try:
        learner.endpoint.send = lambda gid, msg: True
        learner._first_rollout_at = 0.0
        # generator up to date, nothing open: three steps' worth (versions 5, 6, 7: lag <= 2)
        assert dispatch(5, handed=5, reported=4) == 24
        learner.dispatcher.expire(now=float("inf"))
        # weights handed are one behind: only the next two steps can take its groups in time
        assert dispatch(5, handed=4, reported=4) == 16
        learner.dispatcher.expire(now=float("inf"))
        # a step is running on 8 open leases: the soonest a new lease trains is at version 6
        for _ in range(8):
            learner.dispatcher.lease(0, 5)
        assert dispatch(5, handed=4, reported=4, in_step=8) == 8
        # weights three behind that soonest step: nothing it makes could be trained in time
        assert dispatch(5, handed=3, reported=3, in_step=8) == 0
    finally:
        learner.links, learner._pending = {}, None
        learner.close()


def lease_split(tiny_model, tmp_path, measured: dict[int, tuple[int, float]], leases: int = 40):
    """How `leases` leases are spread over joined, ready generators with (groups returned, busy seconds)."""
    from collections import Counter
    from types import SimpleNamespace

    from learner.loop import GeneratorInfo

    cfg = make_config(tmp_path, "--generator.count", str(len(measured)), "--generator.max_inflight", "100",
                      "--learner.max_open_groups", str(leases))
    cfg.run_dir.mkdir(parents=True)
    learner = Learner(cfg, tiny_model, load_problems(cfg.data))
    try:
        for gid, (groups, busy_s) in measured.items():
            learner.generators[gid] = GeneratorInfo(status="ready", busy_s=busy_s)
            learner.links[gid] = SimpleNamespace(group=object(), version=-1)
            learner.stats.rollouts_by_generator[gid] = groups
        sent = []
        learner.endpoint.send = lambda gid, msg: sent.append(gid) or True
        learner._dispatch()
        assert len(sent) == leases == learner.dispatcher.open
        return Counter(sent)
    finally:
        learner.links = {}
        learner.close()


def test_dispatch_balances_leases_by_measured_throughput(tiny_model, tmp_path):
    counts = lease_split(tiny_model, tmp_path, {0: (300, 10.0), 1: (100, 10.0)})  # generator 0 is 3x faster
    assert counts[0] == pytest.approx(30, abs=1) and counts[1] == pytest.approx(10, abs=1)


def test_a_newcomer_is_leased_to_beside_a_fast_generator(tiny_model, tmp_path):
    """A generator with nothing measured yet starts at the pool's rate. (With a fixed prior of one
    group per second, a newcomer beside an engine doing 100 never won a lease, so was never measured.)"""
    counts = lease_split(tiny_model, tmp_path / "a", {0: (1000, 10.0), 7: (0, 0.0)})
    assert counts[7] == pytest.approx(20, abs=2)
    # Learner-bound, few leases free up at a time. A newcomer measured while it ran one group at a
    # time (so slow per busy second) still gets one lease while it is idle; it is not starved.
    counts = lease_split(tiny_model, tmp_path / "b", {0: (1000, 10.0), 7: (6, 1.7)}, leases=8)
    assert counts[7] >= 1


def test_a_generator_joins_and_leaves_a_running_run(tiny_model, tmp_path):
    """`run.py generate` started by hand (as on another node) while a run goes on: the learner gives
    it a weight group and the newest weights, it is leased to and its groups are trained; on SIGTERM
    it leaves cleanly, its leases are re-issued, and the run goes on without it (not a restart)."""
    cfg = make_config(tmp_path, "--learner.steps", "100000", "--eval.final", "false",
                      "--learner.checkpoint_every", "0")
    cfg.run_dir.mkdir(parents=True)
    learner = Learner(cfg, tiny_model, load_problems(cfg.data))
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
                 "--model-path", learner.model_path], stdout=log, stderr=subprocess.STDOUT)
            seen["joined_at"] = learner.trainer.version
            if wait(lambda: learner.stats.rollouts_by_generator[7] >= 20, "the joiner's rollouts"):
                seen["checked"] = learner.generators[7].checked
            proc.send_signal(signal.SIGTERM)
            seen["rc"] = proc.wait(60)
            if wait(lambda: 7 not in learner.links, "the joiner to be let go", 30):
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
    assert learner.restarts == 0 and 7 not in learner.links and 7 not in learner.generators
    assert balanced(learner)
