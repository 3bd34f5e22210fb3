"""Exact lag control's schedule (learner/orchestration/exact.py): which waves are due when, which groups a step
trains, and the config it refuses."""

import pytest

from learner.orchestration.exact import Waves, exact_steps, lease_seed
from pipeline.config import ConfigError, from_dict
from tests.builders import group, rule


def _waves(k: int, dynamic: bool = False, oversample: float = 1.5) -> Waves:
    cfg = from_dict({"learner": {"max_lag": k, "groups_per_step": 2, "lag_control": "exact"},
                     "dapo": {"dynamic_sampling": dynamic, "oversample": oversample}})
    return Waves(cfg.learner, cfg.dapo, run_seed=7)


def test_waves_zero_to_k_go_out_at_the_start_then_one_per_version():
    w = _waves(k=2)
    assert w.due(0, steps=10) == [0, 1, 2]
    for s in (0, 1, 2):
        w.leased[s] = [s]
    assert w.due(0, steps=10) == [] and w.out_before_step(0, 10)
    assert w.due(1, steps=10) == [3] and not w.out_before_step(1, 10)  # step 1 waits for wave 3 to go out
    assert w.due(8, steps=10) == [8, 9]  # never past the run's last step (and a lost wave goes out again)
    assert [w.version_of(s) for s in range(5)] == [0, 0, 0, 1, 2]


def test_a_step_trains_the_first_b_in_lease_order_and_with_dynamic_sampling_the_first_b_with_signal():
    r = rule()
    gs = [group(rw, [1], [[2], [3]], [[-0.1], [-0.1]], lease_id=i) for i, rw in
          enumerate([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [1.0, 0.0]])]
    for g in gs:
        g.advantage = r.of(g.rewards, g.outcome, [1, 1])
    w = _waves(k=0)
    w.leased[0] = [4, 3, 2, 1, 0]  # lease order differs from arrival order
    train, rest = w.choose(0, gs)
    assert [g.lease_id for g in train] == [4, 3] and [g.lease_id for g in rest] == [2, 1, 0]
    f = _waves(k=0, dynamic=True)
    assert f.size == 3  # ceil(2 x 1.5) leased per wave
    f.leased[0] = [0, 1, 2, 3, 4]
    train, rest = f.choose(0, gs)
    assert [g.lease_id for g in train] == [1, 3] and f.short == 0  # 0 and 2 have no signal under GRPO
    f.leased[1] = [0, 2]
    train, _ = f.choose(1, [gs[0], gs[2]])
    assert [g.lease_id for g in train] == [0, 2] and f.short == 1  # none with signal: trained as it is, counted


def test_seeds_and_generators_follow_fixed_rules():
    assert lease_seed(7, 3, 1) == lease_seed(7, 3, 1)
    assert len({lease_seed(7, s, i) for s in range(20) for i in range(20)}) == 400
    assert lease_seed(7, 3, 1) != lease_seed(8, 3, 1) and 0 <= lease_seed(7, 3, 1) < 2**32
    assert [Waves.generator_for(i, [5, 2]) for i in range(4)] == [2, 5, 2, 5]


def test_a_sample_budget_buys_whole_waves():
    cfg = from_dict({"learner": {"steps": 1000, "sample_budget": 640, "groups_per_step": 4, "group_size": 8,
                                 "lag_control": "exact"}, "dapo": {"dynamic_sampling": True, "oversample": 1.5}})
    assert exact_steps(cfg.learner, cfg.dapo) == 640 // (8 * 6)


@pytest.mark.parametrize("settings,field", [
    ({"generator": {"update_mode": "inflight"}}, "update_mode"),
    ({"learner": {"sync_every": 2}}, "sync_every"),
    ({"learner": {"max_open_groups": 64}}, "max_open_groups"),
    ({"dapo": {"oversample": 0.5}}, "dapo.oversample"),
])
def test_exact_lag_refuses_what_would_break_it_naming_the_field(settings, field):
    merged = {"learner": {"lag_control": "exact", **settings.get("learner", {})},
              **{k: v for k, v in settings.items() if k != "learner"}}
    with pytest.raises(ConfigError, match=field):
        from_dict(merged)


def test_a_waves_untrained_groups_are_recorded_in_the_tracker_too_in_lease_order():
    """Dynamic sampling leases ceil(B x oversample) per wave and trains B: the others were visits all
    the same, and the tracker must see every one of them, in lease order, at the step's end."""
    from learner.orchestration.exact import ExactLag
    from learner.orchestration.buffer import GroupBuffer
    from learner.orchestration.leases import LeaseOutcome
    from tests.builders import lease_book, rollout
    from learner.training.groups import group_from_rollout

    cfg = from_dict({"learner": {"max_lag": 0, "groups_per_step": 2, "lag_control": "exact", "group_size": 2},
                     "dapo": {"dynamic_sampling": True, "oversample": 2.0}})
    tracker, leases = lease_book(num=8, group_size=2, cfg=cfg)
    lag = ExactLag(cfg.learner, cfg.dapo, 7, leases, GroupBuffer())
    out = []
    lag.lease(_pool(version=0), lambda gid, tag: (out.append(leases.lease(gid, 0, seed=tag.seed)) or out[-1].lease_id, True))
    assert len(out) == 4  # one wave of ceil(2 x 2.0)
    r = rule(cfg)
    for a, rewards in zip(reversed(out), ([1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0])):  # back in reverse
        leases.returned(a.lease_id)
        g = group_from_rollout(rollout(a, n=2, rewards=rewards), 2)
        g.advantage = r.of(g.rewards, g.outcome, [2, 2])
        assert lag.admit(g).visits == []  # nothing recorded on arrival
    batch = lag.next_batch(0)
    # with signal (mixed): the 2nd and 4th leased; the 1st (all wrong) and 3rd (all right) are not trained
    assert [g.lease_id for g in batch.train] == [out[1].lease_id, out[3].lease_id] and batch.filtered == 2
    assert {(g.lease_id, why) for g, why in batch.dropped} == {(out[0].lease_id, LeaseOutcome.DROPPED_FILTERED),
                                                               (out[2].lease_id, LeaseOutcome.DROPPED_FILTERED)}
    settled = lag.settle(0, batch.train)
    assert [g.lease_id for g in settled.visits] == [a.lease_id for a in out]  # all four, in lease order


def _pool(version: int):
    from learner.orchestration.lag import Pool

    return Pool(version=version, step_running=False, groups_in_step=0, ready={0: version}, expected=1)
