"""Crash consistency: a checkpoint is a cut between two steps, a checkpoint proves its weights, and a
dead learner leaves no generator behind (issue 13)."""

import re
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import torch
from safetensors.torch import load_file

from learner.training import checkpoint
from learner.orchestration.leases import LeaseIdentityError
from learner.session import open_learner
from pipeline.data import load_problems
from tests.doubles import SlowStepTrainer
from tests.conftest import ROOT, CACHE_ARGS, assert_every_lease_accounted_for, make_config, run_pipeline


def _generator_procs(run_dir) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"])
            if p.info["cmdline"] and "generate" in p.info["cmdline"] and str(run_dir) in " ".join(p.info["cmdline"])]


def test_a_checkpoint_is_a_cut_between_steps_and_resume_loses_no_lease(tiny_model, tmp_path):
    common = ["--learner.groups_per_step", "4", "--learner.checkpoint_every", "2", "--learner.max_lag", "2",
              "--eval.final", "false", "--learner.keep_checkpoints", "10"]
    cfg = make_config(tmp_path, "--learner.steps", "6", *common)
    cfg.run_dir.mkdir(parents=True)
    trainer = SlowStepTrainer.slow(cfg, tiny_model, delay_s=0.3)
    first = open_learner(cfg, tiny_model, load_problems(cfg.data), trainer=trainer)
    run_pipeline(first, cfg)
    ckpts = checkpoint.list_checkpoints(cfg.run_dir / "checkpoints")
    assert [c.name for c in ckpts] == ["step-00000002", "step-00000004", "step-00000006"]
    for ckpt in ckpts:
        state, _ = checkpoint.load_state(ckpt)
        version = int(ckpt.name.split("-")[1])
        assert state["version"] == version
        # the weights are exactly those after step `version`, not a step that was running
        saved = load_file(ckpt / "model.safetensors")
        after = trainer.after[version]
        for name, t in saved.items():
            assert torch.equal(t, after[name]), (ckpt.name, name)
        # every lease the checkpoint holds as returned has its group saved in the buffer, and the
        # buffer holds nothing else: no group of a running step was half-saved
        returned = sorted(lease[0] for lease in state["leases"]["returned_leases"])
        assert returned == sorted(g["lease_id"] for g in state["buffer"]), ckpt.name

    mid = ckpts[1]
    saved, _ = checkpoint.load_state(mid)
    cfg2 = make_config(tmp_path, "--learner.steps", "10", *common)
    second = open_learner(cfg2, tiny_model, load_problems(cfg2.data), resume=mid)
    stats = run_pipeline(second, cfg2)  # checks the lease identity at every checkpoint and at the end
    assert second.trainer.version == 10 and stats.weights_mismatch == 0
    assert_every_lease_accounted_for(second)
    # every visit that was back at the checkpoint was trained or dropped by the end, none left open
    assert not {lease[0] for lease in saved["leases"]["returned_leases"]} & set(second.leases.leases)
    d = second.leases.outcomes
    assert d["trained"] == 10 * 4


def test_lease_identity_violation_names_the_leases(tiny_model, tmp_path):
    cfg = make_config(tmp_path)
    cfg.run_dir.mkdir(parents=True)
    learner = open_learner(cfg, tiny_model, load_problems(cfg.data))
    try:
        a = learner.leases.lease(0, 0)
        b = learner.leases.lease(0, 0)
        learner.leases.returned(a.lease_id)
        learner.leases.returned(b.lease_id)  # back, but its group is in neither buffer nor step
        with pytest.raises(LeaseIdentityError, match=rf"no group anywhere \[{a.lease_id}, {b.lease_id}\]"):
            learner.check_leases()
        with pytest.raises(LeaseIdentityError):
            learner.checkpoint()  # a checkpoint refuses to save a run that has lost leases
        assert checkpoint.list_checkpoints(cfg.run_dir / "checkpoints") == []
    finally:
        learner.close()


