"""Log-probs at each sample's own temperature (docs/design.md §3); chunked equals unchunked."""

import torch

from learner.training.logprobs import response_logprobs, token_logprobs


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


def test_chunked_logprobs_and_entropies_equal_the_unchunked_ones():
    torch.manual_seed(0)
    P, H, V = 37, 16, 50
    hidden = torch.randn(P, H, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V, H, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(V, (P,))
    temps = torch.rand(P, dtype=torch.float64) + 0.6
    logits = hidden @ weight.T  # the unchunked reference, all in float64
    ref_lp = torch.log_softmax(logits / temps[:, None], -1).gather(-1, targets[:, None]).squeeze(-1)
    full = torch.log_softmax(logits.detach(), -1)
    ref_ent = -(full.exp() * full).sum(-1)
    g_ref = torch.autograd.grad((ref_lp * torch.arange(P)).sum(), (hidden, weight))
    for chunk in (1, 5, 64):
        lp, ent = response_logprobs(hidden, weight, targets, temps, torch.ones(P, dtype=torch.float64), chunk)
        assert lp.dtype == torch.float64 and torch.allclose(lp, ref_lp, atol=1e-6)
        assert torch.allclose(ent, ref_ent, atol=1e-6)
        g = torch.autograd.grad((lp * torch.arange(P)).sum(), (hidden, weight))
        for a, b in zip(g, g_ref):
            assert torch.allclose(a, b, atol=1e-6)
