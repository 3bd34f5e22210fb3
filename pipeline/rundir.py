"""A run's folder, `<run.out_dir>/<run.name>/`: what a training run writes there, and how the other
commands (sweep, study, report) read it.

    metrics.jsonl   one line per optimiser step and per held-out round
    summary.json    written once, when a run finishes (not when it stops on request or fails):
                    what `sweep` looks for to know a cell is done
    tracker.jsonl   the history tracker, one line per prompt
    checkpoints/    step-NNNNNNNN/ folders (learner/training/checkpoint.py)

It also holds the folder's policy, which `run.py train` applies before anything starts (`start_from`):
a fresh run never overwrites or mixes with one already there; `--resume auto` continues it or starts
afresh with the earlier files set aside.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import msgspec

from pipeline.config import ConfigError

log = logging.getLogger(__name__)

SUMMARY = "summary.json"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


class NoCheckpoint(ConfigError):
    pass


class RunSummary(msgspec.Struct, kw_only=True):
    """What a finished run leaves: its statistics, lease counters, RESULT line and resolved config."""

    stats: dict[str, Any]
    counters: dict[str, Any]
    result: str
    config: dict[str, Any]
    lease_outcomes: dict[str, Any] = {}  # outcome counts by H at lease and by response length (LeaseBook.binned)


def write_summary(run_dir: Path, summary: RunSummary) -> None:
    tmp = run_dir / (SUMMARY + ".tmp")
    tmp.write_bytes(msgspec.json.encode(summary))
    tmp.rename(run_dir / SUMMARY)  # all or nothing: a half-written summary must not read as a finished run


def finished(run_dir: Path) -> bool:
    return (run_dir / SUMMARY).exists()


def read_summary(run_dir: Path) -> RunSummary:
    return msgspec.json.decode((run_dir / SUMMARY).read_bytes(), type=RunSummary)


def list_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name))


def latest(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def find_checkpoint(path: Path) -> Path:
    """A checkpoint folder, or the newest one under a run folder or its checkpoints/ folder."""
    if (path / "state.json").exists():
        return path
    for root in (path / "checkpoints", path):
        if (found := latest(root)) is not None:
            return found
    raise NoCheckpoint(f"no checkpoint found at {path}")


def start_from(run_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint `train` continues from, or None for a fresh run, so that no run folder is ever
    overwritten or mixed. `resume`: None (a fresh run: refused where the folder already holds a run),
    "" (the newest checkpoint of the run folder), "auto" (that, or a fresh run where there is none:
    what a requeued job passes), or a checkpoint or run folder."""
    held = list_checkpoints(run_dir / "checkpoints")
    if resume is None:
        if held:
            raise ConfigError(f"{run_dir} already holds a run (newest checkpoint {held[-1].name}): a fresh run "
                              f"would overwrite it. Continue it with --resume (or --resume auto), or start another "
                              f"with a new --run.name")
        if (run_dir / "metrics.jsonl").exists():
            raise ConfigError(f"{run_dir} holds the metrics of a run that left no checkpoint: --resume auto starts "
                              f"afresh there (setting them aside), or start another with a new --run.name")
        return None
    if resume == "auto":
        if held:
            return held[-1]
        _set_aside(run_dir)
        return None
    return find_checkpoint(Path(resume) if resume else run_dir)


def _set_aside(run_dir: Path) -> None:
    """A run that left no checkpoint starts again from scratch: its files are kept, renamed, not mixed."""
    for name in ("metrics.jsonl", "summary.json"):
        old = run_dir / name
        if old.exists():
            n = 1
            while (kept := run_dir / f"{old.stem}.before-restart-{n}{old.suffix}").exists():
                n += 1
            old.rename(kept)
            log.warning("%s: no checkpoint to resume from; the earlier %s is kept as %s", run_dir, name, kept.name)
