"""The history tracker: H counts all-correct visits (the outcome decided once, on the group); its state round-trips."""

from learner.orchestration.tracker import Tracker


def test_tracker_counts_all_correct_visits_only():
    t = Tracker(3)
    t.record_visit(0, "positive", 1.0, 1.0, version=0)
    t.record_visit(0, "positive", 1.0, 1.02, version=1)
    t.record_visit(0, "mixed", 0.75, 1.04, version=2)  # mixed: unchanged by default
    t.record_visit(1, "negative", 0.0, 1.0, version=2)  # all wrong: unchanged
    assert [t.h(i) for i in range(3)] == [2, 0, 0]
    s = t.prompts[0]
    assert (s.visits, s.last_reward_mean, s.last_temperature, s.last_sampled_version) == (3, 0.75, 1.04, 2)


def test_tracker_reset_on_mixed_option():
    t = Tracker(1, reset_on_mixed=True)
    t.record_visit(0, "positive", 1.0, 1.0, 0)
    t.record_visit(0, "positive", 1.0, 1.0, 0)
    t.record_visit(0, "negative", 0.0, 1.0, 0)  # all wrong is not mixed
    assert t.h(0) == 2
    t.record_visit(0, "mixed", 0.5, 1.0, 0)
    assert t.h(0) == 0


def test_tracker_state_round_trip(tmp_path):
    t = Tracker(4)
    t.record_visit(2, "positive", 1.0, 1.1, 5)
    t.record_trained(2, 6)
    u = Tracker(4)
    u.load_state_dict(t.state_dict())
    assert u.prompts == t.prompts
    t.dump(tmp_path / "tracker.jsonl")
    assert len((tmp_path / "tracker.jsonl").read_text().splitlines()) == 4
