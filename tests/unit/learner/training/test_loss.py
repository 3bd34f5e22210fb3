"""Hand-computed cases of the clipped, lag-corrected loss (docs/algorithms.md §1, §5)."""

import math
import typing

import pytest
import torch

from learner.training.loss import CORRECTIONS, LossInputs, policy_loss
from pipeline.config import LossConfig

CFG = LossConfig(eps_low=0.2, eps_high=0.28, is_cap=2.0)


def _loss(logp, prox, mu, adv, mask, cfg, temperature=None):
    """The loss of one batch with DAPO's token-level normalisation over its own tokens (samples at
    T = 1 unless told)."""
    coef = torch.full((mask.shape[0],), 1.0 / float(mask.sum()))
    temperature = torch.ones(mask.shape[0]) if temperature is None else temperature
    return policy_loss(LossInputs(logp, prox, mu, adv, mask, coef, temperature=temperature), cfg)


def test_every_configurable_correction_is_in_the_table():
    assert set(CORRECTIONS) == set(typing.get_type_hints(LossConfig)["correction"].__args__)


def test_tis_truncates_is_weight_and_normalises_per_token():
    # one sample, two tokens, on-policy at the step start (u = 1), w = 0.5 and 3 -> truncated to 2
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    prox = logp.detach().clone()
    mu = prox - torch.log(torch.tensor([[0.5, 3.0]]))
    adv = torch.ones(1, 2)
    loss, stats = _loss(logp, prox, mu, adv, torch.ones(1, 2), CFG)
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
    loss, stats = _loss(logp, prox, mu, adv, torch.ones(1, 4), CFG)
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
    loss, _ = _loss(logp, logp.detach(), logp.detach(), adv, mask, CFG)
    assert float(loss.detach()) == pytest.approx(-(1 - 3) / 4)  # not the mean of per-sample means (0)
    loss.backward()
    assert logp.grad[0, 1:].abs().sum() == 0  # padding gets no gradient


def test_tis_is_weight_is_detached():
    logp = torch.zeros(1, 1, requires_grad=True)
    prox = torch.zeros(1, 1, requires_grad=True)
    mu = torch.full((1, 1), -math.log(1.5))
    loss, _ = _loss(logp, prox, mu, torch.ones(1, 1), torch.ones(1, 1), CFG)
    loss.backward()
    assert prox.grad is None or float(prox.grad.abs().sum()) == 0.0
    assert float(logp.grad) == pytest.approx(-1.5)


# ---- ERPO, RL-ZVP, DAPO (docs/algorithms.md §1-§3) --------------------------------------------------

def test_ppo_behaviour_is_bounded_for_a_stale_sample_with_negative_advantage():
    """rho = pi_theta / mu of a very stale token can be huge; with A < 0 the pessimistic PPO term is
    rho * A, unbounded. The dual clip (c = 3) bounds it at c * A, and the log-ratio clamp keeps rho finite."""
    cfg = LossConfig(correction="ppo_behaviour")
    logp = torch.tensor([[0.0, -0.1]], requires_grad=True)
    mu = torch.tensor([[-60.0, -0.1]])  # token 0: log rho = 60 (clamped to 20)
    adv = torch.full((1, 2), -1.0)
    loss, _ = _loss(logp, logp.detach(), mu, adv, torch.ones(1, 2), cfg)
    # token 0: max(min(rho A, clip(rho) A), 3 A) = -3 ; token 1: rho = 1 -> -1 ; J = -4 / 2
    assert float(loss.detach()) == pytest.approx(2.0)
    loss.backward()
    assert torch.isfinite(logp.grad).all() and float(logp.grad[0, 0]) == 0.0  # the dual clip carries no gradient


