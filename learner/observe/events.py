"""What the learner lets an observer see as a run goes on (tests, debugging, dashboards).

An observer is a callable given to `Learner(observer=...)`; it is called with one of these events and
must only record: the loop does not look at what it returns. `BatchBuilt` comes from the optimiser
thread, the others from the loop's thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from learner.training.groups import Group
from learner.training.batch import Batch
from pipeline.messages import Assignment


@dataclass
class Leased:
    """A training lease went out to generator `generator_id`; `h` is its prompt's H at that moment."""

    generator_id: int
    assignment: Assignment
    h: int


@dataclass
class StepStarted:
    """An optimiser step starts at weight version `version` on these groups."""

    version: int
    groups: list[Group]


@dataclass
class BatchBuilt:
    """The step's groups as the trainer trains them: one row per sample, before any update."""

    version: int
    batch: Batch


Event = Leased | StepStarted | BatchBuilt
Observer = Callable[[Event], None]
