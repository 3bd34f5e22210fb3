"""Checkpoint folders: which one a `train` starts from, so that no run folder is overwritten or mixed."""

import pytest

from learner.checkpoint import start_from
from pipeline.config import ConfigError


def _run_with_checkpoints(tmp_path, *steps: int):
    run = tmp_path / "run"
    for step in steps:
        (run / "checkpoints" / f"step-{step:08d}").mkdir(parents=True)
        (run / "checkpoints" / f"step-{step:08d}" / "state.json").write_text("{}")
    return run


def test_a_fresh_run_into_a_folder_holding_a_run_is_refused_naming_the_way_out(tmp_path):
    run = _run_with_checkpoints(tmp_path, 20, 40)
    with pytest.raises(ConfigError, match=r"step-00000040.*--resume.*--run.name"):
        start_from(run, None)
    assert start_from(run, "") == run / "checkpoints" / "step-00000040"
    assert start_from(run, "auto") == run / "checkpoints" / "step-00000040"
    assert start_from(run, str(run / "checkpoints" / "step-00000020")).name == "step-00000020"
    assert start_from(tmp_path / "new", None) is None  # a new folder: a fresh run


def test_auto_starts_afresh_where_there_is_no_checkpoint_keeping_what_was_there(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(ConfigError, match="left no checkpoint"):
        start_from(run, None)  # its metrics would be mixed with the new run's
    assert start_from(run, "auto") is None
    assert not (run / "metrics.jsonl").exists()
    assert (run / "metrics.before-restart-1.jsonl").read_text() == '{"step": 1}\n'