@pytest.mark.parametrize("correction", sorted(CORRECTIONS))
def test_corrections_agree_without_lag_and_differ_with_it(correction):
    cfg = LossConfig(correction=correction, is_cap=2.0)
    logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    adv, mask = torch.ones(1, 3), torch.ones(1, 3)
    loss, stats = _loss(logp, logp.detach(), logp.detach(), adv, mask, cfg)
    assert float(loss.detach()) == pytest.approx(-1.0) and stats.truncated_frac == 0 and stats.ess == pytest.approx(1.0)
    # lag: w = pi_prox/mu = [0.25, 1, 3]
    mu = logp.detach() - torch.log(torch.tensor([[0.25, 1.0, 3.0]]))
    loss, stats = _loss(logp, logp.detach(), mu, adv, mask, cfg)
    expected = {
        "ppo_behaviour": None,  # computed below
        "tis": -(0.25 + 1.0 + 2.0) / 3,
        "mis": -(0.0 + 1.0 + 0.0) / 3,  # w outside [0.5, 2] masked
        "seq_mis": -(0.25 + 1.0 + 3.0) / 3,  # geometric mean (0.75)^(1/3) = 0.91 is inside [0.5, 2]
        # (log w)^2 = [1.92, 0, 1.21]: M2 = 1.04, then 0.60 without the first, then 0 without both
        "m2po": -(0.0 + 1.0 + 0.0) / 3,
        # ESS = 4.25^2 / (3 * 10.0625) = 0.598, times tis
        "ess_tis": -(4.25 ** 2 / (3 * 10.0625)) * (0.25 + 1.0 + 2.0) / 3,
        # probabilities: pi_prox = e^logp, mu = pi_prox / w: gaps [1.10, 0, 0.40] > 0.3 masked
        "ipo": -(0.0 + 1.0 + 0.0) / 3,
        "tis_temp": -(0.25 + 1.0 + 2.0) / 3,  # at T = 1 the cap is C: tis
    }[correction]
    if correction == "ppo_behaviour":
        # rho = exp(pi_theta - mu) = w = [0.25, 1, 3]; min(rho, clip(rho, 0.8, 1.28)) with A = 1
        expected = -(0.25 + 1.0 + 1.28) / 3
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_seq_mis_masks_whole_sequences():
    cfg = LossConfig(correction="seq_mis", is_cap=2.0)
    logp = torch.zeros(2, 2, requires_grad=True)
    mu = torch.tensor([[0.0, 0.0], [-1.0, -1.0]])  # row 1: w = e for both tokens, geometric mean e > 2
    loss, stats = _loss(logp, logp.detach(), mu, torch.ones(2, 2), torch.ones(2, 2), cfg)
    assert float(loss.detach()) == pytest.approx(-(1 + 1) / 4)
    assert stats.truncated_frac == pytest.approx(0.5)


