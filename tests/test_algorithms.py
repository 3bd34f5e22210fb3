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
    # mean 0.25, unbiased std sqrt(0.75 / 3) = 0.5 (verl, TRL: the default) ...
    assert a.tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5], rel=1e-5)
    # ... population std sqrt(0.1875) = 0.4330 as an option
    p = grpo(torch.tensor([1.0, 0.0, 0.0, 0.0]), unbiased=False)
    assert p.tolist() == pytest.approx([0.75 / 0.4330127, -0.25 / 0.4330127] + [-0.25 / 0.4330127] * 2, rel=1e-5)
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


# ---- ERPO, RL-ZVP, DAPO (ALGORITHMS.md §1-§3) --------------------------------------------------

from learner.advantages import group_advantage, overlong_penalty, reactivation, zvp_token_advantages  # noqa: E402
from pipeline.config import from_dict  # noqa: E402


def test_reactivation_advantage_is_one_over_sqrt_n_plus_one_for_an_all_correct_group():
    for n in (2, 4, 8, 16):
        a = reactivation(torch.ones(n), m=1, r_virtual=0.0)  # unbiased std over the n + 1 rewards
        assert a.tolist() == pytest.approx([1 / math.sqrt(n + 1)] * n, rel=1e-5)
        p = reactivation(torch.ones(n), m=1, r_virtual=0.0, unbiased=False)
        assert p.tolist() == pytest.approx([1 / math.sqrt(n)] * n, rel=1e-5)
    # m = 2 virtual zeros among 4 ones: mean 4/6, population std sqrt(4/6 * 2/6) -> (1/3) / 0.4714
    assert reactivation(torch.ones(4), m=2, r_virtual=0.0, unbiased=False).tolist() == pytest.approx(
        [0.70710678] * 4, rel=1e-5)


def test_group_advantage_policies_on_zero_variance_groups():
    ones, zeros, mixed = torch.ones(4), torch.zeros(4), torch.tensor([1.0, 0, 0, 1])
    lengths = [3] * 4
    grpo_cfg = from_dict({})
    assert group_advantage(ones, lengths, grpo_cfg).has_signal is False
    s3 = math.sqrt(3) / 2  # 0.5 / unbiased std sqrt(1/3)
    assert group_advantage(mixed, lengths, grpo_cfg).per_sample.tolist() == pytest.approx([s3, -s3, -s3, s3], rel=1e-5)
    population = from_dict({"advantage": {"std": "population"}})
    assert group_advantage(mixed, lengths, population).per_sample.tolist() == pytest.approx([1, -1, -1, 1], rel=1e-5)
    erpo = from_dict({"ra": {"enabled": True}})
    assert group_advantage(ones, lengths, erpo).per_sample.tolist() == pytest.approx([1 / math.sqrt(5)] * 4, rel=1e-5)
    assert not group_advantage(zeros, lengths, erpo).has_signal  # negative groups keep A = 0 ...
    mirrored = group_advantage(zeros, lengths, from_dict({"ra": {"enabled": True, "negative": True}}))
    assert mirrored.per_sample.tolist() == pytest.approx([-1 / math.sqrt(5)] * 4, rel=1e-5)  # ... unless mirrored
    zvp = from_dict({"advantage": {"kind": "rlzvp"}})
    assert group_advantage(ones, lengths, zvp).zvp == 1
    assert group_advantage(zeros, lengths, zvp).zvp == -1
    assert group_advantage(mixed, lengths, zvp).zvp == 0  # non-zero-variance groups stay GRPO


def test_rlzvp_token_advantages_signs_and_max_entropy_term():
    h = torch.tensor([0.5, 2.0, 1.0], requires_grad=True)
    pos = zvp_token_advantages(h, positive=True, alpha=0.1)
    neg = zvp_token_advantages(h, positive=False, alpha=0.1)
    assert pos.tolist() == pytest.approx([0.05, 0.2, 0.1])
    assert neg.tolist() == pytest.approx([-0.15, 0.0, -0.1])  # -alpha * (max_k H_k - H_t)
    assert not pos.requires_grad and not neg.requires_grad  # entropy is detached


