"""Sweep grids, resumption and reports, with a test double for the training command."""

import json
import subprocess

import pytest

from experiments import sweep
from pipeline.config import ConfigError
from pipeline.rundir import RunSummary, write_summary
from experiments.report import mean_ci, write_sweep_report
from tests.conftest import ROOT


DEFAULT = ROOT / "configs" / "default.toml"


def _grid(tmp_path, axes: str, fixed: str = "") -> object:
    path = tmp_path / "grid.toml"
    path.write_text(f'base = ["{DEFAULT}"]\n[fixed]\n{fixed}\n[axes]\n{axes}\n')
    return path


def _fake_cell(run_dir, seed: int, max_lag: int, residual: list[float], heldout: float, lags: dict,
               by_h: dict | None = None, cut_by_h: dict | None = None):
    """What a finished `run.py train` leaves: metrics.jsonl and summary.json (a test double's)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"step": i + 1, "loss": 0.0, "residual_frac": r, "ess": 0.9, "truncated_frac": 0.01, "entropy": 1.0,
             "reward": 0.5, "prox_mu_gap/lag0": 1e-6} for i, r in enumerate(residual)]
    rows.append({"step": len(residual), "eval/mean_at_k": heldout, "eval/pass_at_k": heldout + 0.1})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_summary(run_dir, RunSummary(stats={"lag_hist": {str(k): v for k, v in lags.items()},
                                             "cut_by_h": cut_by_h or {}}, counters={},
                                      config={"learner": {"max_lag": max_lag}}, result="",
                                      lease_outcomes={"by_h": by_h or {}}))


def test_grid_cells_are_the_cartesian_product_with_unique_names(tmp_path):
    g = sweep.read_grid(_grid(tmp_path, '"learner.max_lag" = [0, 2, 4]\n"schedule.ts" = [0.0, 0.05]\n'
                                        '"run.seed" = [0, 1]\npreset = ["' + str(ROOT / "configs/algos/erpo.toml") + '"]',
                              '"learner.steps" = 7'))
    cells = g.cells()
    assert len(cells) == 12 and len({c.name for c in cells}) == 12
    cmd = sweep.cell_command(g, cells[0], tmp_path / "out", [])
    assert cmd[cmd.index("--config") + 1:cmd.index("--config") + 3] == [str(DEFAULT), str(ROOT / "configs/algos/erpo.toml")]
    assert "--learner.steps" in cmd and cmd[cmd.index("--learner.steps") + 1] == "7"
    assert cmd[cmd.index("--learner.max_lag") + 1] == "0" and cmd[cmd.index("--run.name") + 1] == cells[0].name
    assert cells[0].group() == (("learner.max_lag", 0), ("schedule.ts", 0.0), ("preset", str(ROOT / "configs/algos/erpo.toml")))


def test_bad_grids_name_what_is_wrong(tmp_path):
    with pytest.raises(ConfigError, match=r"\[axes\]"):
        sweep.read_grid(_grid(tmp_path, ""))
    with pytest.raises(ConfigError, match="no such config file"):
        sweep.read_grid(_grid(tmp_path, 'preset = ["nope.toml"]'))


def test_sweep_resumes_and_reports_failed_cells_and_goes_on(tmp_path, monkeypatch):
    grid = _grid(tmp_path, '"learner.max_lag" = [0, 4]\n"run.seed" = [0, 1]')
    out = tmp_path / "out"
    ran = []

    def fake_run(cmd, stdout, stderr):  # a training run: one cell fails, the others finish
        name = cmd[cmd.index("--run.name") + 1]
        ran.append(name)
        lag, seed = int(cmd[cmd.index("--learner.max_lag") + 1]), int(cmd[cmd.index("--run.seed") + 1])
        if lag == 4 and seed == 1 and ran.count(name) == 1:
            return subprocess.CompletedProcess(cmd, 3)
        _fake_cell(out / "cells" / name, seed, lag, [0.1 + 0.1 * seed, 0.2 + 0.1 * seed], 0.5 + 0.1 * seed,
                   {0: 10, 1: 6} if lag else {0: 16})
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(sweep.subprocess, "run", fake_run)
    cells, failed = sweep.run_sweep(grid, out, progress=False)
    assert len(ran) == 4 and len(failed) == 1 and "exit 3" in next(iter(failed.values()))
    cells, failed = sweep.run_sweep(grid, out, progress=False)  # resumes: only the failed cell runs again
    assert len(ran) == 5 and failed == {}
    table, stats = write_sweep_report(out)
    m, ci = stats["max_lag=0"]["heldout_mean"]
    assert (m, ci) == pytest.approx(mean_ci([0.5, 0.6]))
    assert m == pytest.approx(0.55) and ci == pytest.approx(12.706 * 0.0707107 / 2 ** 0.5, rel=1e-4)
    assert "| max_lag=4 | 2 |" in table
    assert "max_lag=4: asked for max_lag 4, trained at lag 1 at most" in table  # the lag really reached
    assert (out / "sweep.png").stat().st_size > 0


def test_the_report_gives_erpos_effect_over_ts_zero_at_each_other_setting(tmp_path, monkeypatch):
    grid = _grid(tmp_path, '"learner.max_lag" = [0, 4]\n"schedule.ts" = [0.0, 0.1]\n"run.seed" = [0, 1]')
    out = tmp_path / "out"

    def fake_run(cmd, stdout, stderr):  # Ts = 0.1 scores 0.1 higher at lag 0 and the same at lag 4
        name = cmd[cmd.index("--run.name") + 1]
        lag, seed = int(cmd[cmd.index("--learner.max_lag") + 1]), int(cmd[cmd.index("--run.seed") + 1])
        ts = float(cmd[cmd.index("--schedule.ts") + 1])
        acc = 0.5 + 0.01 * seed + (0.1 if ts and not lag else 0.0)
        _fake_cell(out / "cells" / name, seed, lag, [0.1, 0.2], acc, {0: 16})
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(sweep.subprocess, "run", fake_run)
    sweep.run_sweep(grid, out, progress=False)
    table, _ = write_sweep_report(out)
    assert "- max_lag=0, ts=0.1: +0.100 ± 0.090 (beyond the interval)" in table
    assert "- max_lag=4, ts=0.1: +0.000 ± 0.090 (within the interval)" in table


def test_the_report_gives_drop_and_cut_shares_by_h(tmp_path, monkeypatch):
    grid = _grid(tmp_path, '"learner.max_lag" = [1]\n"run.seed" = [0, 1]')
    out = tmp_path / "out"

    def fake_run(cmd, stdout, stderr):  # easy prompts (H 3+) go stale more often at seed 1 than at seed 0
        name = cmd[cmd.index("--run.name") + 1]
        seed = int(cmd[cmd.index("--run.seed") + 1])
        by_h = {"0": {"trained": 8, "dropped_filtered": 2, "failed": 5},
                "3+": {"trained": 6 - 2 * seed, "dropped_stale": 2 + 2 * seed}}
        _fake_cell(out / "cells" / name, seed, 1, [0.1, 0.2], 0.5, {0: 16}, by_h,
                   {"0": [1.0, 100.0], "3+": [3.0, 100.0]})
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(sweep.subprocess, "run", fake_run)
    sweep.run_sweep(grid, out, progress=False)
    table, _ = write_sweep_report(out)
    # H 0: none stale, 2 of 10 filtered (failed leases brought no group back), 1 % cut; H 3+: (2 + 4) / 2 / 8 stale
    assert "| max_lag=1 | 0.000 / 0.200 / 0.010 | 0.375 / 0.000 / 0.030 |" in table


def test_every_shipped_grid_gives_cells_whose_configs_load():
    """A typo in a grid's field or value would surface only when its cell runs, minutes in."""
    from experiments.sweep import PRESET_AXIS, SWEEP_DEFAULTS, _override, read_grid
    from pipeline.config import load
    from tests.conftest import ROOT

    grids = sorted((ROOT / "configs" / "sweeps").glob("*.toml"))
    assert grids
    for path in grids:
        grid = read_grid(path)
        for cell in grid.cells():
            files = [*grid.base, *(v for k, v in cell.values if k == PRESET_AXIS)]
            args = SWEEP_DEFAULTS + [a for k, v in [*grid.fixed.items(), *cell.values] if k != PRESET_AXIS
                                     for a in _override(k, v)]
            load(files, args)  # raises, naming the field, on any bad setting
