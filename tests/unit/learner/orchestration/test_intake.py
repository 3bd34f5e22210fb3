"""A rollout's way in: the intake makes it a complete group with its outcome and advantage (bad
rollouts counted), lag control admits it (bounded here: its visit counts at once, dynamic sampling
may drop it), and the ledger carries out the verdict: the tracker records the visit, trained or not."""

import pytest

from learner.observe.stats import Arrivals, RunStats
from learner.orchestration.intake import Intake
from learner.orchestration.ledger import Ledger
from learner.orchestration.modes import lag_control
from pipeline.config import from_dict
from tests.builders import lease_book, rollout, rule


class _Arrivals:
    """The path `Learner._poll` takes a training rollout along: intake, lag control's verdict, the
    ledger, the statistics."""

    def __init__(self, dynamic_sampling: bool = False, max_gen_batches: int = 10, **sections):
        cfg = from_dict({"dapo": {"dynamic_sampling": dynamic_sampling, "max_gen_batches": max_gen_batches},
                         "learner": {"groups_per_step": 1, "group_size": 4}, **sections})
        self.tracker, self.leases = lease_book(num=4, cfg=cfg)
        self.stats = RunStats(Arrivals(cfg.schedule.t0))
        self.intake = Intake(self.leases, rule(cfg), group_size=4)
        self.lag = lag_control(cfg.learner, cfg.dapo, 0, 8, self.leases)
        self.ledger = Ledger(self.leases, self.tracker)

    def on_rollout(self, r):
        group = self.intake.on_rollout(r)
        if group is not None:
            verdict = self.ledger.apply(self.lag.admit(group))
            self.stats.record_visits(verdict.visits, verdict.filtered)
        return group

    @property
    def buffer(self):
        return self.lag.buffer.groups


def test_a_filtered_group_is_still_a_visit_of_its_prompt():
    """Dynamic sampling drops an all-correct group (no signal under GRPO), but its prompt was
    observed all-correct: H must grow, or ERPO's schedule would never raise its temperature."""
    arrivals = _Arrivals(dynamic_sampling=True)
    a = arrivals.leases.lease(0, 0)
    group = arrivals.on_rollout(rollout(a, rewards=[1.0] * 4))
    assert group is not None and group.outcome == "positive"
    assert len(arrivals.buffer) == 0 and arrivals.leases.outcomes["dropped_filtered"] == 1
    assert arrivals.tracker.h(a.prompt_id) == 1 and arrivals.tracker.prompts[a.prompt_id].visits == 1
    assert arrivals.stats.close_window().filtered == 1


def test_every_arrival_is_a_visit_whatever_its_fate():
    arrivals = _Arrivals()
    kinds = {}
    for rewards in ([1.0] * 4, [0.0] * 4, [1.0, 0.0, 0.0, 1.0]):
        a = arrivals.leases.lease(0, 0)
        kinds[a.prompt_id] = arrivals.on_rollout(rollout(a, rewards=rewards)).outcome
    assert len(arrivals.buffer) == 3  # no dynamic sampling: all kept
    tracker = arrivals.tracker
    assert {pid: tracker.prompts[pid].visits for pid in kinds} == {pid: 1 for pid in kinds}
    assert sum(tracker.h(pid) for pid, k in kinds.items()) == 1  # only the all-correct one


def test_the_advantage_is_computed_once_at_intake_over_the_whole_group():
    arrivals = _Arrivals(ra={"enabled": True})
    mixed = arrivals.on_rollout(rollout(arrivals.leases.lease(0, 0), rewards=[1.0, 0.0, 0.0, 0.0]))
    residual = arrivals.on_rollout(rollout(arrivals.leases.lease(0, 0), rewards=[1.0] * 4))
    assert mixed.advantage.per_sample.tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5], rel=1e-5)
    assert residual.advantage.per_sample.tolist() == pytest.approx([0.4472136] * 4, rel=1e-5)  # 1/sqrt(5)
    assert [g.advantage for g in arrivals.buffer] == [mixed.advantage, residual.advantage]


def test_dynamic_sampling_gives_up_after_max_gen_batches_of_drops_and_starts_again_after_a_step():
    arrivals = _Arrivals(dynamic_sampling=True, max_gen_batches=2)
    for _ in range(3):
        arrivals.on_rollout(rollout(arrivals.leases.lease(0, 0), rewards=[0.0] * 4))
    assert arrivals.leases.outcomes["dropped_filtered"] == 2 and len(arrivals.buffer) == 1  # 2 x groups_per_step, then kept
    arrivals.lag.settle(0, [])  # a step ended: a new quota
    arrivals.on_rollout(rollout(arrivals.leases.lease(0, 0), rewards=[0.0] * 4))
    assert arrivals.leases.outcomes["dropped_filtered"] == 3


def test_arrivals_are_counted_once_per_step_and_summed_for_the_run():
    arrivals = _Arrivals(schedule={"t0": 1.0, "ts": 0.5, "tmax": 2.0})
    stats = arrivals.stats
    arrivals.on_rollout(rollout(arrivals.leases.lease(0, 0), rewards=[1.0] * 4))
    window = stats.close_window()
    assert window.outcomes["positive"] == 1 and stats.arrivals.groups == 1
    arrivals.on_rollout(rollout(arrivals.leases.lease(0, 0), rewards=[0.0, 1.0, 1.0, 1.0]))
    stats.close_window()
    assert stats.arrivals.groups == 2 and dict(stats.arrivals.outcomes) == {"positive": 1, "negative": 0, "mixed": 1}


def test_rollouts_that_cannot_become_groups_are_counted_and_close_their_lease():
    arrivals = _Arrivals()
    intake, leases = arrivals.intake, arrivals.leases
    a = leases.lease(0, 0)
    assert arrivals.on_rollout(rollout(a, n=3, rewards=[1.0] * 3)) is None  # 3 of 4 samples
    assert leases.failures["bad_rollout"] == 1 and leases.open == 0
    assert arrivals.on_rollout(rollout(a)) is None  # its lease is closed now
    b = leases.lease(0, 0)
    wrong = rollout(b)
    wrong.prompt_id = b.prompt_id + 1
    assert arrivals.on_rollout(wrong) is None
    assert dict(intake.rejected) == {"bad_rollout": 1, "unknown_lease": 1, "mismatched_rollout": 1}
    assert len(arrivals.buffer) == 0 and all(p.visits == 0 for p in arrivals.tracker.prompts) and leases.counts_add_up()
