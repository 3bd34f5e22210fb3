"""Faults on the real pipeline: checkpoint + resume, SIGTERM, a flood of malformed frames, a full disk."""

import errno
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import zmq

from learner import checkpoint
from learner.loop import Learner
from pipeline.data import load_problems
from tests.conftest import ROOT, TEST_CACHE, balanced, make_config, run_pipeline


def test_resume_restores_tracker_cursor_and_counters_exactly(tiny_model, tmp_path):
    common = ["--learner.groups_per_step", "4", "--learner.checkpoint_every", "3", "--eval.final", "false"]
    cfg = make_config(tmp_path, "--learner.steps", "6", *common)
    cfg.run_dir.mkdir(parents=True)
    first = Learner(cfg, tiny_model, load_problems(cfg.data))
    run_pipeline(first, cfg)
    ckpt = checkpoint.resolve(cfg.run_dir)
    assert ckpt.name == "step-00000006"
    saved, _ = checkpoint.load_state(ckpt)

    cfg2 = make_config(tmp_path, "--learner.steps", "9", *common)
    second = Learner(cfg2, tiny_model, load_problems(cfg2.data), resume=ckpt)
    # the restored state is exactly what was saved
    assert second.trainer.version == 6 == saved["version"]
    assert second.tracker.state_dict() == saved["tracker"]
    assert (second.dispatcher.epoch, second.dispatcher.cursor) == (saved["dispatcher"]["epoch"],
                                                                   saved["dispatcher"]["cursor"])
    assert second.dispatcher.dispatched == first.dispatcher.dispatched
    assert second.dispatcher.outcomes["trained"] == first.dispatcher.outcomes["trained"] == 24
    # leases out at the generator at the checkpoint are re-issued; groups already back are restored
    assert len(second.buffer) == len(saved["buffer"]) == len(saved["dispatcher"]["returned_leases"]) \
        == second.dispatcher.open
    assert second.dispatcher.outcomes["reissued"] == len(second.dispatcher.requeue)
    assert balanced(second)
    # the model weights are the checkpoint's
    assert second.trainer.probe_logprobs() == pytest.approx(first.trainer.probe_logprobs(), abs=1e-6)
    visited_before = {i for i, p in enumerate(second.tracker.prompts) if p.visits}
    stats = run_pipeline(second, cfg2)
    assert second.trainer.version == 9 and len(stats.step_rewards) == 9
    assert stats.weights_mismatch == 0 and stats.weights_verified >= 1  # the generator started from the checkpoint
    assert balanced(second)
    # no prompt is visited twice within an epoch across the restart (256 prompts: all in epoch 0)
    assert second.dispatcher.epoch == 0
    assert max(p.visits for p in second.tracker.prompts) == 1
    assert visited_before <= {i for i, p in enumerate(second.tracker.prompts) if p.visits}


def test_full_disk_during_checkpoint_keeps_the_previous_one(tiny_model, tmp_path, monkeypatch):
    import torch

    from pipeline.models import load_causal_lm

    model = load_causal_lm(tiny_model, "float32")
    opt = torch.optim.AdamW(model.parameters())
    root = tmp_path / "ckpts"
    good = checkpoint.save(root, 1, model, opt.state_dict(), {"version": 1}, tiny_model, keep=2)

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", disk_full)
    with pytest.raises(checkpoint.CheckpointError, match="No space left.*step-00000001 is intact"):
        checkpoint.save(root, 2, model, opt.state_dict(), {"version": 2}, tiny_model, keep=2)
    assert checkpoint.list_checkpoints(root) == [good]
    assert not any(p.name.endswith(".tmp") for p in root.iterdir())
    assert checkpoint.load_state(good)[0]["version"] == 1


