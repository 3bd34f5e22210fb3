"""The intake: a rollout becomes a complete group with its outcome and advantage, the tracker records
the visit (trained or not), dynamic sampling drops signal-free groups, and bad rollouts are counted."""

import pytest

from learner.training.groups import GroupBuffer
from learner.orchestration.intake import Intake
from learner.observe.stats import Arrivals, RunStats
from pipeline.config import from_dict
from tests.builders import lease_book, rollout, rule


def _intake(dynamic_sampling: bool = False, max_gen_batches: int = 10, **sections):
    cfg = from_dict({"dapo": {"dynamic_sampling": dynamic_sampling, "max_gen_batches": max_gen_batches}, **sections})
    tracker, leases = lease_book(num=4, cfg=cfg)
    stats = RunStats(Arrivals(cfg.schedule.t0))
    buffer = GroupBuffer()
    intake = Intake(leases, tracker, buffer, stats, rule(cfg), cfg.dapo, group_size=4, groups_per_step=1,
                    t0=cfg.schedule.t0)
    return intake, leases, tracker, buffer, stats


def test_a_filtered_group_is_still_a_visit_of_its_prompt():
    """Dynamic sampling drops an all-correct group (no signal under GRPO), but its prompt was
    observed all-correct: H must grow, or ERPO's schedule would never raise its temperature."""
    intake, leases, tracker, buffer, _ = _intake(dynamic_sampling=True)
    a = leases.lease(0, 0)
    group = intake.on_rollout(rollout(a, rewards=[1.0] * 4))
    assert group is not None and group.outcome == "positive"
    assert len(buffer) == 0 and leases.outcomes["dropped_filtered"] == 1
    assert tracker.h(a.prompt_id) == 1 and tracker.prompts[a.prompt_id].visits == 1


def test_every_arrival_is_a_visit_whatever_its_fate():
    intake, leases, tracker, buffer, _ = _intake()
    kinds = {}
    for rewards in ([1.0] * 4, [0.0] * 4, [1.0, 0.0, 0.0, 1.0]):
        a = leases.lease(0, 0)
        kinds[a.prompt_id] = intake.on_rollout(rollout(a, rewards=rewards)).outcome
    assert len(buffer) == 3  # no dynamic sampling: all kept
    assert {pid: tracker.prompts[pid].visits for pid in kinds} == {pid: 1 for pid in kinds}
    assert sum(tracker.h(pid) for pid, k in kinds.items()) == 1  # only the all-correct one


def test_the_advantage_is_computed_once_at_intake_over_the_whole_group():
    intake, leases, _, buffer, _ = _intake(ra={"enabled": True})
    mixed = intake.on_rollout(rollout(leases.lease(0, 0), rewards=[1.0, 0.0, 0.0, 0.0]))
    residual = intake.on_rollout(rollout(leases.lease(0, 0), rewards=[1.0] * 4))
    assert mixed.advantage.per_sample.tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5], rel=1e-5)
    assert residual.advantage.per_sample.tolist() == pytest.approx([0.4472136] * 4, rel=1e-5)  # 1/sqrt(5)
    assert [g.advantage for g in buffer.groups] == [mixed.advantage, residual.advantage]


def test_dynamic_sampling_gives_up_after_max_gen_batches_of_drops():
    intake, leases, _, buffer, _ = _intake(dynamic_sampling=True, max_gen_batches=2)
    for _ in range(3):
        intake.on_rollout(rollout(leases.lease(0, 0), rewards=[0.0] * 4))
    assert leases.outcomes["dropped_filtered"] == 2 and len(buffer) == 1  # 2 x groups_per_step, then kept


def test_arrivals_are_counted_once_per_step_and_summed_for_the_run():
    intake, leases, _, _, stats = _intake(schedule={"t0": 1.0, "ts": 0.5, "tmax": 2.0})
    intake.on_rollout(rollout(leases.lease(0, 0), rewards=[1.0] * 4))
    window = intake.close_window()
    assert window.outcomes["positive"] == 1 and stats.arrivals.groups == 1
    intake.on_rollout(rollout(leases.lease(0, 0), rewards=[0.0, 1.0, 1.0, 1.0]))
    intake.close_window()
    assert stats.arrivals.groups == 2 and dict(stats.arrivals.outcomes) == {"positive": 1, "negative": 0, "mixed": 1}


def test_rollouts_that_cannot_become_groups_are_counted_and_close_their_lease():
    intake, leases, tracker, buffer, _ = _intake()
    a = leases.lease(0, 0)
    assert intake.on_rollout(rollout(a, n=3, rewards=[1.0] * 3)) is None  # 3 of 4 samples
    assert leases.failures["bad_rollout"] == 1 and leases.open == 0
    assert intake.on_rollout(rollout(a)) is None  # its lease is closed now
    b = leases.lease(0, 0)
    wrong = rollout(b)
    wrong.prompt_id = b.prompt_id + 1
    assert intake.on_rollout(wrong) is None
    assert dict(intake.rejected) == {"bad_rollout": 1, "unknown_lease": 1, "mismatched_rollout": 1}
    assert len(buffer) == 0 and all(p.visits == 0 for p in tracker.prompts) and leases.balanced()