def test_the_cut_tokens_are_counted_per_group_of_the_batch():
    # rows 0 and 1 are group 3, row 2 is group 5; w = 3 (cut at C = 2) on row 0's first token and row 2's both
    logp = torch.zeros(3, 2, requires_grad=True)
    prox = logp.detach().clone()
    w = torch.tensor([[3.0, 1.0], [1.0, 1.0], [3.0, 3.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    x = LossInputs(logp, prox, prox - torch.log(w), torch.ones(3, 2), mask, torch.full((3,), 0.2),
                   group=torch.tensor([3, 3, 5]))
    _, sums = policy_loss(x, CFG)
    assert sums.cut_by_group == {3: [1.0, 3.0], 5: [2.0, 2.0]}
    both = sums
    both += sums  # micro-batches of one update add up
    assert both.cut_by_group[5] == [4.0, 4.0]


def test_m2po_masks_the_largest_squared_log_weights_until_the_second_moment_fits_and_does_not_clip():
    cfg = LossConfig(correction="m2po", m2_threshold=0.04)
    prox = torch.zeros(1, 4)
    log_w = torch.tensor([[0.5, -0.1, 0.05, 0.0]])  # (log w)^2 = [0.25, 0.01, 0.0025, 0]: M2 = 0.066 > 0.04
    mu = prox - log_w
    logp = torch.log(torch.full((1, 4), 1.5)).requires_grad_(True)  # u = 1.5, beyond clip-higher's 1.28
    loss, stats = _loss(logp, prox, mu, torch.ones(1, 4), torch.ones(1, 4), cfg)
    # the first masked leaves M2 = 0.0125 / 3 <= 0.04; the rest keep sg(w) u A, unclipped
    w = torch.exp(log_w)[0]
    assert float(loss.detach()) == pytest.approx(-float(1.5 * w[1:].sum()) / 4, rel=1e-5)
    assert stats.truncated_frac == pytest.approx(0.25) and stats.clip_frac == 0
    loss.backward()
    assert logp.grad[0, 0] == 0 and logp.grad[0, 1:].tolist() == pytest.approx((-1.5 * w[1:] / 4).tolist(), rel=1e-5)


def test_ess_tis_scales_the_step_by_the_effective_sample_size():
    cfg = LossConfig(correction="ess_tis", is_cap=2.0)
    logp = torch.zeros(1, 4, requires_grad=True)
    mu = -torch.log(torch.tensor([[1.0, 1.0, 2.0, 4.0]]))  # w = [1, 1, 2, 4]
    loss, stats = _loss(logp, logp.detach(), mu, torch.ones(1, 4), torch.ones(1, 4), cfg)
    ess = 8.0 ** 2 / (4 * 22.0)  # (sum w)^2 / (N sum w^2) = 0.727
    assert float(loss.detach()) == pytest.approx(-ess * (1 + 1 + 2 + 2) / 4, rel=1e-5)
    assert stats.truncated_frac == pytest.approx(0.25)  # w = 4 > C
    loss.backward()
    assert logp.grad[0].tolist() == pytest.approx([-ess / 4, -ess / 4, -2 * ess / 4, -2 * ess / 4], rel=1e-5)


def test_ipo_masks_by_the_probability_gap_where_a_ratio_mask_would_not():
    """A token whose probability went 0.01 -> 0.03 has ratio 1/3 (mis masks it) but a gap of 0.02
    (IPO keeps it); one that went 0.5 -> 0.1 has a gap of 0.4 (IPO masks it)."""
    p_prox, p_mu = torch.tensor([[0.5, 0.9, 0.01]]), torch.tensor([[0.1, 0.85, 0.03]])
    logp = torch.log(p_prox).requires_grad_(True)
    w = p_prox / p_mu
    args = (logp, logp.detach(), torch.log(p_mu), torch.ones(1, 3), torch.ones(1, 3))
    loss, stats = _loss(*args, LossConfig(correction="ipo", ipo_eps=0.3, is_cap=2.0))
    assert float(loss.detach()) == pytest.approx(-float(w[0, 1] + w[0, 2]) / 3, rel=1e-5)
    assert stats.truncated_frac == pytest.approx(1 / 3)
    loss_mis, stats_mis = _loss(*args, LossConfig(correction="mis", is_cap=2.0))
    assert float(loss_mis.detach()) == pytest.approx(-float(w[0, 1]) / 3, rel=1e-5)  # 5 and 1/3 both masked
    assert stats_mis.truncated_frac == pytest.approx(2 / 3)


def test_tis_temp_widens_the_cap_with_the_samples_temperature():
    """w = 2.2 at C = 2: truncated at T = 1 (cap 2), kept at T = 1.2 (cap 2^1.2 = 2.30)."""
    cfg = LossConfig(correction="tis_temp", is_cap=2.0)
    logp = torch.zeros(2, 1, requires_grad=True)
    mu = torch.full((2, 1), -math.log(2.2))
    loss, stats = _loss(logp, logp.detach(), mu, torch.ones(2, 1), torch.ones(2, 1), cfg,
                        temperature=torch.tensor([1.0, 1.2]))
    assert float(loss.detach()) == pytest.approx(-(2.0 + 2.2) / 2, rel=1e-5)
    assert stats.truncated_frac == pytest.approx(0.5)
    with pytest.raises(ValueError, match="needs each sample's temperature"):
        policy_loss(LossInputs(logp, logp.detach(), mu, torch.ones(2, 1), torch.ones(2, 1), torch.ones(2)), cfg)
