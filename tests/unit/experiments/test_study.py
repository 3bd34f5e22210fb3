"""`run.py study`'s grid: the four presets x seeds on the embedded task with its tuned warm start, or
on a task of its own (`--config`), which keeps its own warm start and prompts."""

import pytest

from experiments.sweep import read_grid
from experiments.study import ALGORITHMS, TASK, study_grid
from tests.conftest import ROOT

pytestmark = pytest.mark.unit


def test_the_embedded_task_gets_its_tuned_warm_start_and_a_task_of_its_own_keeps_its_settings(tmp_path):
    embedded = read_grid(study_grid(tmp_path / "a", 5))
    assert embedded.base == [TASK.resolve()] and embedded.fixed["warmstart.steps"] == 350
    assert embedded.fixed["data.size"] == 128 and embedded.fixed["learner.sample_budget"] == 12800
    traces = ROOT / "configs" / "tasks" / "traces.toml"
    own = read_grid(study_grid(tmp_path / "b", 5, traces))
    assert own.base == [traces.resolve()] and "warmstart.steps" not in own.fixed and "data.size" not in own.fixed
    assert len(own.cells()) == len(ALGORITHMS) * 5 and own.axes["run.seed"] == [0, 1, 2, 3, 4]
