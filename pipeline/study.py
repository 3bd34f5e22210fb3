"""`run.py study`: GRPO, DAPO, ERPO and RL-ZVP from the same warm start at the same sample budget.

Each algorithm is `run.py train --config configs/default.toml configs/algos/<name>.toml` plus the study's shared overrides,
run one after another (they would only fight over the cores), then `pipeline.report` draws the report.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from pipeline.launcher import RUN_PY
from pipeline.report import write_report

ALGORITHMS = ["grpo", "dapo", "erpo", "rlzvp"]
CONFIGS = RUN_PY.parent / "configs" / "algos"  # algorithm presets: algorithm settings only
TASK = RUN_PY.parent / "configs" / "default.toml"  # the task, model and lengths they run on

# A warm start strong enough that many prompts are residual at T = 1 (the regime ERPO targets), few
# enough prompts that each is visited often enough for H_i to grow, and one generation budget for all.
STUDY_OVERRIDES = [
    "--warmstart.steps", "600", "--data.size", "128", "--learner.steps", "100000",
    "--learner.sample_budget", "12800", "--eval.size", "256", "--eval.k", "4", "--eval.final", "true",
    "--log.progress", "false",
]


def run_study(out_dir: Path, overrides: list[str], algorithms: list[str] = ALGORITHMS) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in algorithms:
        config = CONFIGS / f"{name}.toml"
        cmd = [sys.executable, str(RUN_PY), "train", "--config", str(TASK), str(config), *STUDY_OVERRIDES,
               "--run.out_dir", str(out_dir), "--run.name", name,
               "--run.cache_dir", str(out_dir.parent / "cache"), *overrides]
        t0 = time.monotonic()
        print(f"[study] {name}: training ...", flush=True)
        with open(out_dir / f"{name}.log", "w") as log:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
        (out_dir / f"{name}.out").write_text(proc.stdout)
        if proc.returncode != 0:
            raise RuntimeError(f"study run {name} failed (exit {proc.returncode}); see {out_dir / (name + '.log')}")
        result = re.findall(r"^RESULT .*$", proc.stdout, re.M)
        print(f"[study] {name}: {time.monotonic() - t0:.0f}s  {result[-1] if result else ''}", flush=True)
    summaries, result = write_report(out_dir, algorithms)
    print((out_dir / "report.md").read_text())
    print(f"report: {out_dir / 'report.md'}, plots: {out_dir / 'study.png'}")
    return result
