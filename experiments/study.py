"""`run.py study`: GRPO, DAPO, ERPO and RL-ZVP at the same sample budget, over several seeds.

A sweep (experiments/sweep.py) over the four presets x seeds on the embedded task, or on a task of
its own (`--config configs/tasks/traces.toml`): each cell is `run.py train --config TASK
configs/algos/<name>.toml` plus the study's overrides.
The report gives every figure as mean ± 95 % interval over seeds and says whether ERPO's residual
share and accuracy differ from DAPO's beyond them.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.launcher import RUN_PY
from experiments.sweep import run_sweep
from experiments.report import grouped, write_sweep_report

ALGORITHMS = ["grpo", "dapo", "erpo", "rlzvp"]
CONFIGS = RUN_PY.parent / "configs" / "algos"  # algorithm presets: algorithm settings only
TASK = RUN_PY.parent / "configs" / "default.toml"  # the task, model and lengths they run on

# On the embedded task: a warm start that leaves headroom (held-out mean@4 about 0.57 at step 0, where
# a 600-step one saturated the task at 0.9+ so that no accuracy effect could show) while a share of
# prompts is residual at T = 1 (the regime ERPO targets); few enough prompts that each is visited
# often enough for H_i to grow. A task of its own (`--config`) sets these itself.
EMBEDDED_TASK_OVERRIDES = ["--warmstart.steps", "350", "--warmstart.seed", "0", "--data.size", "128"]
# Every study: one generation budget for all (unless the task sets its own), held-out accuracy at
# step 0 and at the end.
STUDY_OVERRIDES = [
    "--learner.steps", "100000", "--eval.size", "256", "--eval.k", "4", "--eval.first", "true",
    "--eval.final", "true", "--log.progress", "false",
]
SAMPLE_BUDGET = ["--learner.sample_budget", "12800"]


def study_grid(out_dir: Path, seeds: int, task: Path = TASK) -> Path:
    """The study as a sweep grid: the four presets x `seeds` seeds on `task` (a config file)."""
    from pipeline import config as config_mod

    overrides = list(STUDY_OVERRIDES)
    if Path(task).resolve() == TASK.resolve():
        overrides = EMBEDDED_TASK_OVERRIDES + overrides
    if not config_mod.load([str(task)], []).learner.sample_budget:
        overrides += SAMPLE_BUDGET
    lines = [f'base = ["{Path(task).resolve()}"]', "[fixed]"]
    it = iter(overrides)
    lines += [f'"{k.lstrip("-")}" = {v if v.replace(".", "").isdigit() or v in ("true", "false") else json.dumps(v)}'
              for k, v in zip(it, it)]
    lines += ["[axes]", f'preset = {json.dumps([str(CONFIGS / (a + ".toml")) for a in ALGORITHMS])}',
              f'"run.seed" = {list(range(seeds))}']
    path = out_dir / "study-grid.toml"
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def run_study(out_dir: Path, overrides: list[str], algorithms: list[str] = ALGORITHMS, seeds: int = 3,
              parallel: int = 1, task: Path = TASK) -> str:
    """GRPO, DAPO, ERPO and RL-ZVP over `seeds` seeds on `task` (experiments/sweep.py), with 95 % intervals."""
    grid = study_grid(out_dir, seeds, task)
    cells, failed = run_sweep(grid, out_dir, parallel, overrides)
    return study_report(out_dir, algorithms, seeds)


def study_report(out_dir: Path, algorithms: list[str] = ALGORITHMS, seeds: int = 3) -> str:
    table, stats = write_sweep_report(out_dir, "Residual-prompt study: GRPO, DAPO, ERPO, RL-ZVP")
    by = {label.split("preset=")[1].split(",")[0]: figs for label, figs in stats.items()}

    def differ(key: str) -> str:
        (a, ca), (b, cb) = by["erpo"][key], by["dapo"][key]
        verdict = "differ beyond" if abs(a - b) > ca + cb else "do not differ beyond"
        return f"ERPO {a:.3f} ± {ca:.3f} vs DAPO {b:.3f} ± {cb:.3f}: they {verdict} their 95 % intervals"

    if "erpo" in by and "dapo" in by:
        verdicts = ["", "## ERPO against DAPO", "",
                    f"- residual share, last quarter: {differ('residual_late')}",
                    f"- held-out mean@k: {differ('heldout_mean')}",
                    f"- held-out pass@k: {differ('heldout_pass')}", ""]
        with open(out_dir / "report.md", "a") as f:
            f.write("\n".join(verdicts))
    print((out_dir / "report.md").read_text())
    n = min(len(v) for v in grouped(out_dir).values())
    present = [a for a in algorithms if a in by]
    return "RESULT " + " ".join(
        [f"{a}_residual={by[a]['residual_late'][0]:.4f}" for a in present]
        + [f"{a}_acc={by[a]['heldout_mean'][0]:.4f}" for a in present]
        + [f"{a}_acc_start={by[a]['heldout_start'][0]:.4f}" for a in present]
        + [f"{a}_acc_ci={by[a]['heldout_mean'][1]:.4f}" for a in present]
        + [f"{a}_pass={by[a]['heldout_pass'][0]:.4f}" for a in present] + [f"seeds={n}"]
        + [f"mean_response_tokens={sum(by[a]['response_tokens'][0] for a in present) / max(len(present), 1):.1f}"])
