"""scripts/slurm-train.sbatch, checked without Slurm: a dry run prints what each node would run, and
the training command's configuration resolves (run.py train --dry-run) with the ports and hosts the
generator commands use."""

import json
import os
import re
import shlex
import subprocess
import sys

from tests.conftest import ROOT


def test_slurm_dry_run_commands_resolve_and_agree(tiny_model, tmp_path):
    env = dict(os.environ, DRY_RUN="1", NODES="node-a node-b node-c", TRAIN_NODES="1", GPUS_PER_NODE="2",
               PY=sys.executable, RUN_DIR=str(tmp_path / "job"), PORT="30000")
    out = subprocess.run(["bash", str(ROOT / "scripts" / "slurm-train.sbatch"), "configs/gpu/erpo-qwen2.5-3b.toml",
                          tiny_model], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    train = [line for line in lines if " run.py train " in line]
    generate = [line for line in lines if " run.py generate " in line]
    assert len(train) == 1 and train[0].startswith("[node-a]") and "--node-rank 0" in train[0]
    assert "--resume auto" in train[0]  # a requeued job continues its run, never overwrites it
    assert len(generate) == 4 and {line.split("]")[0] for line in generate} == {"[node-b", "[node-c"}
    ids = [int(re.search(r"--generator-id (\d+)", line).group(1)) for line in generate]
    assert sorted(ids) == [0, 1, 2, 3]
    # the training command's configuration resolves, and names the ports and host the generators dial
    args = shlex.split(train[0].split("run.py train ", 1)[1])
    resolved = subprocess.run([sys.executable, str(ROOT / "run.py"), "train", *args, "--dry-run"],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert resolved.returncode == 0, resolved.stderr[-2000:]
    cfg = json.loads(resolved.stdout)
    t = cfg["transport"]
    assert t["host"] == "node-a" and t["curve_dir"].endswith("job/keys")  # beyond loopback: authenticated
    assert cfg["generator"]["count"] == 0 and cfg["learner"]["updates_per_batch"] == 16
    for line in generate:
        assert f"--control-port {t['control_port']}" in line and f"--rollout-port {t['rollout_port']}" in line
        assert "--host 'node-a'" in line and str(tmp_path / "job" / "generator.json") in line
    # each step asks for its own GPUs, cores and memory, so steps side by side on a node neither
    # serialise nor see no GPU
    assert all("--exact" in line and "--gpus-per-task" in line and "--mem-per-gpu" in line for line in lines)


def test_slurm_gives_each_engine_its_tensor_parallel_gpus(tiny_model, tmp_path):
    env = dict(os.environ, DRY_RUN="1", NODES="node-a node-b", TRAIN_NODES="1", GPUS_PER_NODE="4",
               PY=sys.executable, RUN_DIR=str(tmp_path / "job"))
    cmd = ["bash", str(ROOT / "scripts" / "slurm-train.sbatch"), "configs/gpu/erpo-qwen2.5-7b.toml", tiny_model]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    generate = [line for line in out.stdout.splitlines() if " run.py generate " in line]
    assert len(generate) == 2 and all("--gpus-per-task 2 " in line for line in generate)  # TP pairs
    odd = subprocess.run(cmd, capture_output=True, text=True, env={**env, "GPUS_PER_NODE": "3"}, cwd=ROOT, timeout=60)
    assert odd.returncode == 2 and "tensor_parallel_size=2" in odd.stderr
