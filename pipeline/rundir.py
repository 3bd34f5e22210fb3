"""A run's folder, `<run.out_dir>/<run.name>/`: what a training run writes there, and how the other
commands (sweep, study, report) read it.

    metrics.jsonl   one line per optimiser step and per held-out round
    summary.json    written once, when a run finishes (not when it stops on request or fails):
                    what `sweep` looks for to know a cell is done
    tracker.jsonl   the history tracker, one line per prompt
    checkpoints/    step-NNNNNNNN/ folders (learner/training/checkpoint.py)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

SUMMARY = "summary.json"


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
