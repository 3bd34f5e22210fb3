"""Hand-computed advantages: GRPO, ERPO's Reactivation Advantage, RL-ZVP, overlong shaping (docs/algorithms.md §1-§3)."""

import math

import pytest
import torch

from learner.training.advantages import AdvantageRule, grpo, outcome, overlong_penalty, reactivation, zvp_token_advantages
from pipeline.config import from_dict


def _adv(rewards, lengths, cfg):
    """The advantage the intake stores on a group, under config `cfg`."""
    rule = AdvantageRule.from_config(cfg.advantage, cfg.ra, cfg.dapo, cfg.generator.max_tokens)
    return rule.of(rewards, outcome(rewards), lengths)


def test_outcome_is_decided_from_the_verifiers_rewards():
    assert outcome(torch.ones(4)) == "positive"
    assert outcome(torch.zeros(4)) == "negative"
    assert outcome(torch.tensor([1.0, 0.0, 1.0])) == "mixed"
    assert outcome(torch.tensor([0.0, 0.0, 1.0])) == "mixed"


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
    assert _adv(ones, lengths, grpo_cfg).has_signal is False
    s3 = math.sqrt(3) / 2  # 0.5 / unbiased std sqrt(1/3)
    assert _adv(mixed, lengths, grpo_cfg).per_sample.tolist() == pytest.approx([s3, -s3, -s3, s3], rel=1e-5)
    population = from_dict({"advantage": {"std": "population"}})
    assert _adv(mixed, lengths, population).per_sample.tolist() == pytest.approx([1, -1, -1, 1], rel=1e-5)
    erpo = from_dict({"ra": {"enabled": True}})
    assert _adv(ones, lengths, erpo).per_sample.tolist() == pytest.approx([1 / math.sqrt(5)] * 4, rel=1e-5)
    assert not _adv(zeros, lengths, erpo).has_signal  # negative groups keep A = 0 ...
    mirrored = _adv(zeros, lengths, from_dict({"ra": {"enabled": True, "negative": True}}))
    assert mirrored.per_sample.tolist() == pytest.approx([-1 / math.sqrt(5)] * 4, rel=1e-5)  # ... unless mirrored
    zvp = from_dict({"advantage": {"kind": "rlzvp"}})
    assert _adv(ones, lengths, zvp).zvp == 1
    assert _adv(zeros, lengths, zvp).zvp == -1
    assert _adv(mixed, lengths, zvp).zvp == 0  # non-zero-variance groups stay GRPO


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
    ga = _adv(torch.tensor([1.0, 0.0, 1.0, 0.0]), [5, 5, 5, 14], cfg)
    assert ga.per_sample[3] < ga.per_sample[1] < 0 < ga.per_sample[0]
    # all correct, one ran long: still an all-correct (zero-variance) group, decided before shaping
    assert not _adv(torch.ones(4), [5, 5, 5, 14], cfg).has_signal


def test_zero_variance_is_decided_before_overlong_shaping():
    """Rewards [1, 0], lengths [6, 3], L_max = 6, L_cache = 2 shape to [0, 0]. The group is mixed (the
    verifier says so): RL-ZVP must not treat it as all-wrong and push the correct answer down, and
    dynamic sampling must not drop it as signal-free because of the shaping."""
    cfg = from_dict({"generator": {"max_tokens": 6}, "dapo": {"overlong_shaping": True, "overlong_cache": 2},
                     "advantage": {"kind": "rlzvp"}})
    ga = _adv(torch.tensor([1.0, 0.0]), [6, 3], cfg)
    assert ga.zvp == 0  # not an RL-ZVP zero-variance group
    assert ga.per_sample.tolist() == pytest.approx([0.0, 0.0], abs=1e-6)  # the shaped rewards tie
