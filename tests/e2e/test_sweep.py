"""One real sweep cell, end to end."""

import subprocess
import sys

from tests.conftest import MODEL_SEED, ROOT, TEST_CACHE


DEFAULT = ROOT / "configs" / "default.toml"


def test_one_real_cell_end_to_end(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text(f'base = ["{DEFAULT}", "{ROOT / "configs/algos/erpo.toml"}"]\n[fixed]\n"learner.steps" = 3\n'
                    f'"eval.size" = 8\n"run.cache_dir" = "{TEST_CACHE}"\n'
                    + (f'"warmstart.seed" = {MODEL_SEED}\n' if MODEL_SEED else "") + '[axes]\n"learner.max_lag" = [1]\n"run.seed" = [0]\n')
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), "sweep", "--grid", str(grid), "--out",
                          str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "1 of 1 cells finished" in out.stdout and "| max_lag=1 | 1 |" in out.stdout
    assert (tmp_path / "out" / "report.md").exists()
