"""Groups are whole and consistent, their outcome decided once, and saved as they are."""

import pytest
import torch

from learner.training.groups import BadRollout, group_from_rollout, group_from_state, group_to_state
from pipeline.messages import pack_floats, pack_ids
from tests.builders import group, lease_book, rollout


def test_group_must_be_complete_and_consistent():
    _, d = lease_book()
    a = d.lease(0, 0)
    with pytest.raises(BadRollout, match="3 samples"):
        group_from_rollout(rollout(a, n=3), 4)
    bad = rollout(a)
    bad.samples[1].logprobs = pack_floats([-0.1])
    with pytest.raises(BadRollout, match="log-probs"):
        group_from_rollout(bad, 4)
    r = rollout(a, rewards=[1, 0, 1, 1])
    r.samples[2].tokens = pack_ids([7, 8, 9])
    r.samples[2].logprobs = pack_floats([-0.3, -0.2, -0.1])
    g = group_from_rollout(r, 4)
    assert g.n == 4 and g.outcome == "mixed" and g.temperature == a.temperature
    # each sample's token ids and log-probs arrive as sent, in order, paired with its own reward
    assert g.responses[2].tolist() == [7, 8, 9] and g.responses[0].tolist() == [5, 6]
    assert g.behaviour_logprobs[2].tolist() == pytest.approx([-0.3, -0.2, -0.1])
    assert g.rewards.tolist() == [1, 0, 1, 1] and g.prompt.tolist() == [1, 2, a.prompt_id]


def test_a_saved_group_keeps_its_outcome_and_advantage():
    g = group([1.0, 0.0, 1.0], [1, 2], [[3], [4, 5], [6]], [[-0.1], [-0.2, -0.3], [-0.4]])
    back = group_from_state(group_to_state(g))
    assert back.outcome == g.outcome == "mixed"
    assert torch.equal(back.advantage.per_sample, g.advantage.per_sample) and back.advantage.zvp == 0
