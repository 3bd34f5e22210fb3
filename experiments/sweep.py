"""`run.py sweep --grid FILE`: train every cell of a grid of config values, then report each figure as
mean and 95 % confidence interval over seeds (experiments/report.py).

A grid file (TOML), paths relative to it:

    base = ["../default.toml"]            # the config files every cell starts from, merged in order
    [fixed]                               # overrides shared by every cell
    "learner.steps" = 60
    [axes]                                # the cartesian product of these is the grid
    "learner.max_lag" = [0, 2, 4]
    "schedule.ts" = [0.0, 0.05]
    "run.seed" = [0, 1, 2]                # the seed axis: the report averages over it
    preset = ["../algos/dapo.toml", "../algos/erpo.toml"]   # config files layered on `base`

Every cell runs under exact lag control unless the grid says otherwise (`SWEEP_DEFAULTS`). Cells
run one after another (`--parallel N` runs N at once where cores allow). A cell whose run
folder holds `summary.json` is finished and is not run again, so a stopped sweep resumes where it
stopped; a cell that fails is reported (its log kept) and the sweep goes on.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import itertools
import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import ConfigError
from pipeline.launcher import RUN_PY
from pipeline.rundir import finished

SEED_AXIS = "run.seed"
PRESET_AXIS = "preset"


@dataclass(frozen=True)
class Cell:
    values: tuple[tuple[str, object], ...]  # (axis, value) in the grid's axis order

    @property
    def name(self) -> str:
        """A readable, file-safe, unique folder name."""
        text = ",".join(f"{k.split('.')[-1]}={Path(str(v)).stem if k == PRESET_AXIS else v}" for k, v in self.values)
        safe = re.sub(r"[^A-Za-z0-9=,._-]", "_", text)
        return f"{safe}-{hashlib.sha1(repr(self.values).encode()).hexdigest()[:6]}"

    def group(self) -> tuple[tuple[str, object], ...]:
        """What the report averages over seeds: every axis but the seed."""
        return tuple((k, v) for k, v in self.values if k != SEED_AXIS)


@dataclass
class Grid:
    path: Path
    base: list[Path]
    fixed: dict[str, object]
    axes: dict[str, list]

    def cells(self) -> list[Cell]:
        keys = list(self.axes)
        return [Cell(tuple(zip(keys, combo))) for combo in itertools.product(*(self.axes[k] for k in keys))]


def read_grid(path: Path) -> Grid:
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"sweep grid {path}: {exc}") from None
    axes = raw.get("axes")
    if not isinstance(axes, dict) or not axes or not all(isinstance(v, list) and v for v in axes.values()):
        raise ConfigError(f"sweep grid {path}: [axes] must map config fields to non-empty lists of values")
    base = [path.parent / b for b in raw.get("base", [])]
    if PRESET_AXIS in axes:
        axes[PRESET_AXIS] = [str(path.parent / p) for p in axes[PRESET_AXIS]]
    for f in base + [Path(p) for p in axes.get(PRESET_AXIS, [])]:
        if not f.is_file():
            raise ConfigError(f"sweep grid {path}: no such config file {f}")
    return Grid(path, base, dict(raw.get("fixed", {})), axes)


def _override(key: str, value) -> list[str]:
    return [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]


# A sweep studies what its axes vary, so lag is a controlled variable in it (learner/orchestration/exact.py), not a
# timing accident of the machine's load; a grid may still set "learner.lag_control" = "bounded".
SWEEP_DEFAULTS = ["--learner.lag_control", "exact"]


def cell_command(grid: Grid, cell: Cell, out: Path, extra: list[str]) -> list[str]:
    configs = [str(p) for p in grid.base] + [str(v) for k, v in cell.values if k == PRESET_AXIS]
    args = SWEEP_DEFAULTS + [a for k, v in grid.fixed.items() for a in _override(k, v)]
    args += [a for k, v in cell.values if k != PRESET_AXIS for a in _override(k, v)]
    return [sys.executable, str(RUN_PY), "train", "--config", *configs, *args, "--run.out_dir", str(out),
            "--run.name", cell.name, "--log.progress", "false", "--log.wandb", "false",
            "--resume", "auto", *extra]  # a cell that failed midway continues from its checkpoint


def run_sweep(grid_file: Path, out_dir: Path, parallel: int = 1, extra: list[str] | None = None,
              progress: bool = True) -> tuple[list[Cell], dict[str, str]]:
    """Run every unfinished cell; returns the cells and the failed ones (name -> reason)."""
    from tqdm import tqdm

    grid = read_grid(grid_file)
    cells_dir = out_dir / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    cells = grid.cells()
    (out_dir / "grid.json").write_text(json.dumps(
        {"grid": str(grid_file), "cells": [{"name": c.name, "values": dict(c.values)} for c in cells]}, indent=1))
    todo = [c for c in cells if not finished(cells_dir / c.name)]
    failed: dict[str, str] = {}

    def run(cell: Cell) -> tuple[Cell, int]:
        (cells_dir / cell.name).mkdir(exist_ok=True)
        with open(cells_dir / cell.name / "train.log", "w") as log:
            rc = subprocess.run(cell_command(grid, cell, cells_dir, extra or []), stdout=log,
                                stderr=subprocess.STDOUT).returncode
        return cell, rc

    with tqdm(total=len(cells), initial=len(cells) - len(todo), desc="sweep cells", disable=not progress) as bar, \
            concurrent.futures.ThreadPoolExecutor(max_workers=max(parallel, 1)) as pool:
        for cell, rc in map(lambda f: f.result(), concurrent.futures.as_completed([pool.submit(run, c) for c in todo])):
            if rc != 0 or not finished(cells_dir / cell.name):
                failed[cell.name] = f"exit {rc}; see {cells_dir / cell.name / 'train.log'}"
                print(f"[sweep] cell {cell.name} failed ({failed[cell.name]}); going on", flush=True)
            bar.update(1)
    (out_dir / "failures.json").write_text(json.dumps(failed, indent=1))
    return cells, failed
