"""The learner at scale (issue 10): the split never changes the step (DESIGN.md §3). Micro-batches,
chunked log-probs, mini-batch updates with a fixed pi_prox, and memory set by the token budget."""


import pytest
import torch

from benchmarks.learner import step_peak_memory
from learner.groups import Group
from learner.logprobs import response_logprobs
from learner.loss import token_logprobs
from learner.trainer import Trainer, build_batch, pack
from pipeline.config import ConfigError
from tests.conftest import make_config


def _groups(vocab: int, count: int = 6, size: int = 4, seed: int = 0, rewards=None) -> list[Group]:
    """Groups of responses of varied lengths (so padding and per-response means matter); group 0 is
    all-correct and group 1 all-wrong (zero-variance: RL-ZVP rows), the others mixed; mu off-policy."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        responses = [torch.randint(3, vocab, (int(torch.randint(1, 12, (1,), generator=gen)),), generator=gen)
                     for _ in range(size)]
        r = [1.0] * size if i == 0 else [0.0] * size if i == 1 else [float((i + j) % 2) for j in range(size)]
        out.append(Group(lease_id=i, prompt_id=i, epoch=0, temperature=0.8 + 0.1 * i,
                         prompt=torch.randint(3, vocab, (int(torch.randint(3, 9, (1,), generator=gen)),), generator=gen),
                         responses=responses,
                         behaviour_logprobs=[-2.0 * torch.rand(len(x), generator=gen) for x in responses],
                         rewards=torch.tensor(rewards[i] if rewards else r), version_first=0, version_last=0))
    return out


def _grads(trainer: Trainer, batch, rows=None) -> list[torch.Tensor]:
    trainer.gradients(batch, torch.arange(len(batch.group)) if rows is None else rows)
    return [p.grad.detach().clone() for p in trainer.model.parameters()]


def _budget_for(batch, ways: int) -> int:
    """A token budget that cuts the batch into exactly `ways` micro-batches."""
    lengths = batch.attention_mask.sum(1).tolist()
    for budget in range(max(lengths), len(lengths) * max(lengths) + 1):
        if len(pack(lengths, budget)) == ways:
            return budget
    raise AssertionError(f"no budget splits the batch {ways} ways")


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
@pytest.mark.parametrize("correction,kind", [("tis", "grpo"), ("ppo_behaviour", "grpo"), ("mis", "grpo"),
                                             ("seq_mis", "grpo"), ("tis", "rlzvp")])
def test_micro_batched_gradient_is_the_one_piece_gradient(tiny_model, tmp_path, aggregation, correction, kind):
    cfg = make_config(tmp_path, "--loss.aggregation", aggregation, "--loss.correction", correction,
                      "--advantage.kind", kind, "--learner.micro_batch_tokens", "0", "--loss.is_cap", "50")
    trainer = Trainer(cfg, tiny_model)
    batch = build_batch(_groups(trainer.model.config.vocab_size), 0, cfg, trainer.pad_id)
    whole = _grads(trainer, batch)
    assert max(float(g.abs().max()) for g in whole) > 1e-4  # a gradient that could differ
    for ways in (1, 3, 8):
        budget = _budget_for(batch, ways)
        trainer.cfg = make_config(tmp_path, "--loss.aggregation", aggregation, "--loss.correction", correction,
                                  "--advantage.kind", kind, "--learner.micro_batch_tokens", str(budget),
                                  "--loss.is_cap", "50")
        assert len(trainer.micro_batches(batch, torch.arange(len(batch.group)))) == ways
        for g, ref in zip(_grads(trainer, batch), whole):
            assert torch.allclose(g, ref, atol=1e-5, rtol=1e-4), (ways, float((g - ref).abs().max()))


def test_a_micro_batch_normalised_by_its_own_tokens_would_be_caught(tiny_model, tmp_path, monkeypatch):
    """The equality above is not vacuous: normalising each micro-batch by its own token count (the
    classic gradient-accumulation bug) changes the gradient beyond its tolerance."""
    import learner.trainer as trainer_mod

    cfg = make_config(tmp_path, "--learner.micro_batch_tokens", "0")
    trainer = Trainer(cfg, tiny_model)
    batch = build_batch(_groups(trainer.model.config.vocab_size), 0, cfg, trainer.pad_id)
    whole = _grads(trainer, batch)
    own = lambda lengths, mode, norm: torch.full((len(lengths),), 1.0 / float(lengths.sum()))  # noqa: E731
    trainer.cfg = make_config(tmp_path, "--learner.micro_batch_tokens", str(_budget_for(batch, 3)))
    original = Trainer.gradients

    def per_micro_batch(self, batch, rows):  # coefficients over each micro-batch instead of the update
        self.optimizer.zero_grad(set_to_none=True)
        for mb in self.micro_batches(batch, rows):
            sub = batch.select(mb)
            sub.coef = own(sub.response_mask.sum(1), None, None)
            self._accumulate(sub)

    monkeypatch.setattr(trainer_mod.Trainer, "gradients", per_micro_batch)
    wrong = _grads(trainer, batch)
    monkeypatch.setattr(trainer_mod.Trainer, "gradients", original)
    assert max(float((g - r).abs().max()) for g, r in zip(wrong, whole)) > 1e-4


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


def test_learner_forward_matches_full_logits_at_each_samples_temperature(tiny_model, tmp_path):
    cfg = make_config(tmp_path, "--learner.logit_chunk_tokens", "3")
    trainer = Trainer(cfg, tiny_model)
    batch = build_batch(_groups(trainer.model.config.vocab_size), 0, cfg, trainer.pad_id)
    logp, ent = trainer.forward(batch)
    logits = trainer.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    mask = batch.response_mask.bool()
    assert torch.allclose(logp[mask], token_logprobs(logits, batch.targets, batch.temperature)[mask], atol=1e-5)
    full = torch.log_softmax(logits.detach(), -1)  # the entropy at T = 1 from the full logits
    assert torch.allclose(ent[mask], -(full.exp() * full).sum(-1)[mask], atol=1e-5)


def test_pi_prox_is_the_policy_at_the_start_of_the_batch_for_all_k_updates(tiny_model, tmp_path, monkeypatch):
    import copy

    import learner.trainer as trainer_mod

    cfg = make_config(tmp_path, "--learner.updates_per_batch", "3", "--learner.micro_batch_tokens", "60",
                      "--learner.lr", "1e-2")
    trainer = Trainer(cfg, tiny_model)
    start = copy.deepcopy(trainer.model)
    batch = build_batch(_groups(trainer.model.config.vocab_size), 0, cfg, trainer.pad_id)
    seen = []  # (update index, rows' prox, rows' logp under the current weights, rows' mu)
    real = trainer_mod.policy_loss
    updates = {"n": 0}
    real_step = trainer.optimizer.step

    def counting_step(*a, **k):
        updates["n"] += 1
        return real_step(*a, **k)

    def spy(logp, prox, mu, adv, mask, cfg_, **kw):
        seen.append((updates["n"], prox.detach().clone(), logp.detach().clone(), mu.clone(), mask.bool()))
        return real(logp, prox, mu, adv, mask, cfg_, **kw)

    monkeypatch.setattr(trainer_mod, "policy_loss", spy)
    trainer.optimizer.step = counting_step
    metrics = trainer.train_batch(batch)
    assert updates["n"] == 3 and metrics["updates"] == 3 and "update/2/clip_frac" in metrics
    assert {u for u, *_ in seen} == {0, 1, 2}
    # pi_prox in every update is the start policy's log-prob, computed by the learner (not vLLM's mu)
    start_trainer = Trainer(cfg, tiny_model)
    start_trainer.model = start
    ref = start_trainer.logprobs(batch)
    for u, prox, logp, mu, mask in seen:
        assert not torch.allclose(prox[mask], mu[mask], atol=1e-3)
    later = [(prox, logp, mask) for u, prox, logp, mu, mask in seen if u > 0]
    assert later
    for prox, logp, mask in later:
        # the current policy has moved away from pi_prox after the first update ...
        assert float((logp[mask] - prox[mask]).abs().max()) > 1e-4
    # ... and pi_prox equals the start policy row by row (match each micro-batch's rows by their mu)
    on = batch.response_mask.bool()
    flat_ref = {round(float(m), 6): float(r) for m, r in zip(batch.mu[on], ref.detach()[on])}
    for _, prox, _, mu, mask in seen:
        for m, p in zip(mu[mask].tolist(), prox[mask].tolist()):
            assert p == pytest.approx(flat_ref[round(m, 6)], abs=1e-5)


def test_a_sample_that_can_never_fit_the_budget_is_a_startup_error(tiny_model, tmp_path):
    from learner.loop import Learner
    from pipeline.data import load_problems

    cfg = make_config(tmp_path, "--learner.micro_batch_tokens", "8")
    cfg.run_dir.mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"learner.micro_batch_tokens.*generator.max_tokens"):
        Learner(cfg, tiny_model, load_problems(cfg.data))


def test_memory_of_a_step_is_set_by_the_token_budget_not_the_batch(tmp_path):
    """16x the samples at a fixed budget: the step's peak memory (a child process's peak RSS) barely
    grows. The model has a 32k vocabulary, so one-piece logits of the 16x batch would take ~1.6 GB."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    path = tmp_path / "model"
    Qwen2ForCausalLM(Qwen2Config(vocab_size=32000, hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                 pad_token_id=0)).save_pretrained(path)

    def peak(scale: int, budget: int) -> int:
        return step_peak_memory(str(path), scale, budget)

    small, large = peak(1, 1024), peak(16, 1024)
    assert large < 1.3 * small + 50_000, (small, large)  # KB
    one_piece = peak(16, 0)
    assert one_piece > 2 * large  # the same batch in one piece: the check is not vacuous