def test_a_checkpoint_whose_weights_were_swapped_is_refused(tiny_model, tmp_path):
    common = ["--learner.groups_per_step", "4", "--learner.checkpoint_every", "2", "--eval.final", "false",
              "--learner.keep_checkpoints", "5"]
    cfg = make_config(tmp_path, "--learner.steps", "4", *common)
    cfg.run_dir.mkdir(parents=True)
    run_pipeline(open_learner(cfg, tiny_model, load_problems(cfg.data)), cfg)
    two, four = checkpoint.list_checkpoints(cfg.run_dir / "checkpoints")
    # the model of step 2 under the state of step 4: the probe recorded at step 4 must catch it
    (four / "model.safetensors").write_bytes((two / "model.safetensors").read_bytes())
    with pytest.raises(checkpoint.CheckpointError, match="step-00000004.*probe"):
        open_learner(make_config(tmp_path, "--learner.steps", "6", *common), tiny_model, load_problems(cfg.data),
                resume=four)


def test_sigkill_of_the_learner_leaves_no_generator_and_resume_completes(tmp_path):
    args = [sys.executable, str(ROOT / "run.py"), "train", "--run.out_dir", str(tmp_path),
            *CACHE_ARGS, "--run.name", "killed", "--log.wandb", "false",
            "--log.progress", "false", "--learner.checkpoint_every", "3", "--learner.groups_per_step", "4",
            "--eval.final", "false"]
    run_dir = tmp_path / "killed"
    learner = subprocess.Popen([*args, "--learner.steps", "100000"], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "checkpoints" / "step-00000006").exists():
            assert learner.poll() is None and time.monotonic() < deadline, "no second checkpoint"
            time.sleep(0.1)
        assert _generator_procs(run_dir), "the learner's generator should be running"
        learner.send_signal(signal.SIGKILL)
        learner.wait(10)
        gone_by = time.monotonic() + 30
        while _generator_procs(run_dir) and time.monotonic() < gone_by:
            time.sleep(0.2)
        assert _generator_procs(run_dir) == [], "a generator outlived its learner"
    finally:
        if learner.poll() is None:
            learner.kill()
        for p in _generator_procs(run_dir):
            p.kill()
    ckpt = checkpoint.resolve(run_dir)
    version = int(ckpt.name.split("-")[1])
    out = subprocess.run([*args, "--learner.steps", str(version + 4), "--resume"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(rf"RESULT steps={version + 4} ", out.stdout), out.stdout[-2000:]
    assert "'weights_mismatch': 0" in out.stdout
    assert _generator_procs(run_dir) == []


def test_a_generator_whose_learner_is_silent_exits_by_itself(tiny_model, tmp_path):
    """No word from the learner for generator.learner_timeout_s: the generator leaves, releasing its engine."""
    from actors.generator import Generator
    from pipeline.config import GeneratorSettings
    from actors.standin import StandInEngine
    from learner.weights.links import await_generator
    from pipeline.transport import LearnerEndpoint

    cfg = make_config(tmp_path, "--generator.learner_timeout_s", "1.5")
    ep = LearnerEndpoint("127.0.0.1", 0, 0, cfg.transport.max_frame_bytes)
    link = None
    try:
        def generate():
            Generator(GeneratorSettings.of(cfg), 0, ep.addresses, tiny_model, engine=StandInEngine(tiny_model, delay_s=0.1)).run()

        thread = threading.Thread(target=generate, daemon=True)
        thread.start()
        link = await_generator(ep, 0)  # the test's learner answers its start, then never again
        thread.join(60)  # the generator must end its loop by itself
        assert not thread.is_alive()
        statuses = [m.status for m in ep.recv(200) if hasattr(m, "status")]
        assert statuses and statuses[-1] == "stopping"
    finally:
        if link is not None:
            link.close()
        ep.close()