def test_overlong_penalty_piecewise():
    assert overlong_penalty(10, l_max=16, l_cache=4) == 0.0
    assert overlong_penalty(12, 16, 4) == 0.0
    assert overlong_penalty(14, 16, 4) == pytest.approx(-0.5)
    assert overlong_penalty(16, 16, 4) == pytest.approx(-1.0)
    assert overlong_penalty(17, 16, 4) == -1.0
    cfg = from_dict({"generator": {"max_tokens": 16}, "dapo": {"overlong_shaping": True, "overlong_cache": 4}})
    # mixed by the verifier: GRPO on the shaped rewards, the long wrong answer pushed down further
    ga = group_advantage(torch.tensor([1.0, 0.0, 1.0, 0.0]), [5, 5, 5, 14], cfg)
    assert ga.per_sample[3] < ga.per_sample[1] < 0 < ga.per_sample[0]
    # all correct, one ran long: still an all-correct (zero-variance) group, decided before shaping
    assert not group_advantage(torch.ones(4), [5, 5, 5, 14], cfg).has_signal


def test_zero_variance_is_decided_before_overlong_shaping():
    """Rewards [1, 0], lengths [6, 3], L_max = 6, L_cache = 2 shape to [0, 0]. The group is mixed (the
    verifier says so): RL-ZVP must not treat it as all-wrong and push the correct answer down, and
    dynamic sampling must not drop it as signal-free because of the shaping."""
    cfg = from_dict({"generator": {"max_tokens": 6}, "dapo": {"overlong_shaping": True, "overlong_cache": 2},
                     "advantage": {"kind": "rlzvp"}})
    ga = group_advantage(torch.tensor([1.0, 0.0]), [6, 3], cfg)
    assert ga.zvp == 0  # not an RL-ZVP zero-variance group
    assert ga.per_sample.tolist() == pytest.approx([0.0, 0.0], abs=1e-6)  # the shaped rewards tie


def test_ppo_behaviour_is_bounded_for_a_stale_sample_with_negative_advantage():
    """rho = pi_theta / mu of a very stale token can be huge; with A < 0 the pessimistic PPO term is
    rho * A, unbounded. The dual clip (c = 3) bounds it at c * A, and the log-ratio clamp keeps rho finite."""
    cfg = LossConfig(correction="ppo_behaviour")
    logp = torch.tensor([[0.0, -0.1]], requires_grad=True)
    mu = torch.tensor([[-60.0, -0.1]])  # token 0: log rho = 60 (clamped to 20)
    adv = torch.full((1, 2), -1.0)
    loss, _ = policy_loss(logp, logp.detach(), mu, adv, torch.ones(1, 2), cfg)
    # token 0: max(min(rho A, clip(rho) A), 3 A) = -3 ; token 1: rho = 1 -> -1 ; J = -4 / 2
    assert float(loss) == pytest.approx(2.0)
    loss.backward()
    assert torch.isfinite(logp.grad).all() and float(logp.grad[0, 0]) == 0.0  # the dual clip carries no gradient


@pytest.mark.parametrize("correction", ["ppo_behaviour", "tis", "mis", "seq_mis"])
def test_corrections_agree_without_lag_and_differ_with_it(correction):
    cfg = LossConfig(correction=correction, is_cap=2.0)
    logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    adv, mask = torch.ones(1, 3), torch.ones(1, 3)
    loss, stats = policy_loss(logp, logp.detach(), logp.detach(), adv, mask, cfg)
    assert float(loss.detach()) == pytest.approx(-1.0) and stats.truncated_frac == 0 and stats.ess == pytest.approx(1.0)
    # lag: w = pi_prox/mu = [0.25, 1, 3]
    mu = logp.detach() - torch.log(torch.tensor([[0.25, 1.0, 3.0]]))
    loss, stats = policy_loss(logp, logp.detach(), mu, adv, mask, cfg)
    expected = {
        "ppo_behaviour": None,  # computed below
        "tis": -(0.25 + 1.0 + 2.0) / 3,
        "mis": -(0.0 + 1.0 + 0.0) / 3,  # w outside [0.5, 2] masked
        "seq_mis": -(0.25 + 1.0 + 3.0) / 3,  # geometric mean (0.75)^(1/3) = 0.91 is inside [0.5, 2]
    }[correction]
    if correction == "ppo_behaviour":
        # rho = exp(pi_theta - mu) = w = [0.25, 1, 3]; min(rho, clip(rho, 0.8, 1.28)) with A = 1
        expected = -(0.25 + 1.0 + 1.28) / 3
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_seq_mis_masks_whole_sequences():
    cfg = LossConfig(correction="seq_mis", is_cap=2.0)
    logp = torch.zeros(2, 2, requires_grad=True)
    mu = torch.tensor([[0.0, 0.0], [-1.0, -1.0]])  # row 1: w = e for both tokens, geometric mean e > 2
    loss, stats = policy_loss(logp, logp.detach(), mu, torch.ones(2, 2), torch.ones(2, 2), cfg)
    assert float(loss.detach()) == pytest.approx(-(1 + 1) / 4)
    assert stats.truncated_frac == pytest.approx(0.5)
