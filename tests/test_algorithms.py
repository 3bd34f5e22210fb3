"""Hand-computed cases for the pure parts: schedule, tracker, advantages, loss, log-probs."""

import math

import pytest
import torch

from learner.advantages import grpo
from learner.loss import policy_loss, token_logprobs
from learner.schedule import temperature
from learner.tracker import Tracker
from pipeline.config import LossConfig, ScheduleConfig


def test_schedule_is_linear_in_h_and_capped():
    cfg = ScheduleConfig(t0=1.0, ts=0.02, tmax=1.2)
    assert temperature(0, cfg) == 1.0
    assert temperature(5, cfg) == pytest.approx(1.1)
    assert temperature(10, cfg) == pytest.approx(1.2)
    assert temperature(1000, cfg) == 1.2


def test_tracker_counts_all_correct_visits_only():
    t = Tracker(3)
    t.record_visit(0, [1, 1, 1, 1], 1.0, version=0)
    t.record_visit(0, [1, 1, 1, 1], 1.02, version=1)
    t.record_visit(0, [1, 0, 1, 1], 1.04, version=2)  # mixed: unchanged by default
    t.record_visit(1, [0, 0, 0, 0], 1.0, version=2)  # all wrong: unchanged
    assert [t.h(i) for i in range(3)] == [2, 0, 0]
    s = t.prompts[0]
    assert (s.visits, s.last_reward_mean, s.last_temperature, s.last_sampled_version) == (3, 0.75, 1.04, 2)


def test_tracker_reset_on_mixed_option():
    t = Tracker(1, reset_on_mixed=True)
    t.record_visit(0, [1, 1], 1.0, 0)
    t.record_visit(0, [1, 1], 1.0, 0)
    t.record_visit(0, [0, 0], 1.0, 0)  # all wrong is not mixed
    assert t.h(0) == 2
    t.record_visit(0, [1, 0], 1.0, 0)
    assert t.h(0) == 0


def test_tracker_state_round_trip(tmp_path):
    t = Tracker(4)
    t.record_visit(2, [1, 1], 1.1, 5)
    t.record_trained(2, 6)
    u = Tracker(4)
    u.load_state_dict(t.state_dict())
    assert u.prompts == t.prompts
    t.dump(tmp_path / "tracker.jsonl")
    assert len((tmp_path / "tracker.jsonl").read_text().splitlines()) == 4


def test_grpo_hand_computed():
    a = grpo(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    # mean 0.25, population std sqrt(0.1875) = 0.4330
    assert a.tolist() == pytest.approx([0.75 / 0.4330127, -0.25 / 0.4330127] + [-0.25 / 0.4330127] * 2, rel=1e-5)
    assert grpo(torch.tensor([1.0, 1.0, 1.0])).tolist() == [0.0, 0.0, 0.0]
    assert grpo(torch.tensor([0.0, 0.0])).tolist() == [0.0, 0.0]
    assert float(grpo(torch.tensor([1.0, 0.0, 1.0, 0.0])).sum()) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        grpo(torch.tensor([1.0]))


def test_token_logprobs_use_each_samples_own_temperature():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 11)
    targets = torch.randint(11, (2, 3))
    temps = torch.tensor([0.7, 1.3])
    got = token_logprobs(logits, targets, temps)
    for i, T in enumerate(temps):
        ref = torch.log_softmax(logits[i] / T, -1).gather(-1, targets[i, :, None]).squeeze(-1)
        assert torch.allclose(got[i], ref, atol=1e-6)
    # and not the T = 1 (raw) log-probs: mixing them up is the bug this guards against
    raw = token_logprobs(logits, targets, torch.ones(2))
    assert not torch.allclose(got, raw, atol=1e-3)


CFG = LossConfig(eps_low=0.2, eps_high=0.28, is_cap=2.0)


def test_tis_truncates_is_weight_and_normalises_per_token():
    # one sample, two tokens, on-policy at the step start (u = 1), w = 0.5 and 3 -> truncated to 2
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    prox = logp.detach().clone()
    mu = prox - torch.log(torch.tensor([[0.5, 3.0]]))
    adv = torch.ones(1, 2)
    loss, stats = policy_loss(logp, prox, mu, adv, torch.ones(1, 2), CFG)
    assert float(loss.detach()) == pytest.approx(-(0.5 + 2.0) / 2)
    loss.backward()
    # d(-J)/d logp_t = -sg(min(w, C)) * u * A / N
    assert logp.grad[0].tolist() == pytest.approx([-0.25, -1.0])
    assert stats.truncated_frac == pytest.approx(0.5)
    # ESS of w = (0.5 + 3)^2 / (2 * (0.25 + 9))
    assert stats.ess == pytest.approx(3.5 ** 2 / (2 * 9.25), rel=1e-5)


def test_tis_clip_higher_is_asymmetric_and_pessimistic():
    prox = torch.zeros(1, 4)
    mu = prox.clone()  # no lag: w = 1
    ratio = torch.tensor([[1.5, 1.5, 0.5, 0.5]])  # u = pi_theta / pi_prox
    logp = torch.log(ratio).requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    loss, stats = policy_loss(logp, prox, mu, adv, torch.ones(1, 4), CFG)
    # min(uA, clip(u, 0.8, 1.28) A): 1.28 | -1.5 | 0.5 | -0.8
    assert float(loss.detach()) == pytest.approx(-(1.28 - 1.5 + 0.5 - 0.8) / 4)
    loss.backward()
    # clipped terms carry no gradient; unclipped ones carry -u*A/N
    assert logp.grad[0].tolist() == pytest.approx([0.0, 1.5 / 4, -0.5 / 4, 0.0])
    assert stats.clip_frac == pytest.approx(0.5)


def test_tis_token_level_normalisation_over_the_batch():
    # sample 0: 1 token with A = 1; sample 1: 3 tokens with A = -1; mask pads sample 0
    logp = torch.zeros(2, 3, requires_grad=True)
    mask = torch.tensor([[1.0, 0, 0], [1, 1, 1]])
    adv = torch.tensor([[1.0, 1, 1], [-1, -1, -1]])
    loss, _ = policy_loss(logp, logp.detach(), logp.detach(), adv, mask, CFG)
    assert float(loss.detach()) == pytest.approx(-(1 - 3) / 4)  # not the mean of per-sample means (0)
    loss.backward()
    assert logp.grad[0, 1:].abs().sum() == 0  # padding gets no gradient


def test_tis_is_weight_is_detached():
    logp = torch.zeros(1, 1, requires_grad=True)
    prox = torch.zeros(1, 1, requires_grad=True)
    mu = torch.full((1, 1), -math.log(1.5))
    loss, _ = policy_loss(logp, prox, mu, torch.ones(1, 1), torch.ones(1, 1), CFG)
    loss.backward()
    assert prox.grad is None or float(prox.grad.abs().sum()) == 0.0
    assert float(logp.grad) == pytest.approx(-1.5)