def test_sigterm_checkpoints_and_exits_cleanly(tmp_path):
    cmd = [sys.executable, str(ROOT / "run.py"), "train", "--learner.steps", "100000",
           "--run.out_dir", str(tmp_path), "--run.cache_dir", str(TEST_CACHE), "--run.name", "sig",
           "--log.wandb", "false", "--log.progress", "false", "--learner.checkpoint_every", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    metrics = tmp_path / "sig" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (not metrics.exists() or metrics.read_text().count("\n") < 3):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.5)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "no generator process was running"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert time.monotonic() - t0 < 60
    assert "stopped on request" in out
    assert checkpoint.resolve(tmp_path / "sig").name.startswith("step-")
    time.sleep(0.5)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def test_run_survives_a_flood_of_malformed_frames(tiny_model, tmp_path):
    cfg = make_config(tmp_path, "--learner.steps", "6", "--learner.groups_per_step", "4", "--eval.final", "false")
    cfg.run_dir.mkdir(parents=True)
    learner = Learner(cfg, tiny_model, load_problems(cfg.data))
    addrs = learner.endpoint.addresses
    sent = {"n": 0}

    def flood():
        ctx = zmq.Context()
        push, dealer = ctx.socket(zmq.PUSH), ctx.socket(zmq.DEALER)
        push.connect(addrs.rollouts())
        dealer.connect(addrs.control())
        rng = __import__("random").Random(0)
        for i in range(1000):
            junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
            push.send(junk)
            dealer.send(junk)
            sent["n"] += 2
            time.sleep(0.002)
        push.close(1000), dealer.close(1000), ctx.term()

    t = threading.Thread(target=flood)
    t.start()
    stats = run_pipeline(learner, cfg)
    t.join()
    assert len(stats.step_rewards) == 6 and stats.weights_mismatch == 0
    assert balanced(learner)
    assert learner.dispatcher.outcomes["trained"] == 24
    # every junk frame that reached the learner before it closed was rejected and counted
    assert 0 < learner.endpoint.rejected.total <= sent["n"] == 2000


def test_training_survives_generator_kills(tiny_model, tmp_path):
    """SIGKILL the generator mid-run, three times at random points: it is restarted with the current
    weights, its leases are re-issued, training completes, and nothing is lost from the accounting."""
    import random

    steps = 14
    cfg = make_config(tmp_path, "--learner.steps", str(steps), "--learner.groups_per_step", "4",
                      "--eval.final", "false", "--learner.checkpoint_every", "0")
    cfg.run_dir.mkdir(parents=True)
    learner = Learner(cfg, tiny_model, load_problems(cfg.data))
    rng = random.Random(7)
    kills = []

    def generator_procs():
        return [p for p in psutil.Process().children(recursive=True)
                if "generate" in " ".join(p.cmdline())]

    def holding_leases() -> bool:
        try:
            return learner.dispatcher.outstanding() > 0
        except RuntimeError:  # the lease table changed under this thread's read: look again
            return False

    def killer():
        for _ in range(3):
            target = learner.trainer.version + 2
            deadline = time.monotonic() + 240
            while learner.trainer.version < target and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 0.3))  # a random point: mid-batch, mid-update or idle
            busy_by = time.monotonic() + 10  # ... but holding leases, so there is something to re-issue
            while not holding_leases() and time.monotonic() < busy_by:
                time.sleep(0.002)
            procs = generator_procs()
            if not procs or learner.trainer.version >= steps - 1:
                return
            for p in procs:
                p.kill()
            kills.append(learner.trainer.version)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    stats = run_pipeline(learner, cfg)
    t.join(timeout=5)
    assert len(kills) >= 2, kills
    assert learner.supervisor.restarts == len(kills)
    assert learner.trainer.version == steps and len(stats.step_rewards) == steps
    assert learner.dispatcher.outcomes["reissued"] > 0
    assert balanced(learner)
    assert stats.weights_mismatch == 0
    assert stats.trained_lags_max <= cfg.learner.max_lag
    # the restarted generator received the current weights (verified by its probe) before training went on
    assert stats.weights_verified >= len(kills) + 1
