"""Checkpoint folders: which one a `train` starts from, so that no run folder is overwritten or mixed;
and the writer that puts them on disk behind the learner's loop."""

import errno
import threading

import pytest

from learner.training.checkpoint import CheckpointError, Writer, list_checkpoints, load_state
from pipeline.rundir import start_from
from learner.training.trainer import Trainer
from pipeline.config import ConfigError
from tests.conftest import make_config


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


class _BlockedSave:
    """A test double for the model's `save_pretrained` that holds the writer's thread until released."""

    def __init__(self, save):
        self.save, self.entered, self.release = save, threading.Event(), threading.Event()

    def __call__(self, *a, **k):
        self.entered.set()
        assert self.release.wait(60)
        return self.save(*a, **k)


def test_the_writer_returns_at_once_and_the_files_follow(tiny_model, tmp_path, monkeypatch):
    """A slow disk must not hold the learner's thread (it answers heartbeats meanwhile)."""
    trainer = Trainer.from_config(make_config(tmp_path), tiny_model)
    blocked = _BlockedSave(trainer.model.save_pretrained)
    monkeypatch.setattr(trainer.model, "save_pretrained", blocked)
    writer = Writer(tmp_path / "ckpts", tiny_model, keep=2)
    writer.start(trainer, {"version": trainer.version})
    assert blocked.entered.wait(60) and writer.busy and writer.collect() is None
    with pytest.raises(RuntimeError, match="still being written"):
        writer.start(trainer, {})
    assert list_checkpoints(tmp_path / "ckpts") == []
    blocked.release.set()
    path = writer.collect(wait=True)
    assert path == tmp_path / "ckpts" / "step-00000000" and not writer.busy
    assert load_state(path)[0]["version"] == 0 and writer.collect() is None  # reported once


def test_a_failed_write_comes_back_as_an_error_not_an_exception_on_the_thread(tiny_model, tmp_path, monkeypatch):
    trainer = Trainer.from_config(make_config(tmp_path), tiny_model)

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trainer.model, "save_pretrained", disk_full)
    writer = Writer(tmp_path / "ckpts", tiny_model, keep=2)
    writer.start(trainer, {"version": 0})
    outcome = writer.collect(wait=True)
    assert isinstance(outcome, CheckpointError) and "No space left" in str(outcome)
    assert list_checkpoints(tmp_path / "ckpts") == []
