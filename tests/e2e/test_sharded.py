"""The learner's model sharded over two training processes (FSDP2 under torchrun, gloo on CPU)."""

import json
import os
import subprocess
import sys

import pytest

from pipeline.config import dumps
from tests.conftest import ROOT, make_config


def _torchrun(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


@pytest.mark.parametrize("split,quiet_s", [
    (["--learner.group_timeout_s", "20"], 45), (["--learner.micro_batch_tokens", "24", "--learner.updates_per_batch", "2"], 0)],
    ids=["one-piece-and-a-quiet-spell", "packed-micro-batches-and-2-updates"])
def test_sharded_step_is_the_one_device_step(tiny_model, tmp_path, split, quiet_s):
    """Two steps on the same groups: the sharded weights, gradient norm, probe, and the gathered
    checkpoint state (model and optimizer, numbered like one device's) match the one-device trainer.
    A sharded trainer resumed from that checkpoint takes the third step as the one-device one does
    (which needs Adam's moments back in every shard). In the first case rank 0 falls quiet for more
    than twice the group's timeout between the steps, speaking only through its keep-alive."""
    cfg = make_config(tmp_path, *split)
    (tmp_path / "cfg.json").write_text(dumps(cfg))
    out = tmp_path / "out.json"
    r = _torchrun(str(ROOT / "tests" / "scripts" / "sharded_step.py"), str(tmp_path / "cfg.json"),
                  tiny_model, str(out), str(quiet_s))
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["version"] == 2 and res["moved"] > 1e-4  # the steps changed the weights ...
    assert res["weights"] < 1e-5 and res["state"] < 1e-5  # ... exactly as on one device
    assert res["probe"] < 1e-4 and res["optim"] < 1e-6 and res["param_groups"]
    assert res["grad_norm"][0] == pytest.approx(res["grad_norm"][1], rel=1e-4)
    assert res["resumed"] < 1e-5


def test_train_under_torchrun_resume_under_torchrun_then_on_one_device(tiny_model, tmp_path):
    """`run.py train` under torchrun: rank 0 runs the learner with a real generator, rank 1 follows;
    every broadcast version passes the probe check. Its checkpoint (gathered from the shards)
    resumes under torchrun, and that one's on one training device."""
    common = ["--run.out_dir", str(tmp_path), "--run.cache_dir", str(ROOT / "runs" / "test-cache"),
              "--run.name", "run", "--log.wandb", "false", "--log.progress", "false", "--eval.final", "false",
              "--learner.checkpoint_every", "0"]
    r = _torchrun(str(ROOT / "run.py"), "train", "--learner.steps", "4", *common)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    assert "'weights_mismatch': 0" in r.stdout and "RESULT steps=4" in r.stdout
    verified = int(r.stdout.split("'weights_verified': ")[1].split(",")[0])
    assert verified >= 2  # the gathered weights reached the engine intact, more than once
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000004"
    assert (ckpt / "trainer" / "optimizer.safetensors").exists()
    again = _torchrun(str(ROOT / "run.py"), "train", "--resume", str(ckpt), "--learner.steps", "6", *common)
    assert again.returncode == 0, (again.stdout[-2000:], again.stderr[-3000:])
    assert "RESULT steps=6" in again.stdout and "'weights_mismatch': 0" in again.stdout
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000006"
    one = subprocess.run([sys.executable, str(ROOT / "run.py"), "train", "--resume", str(ckpt),
                          "--learner.steps", "8", *common], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "RESULT steps=8" in one.stdout and "'weights_mismatch': 0" in one.stdout
