"""The trainer (issue 10): the split never changes the step (docs/design.md §3). Micro-batches, mini-batch
updates with a fixed pi_prox, memory set by the token budget; each group's advantage reaches its own
rows, and RL-ZVP's token advantage only the zero-variance ones."""

import copy

import pytest
import torch

import learner.training.trainer as trainer_mod
from learner.training.groups import Group
from learner.training.logprobs import token_logprobs
from learner.training.trainer import Trainer
from learner.training.batch import build_batch, pack
from pipeline.config import ConfigError
from tests.builders import group, rule
from tests.conftest import make_config

# Per-row offsets of mu from the model's own log-probs: log w = log pi_prox - log mu = -offset. With
# loss.is_cap = 50 (|log C| = 3.9), rows at +-6 are masked (mis, seq_mis) or truncated (tis), the
# others survive: every correction has rows of both kinds, whatever the model's numerics.
MU_OFFSETS = [0.1, -0.4, 0.8, 6.0, -0.2, -6.0, 0.3]


def _trainer(tiny_model, tmp_path, *overrides: str) -> Trainer:
    return Trainer.from_config(make_config(tmp_path, *overrides), tiny_model)


def _groups(vocab: int, cfg, count: int = 6, size: int = 4, seed: int = 0) -> list[Group]:
    """Groups of responses of varied lengths (so padding and per-response means matter); group 0 is
    all-correct and group 1 all-wrong (zero-variance: RL-ZVP rows), the others mixed. Their mu is a
    placeholder: `_batch` sets it from the model."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        responses = [torch.randint(3, vocab, (int(torch.randint(1, 12, (1,), generator=gen)),), generator=gen)
                     for _ in range(size)]
        r = [1.0] * size if i == 0 else [0.0] * size if i == 1 else [float((i + j) % 2) for j in range(size)]
        g = Group(lease_id=i, prompt_id=i, epoch=0, temperature=0.8 + 0.1 * i,
                  prompt=torch.randint(3, vocab, (int(torch.randint(3, 9, (1,), generator=gen)),), generator=gen),
                  responses=responses, behaviour_logprobs=[torch.zeros(len(x)) for x in responses],
                  rewards=torch.tensor(r), version_first=0, version_last=0)
        g.advantage = rule(cfg).of(g.rewards, g.outcome, [len(x) for x in responses])
        out.append(g)
    return out


def _batch(trainer: Trainer, cfg):
    """The batch of `_groups`, with mu = the model's own log-probs at each row's T + `MU_OFFSETS`."""
    batch = build_batch(_groups(trainer.model.config.vocab_size, cfg), 0, trainer.pad_id)
    offsets = torch.tensor([MU_OFFSETS[i % len(MU_OFFSETS)] for i in range(len(batch.group))])
    batch.mu = (trainer.logprobs(batch).detach() + offsets[:, None]) * batch.response_mask
    return batch


def _grads(trainer: Trainer, batch, rows=None) -> list[torch.Tensor]:
    trainer.gradients(batch, torch.arange(len(batch.group)) if rows is None else rows)
    return [p.grad.detach().clone() for p in trainer.model.parameters()]


def _budget_for(batch, ways: int, packed: bool = True) -> int:
    """A token budget that cuts the batch into exactly `ways` micro-batches."""
    lengths = batch.attention_mask.sum(1).tolist()
    for budget in range(max(lengths), len(lengths) * max(lengths) + 1):
        if len(pack(lengths, budget, packed=packed)) == ways:
            return budget
    raise AssertionError(f"no budget splits the batch {ways} ways")


@pytest.fixture
def loss_inputs(monkeypatch):
    """Every LossInputs the trainer hands the loss, recorded (the loss itself runs as it is)."""
    seen = []
    real = trainer_mod.policy_loss

    def spy(x, cfg):
        seen.append(copy.copy(x))
        return real(x, cfg)

    monkeypatch.setattr(trainer_mod, "policy_loss", spy)
    return seen


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
@pytest.mark.parametrize("correction,kind", [("tis", "grpo"), ("ppo_behaviour", "grpo"), ("mis", "grpo"),
                                             ("seq_mis", "grpo"), ("tis", "rlzvp")])
def test_micro_batched_gradient_is_the_one_piece_gradient(tiny_model, tmp_path, aggregation, correction, kind):
    common = ["--loss.aggregation", aggregation, "--loss.correction", correction, "--advantage.kind", kind,
              "--loss.is_cap", "50"]
    """The reference is the padded batch in one piece; packed micro-batches of 1, 3 and 8 (samples
    end to end) and padded ones of 3 must give its gradient."""
    cfg = make_config(tmp_path, *common, "--learner.micro_batch_tokens", "0", "--learner.packing", "false")
    trainer = Trainer.from_config(cfg, tiny_model)
    batch = _batch(trainer, cfg)
    sums = trainer.gradients(batch, torch.arange(len(batch.group)))
    whole = [p.grad.detach().clone() for p in trainer.model.parameters()]
    assert max(float(g.abs().max()) for g in whole) > 1e-4  # a gradient that could differ
    if correction != "ppo_behaviour":  # the case is not vacuous: some rows are cut, some survive
        assert 0.0 < sums.truncated_frac < 1.0, sums.truncated_frac
    for ways, packed in ((1, True), (3, True), (8, True), (3, False)):
        split = _trainer(tiny_model, tmp_path, *common, "--learner.packing", str(packed).lower(),
                         "--learner.micro_batch_tokens", str(_budget_for(batch, ways, packed)))
        assert len(split.micro_batches(batch, torch.arange(len(batch.group)))) == ways
        for g, ref in zip(_grads(split, batch), whole):
            assert torch.allclose(g, ref, atol=1e-5, rtol=1e-4), (ways, packed, float((g - ref).abs().max()))


class OwnTokensTrainer(Trainer):
    """A mutant: each micro-batch normalised by its own token count (the classic gradient-accumulation bug)."""

    def gradients(self, batch, rows):
        self.optimizer.zero_grad(set_to_none=True)
        for mb in self.micro_batches(batch, rows):
            sub = batch.select(mb)
            sub.coef = torch.full((len(mb),), 1.0 / float(sub.response_mask.sum()))
            self._accumulate(sub)


def test_a_micro_batch_normalised_by_its_own_tokens_would_be_caught(tiny_model, tmp_path):
    """The equality above is not vacuous: the mutant's gradient differs beyond its tolerance."""
    cfg = make_config(tmp_path, "--learner.micro_batch_tokens", "0")
    trainer = Trainer.from_config(cfg, tiny_model)
    batch = _batch(trainer, cfg)
    whole = _grads(trainer, batch)
    mutant_cfg = make_config(tmp_path, "--learner.micro_batch_tokens", str(_budget_for(batch, 3)))
    wrong = _grads(OwnTokensTrainer.from_config(mutant_cfg, tiny_model), batch)
    assert max(float((g - r).abs().max()) for g, r in zip(wrong, whole)) > 1e-4


def test_each_groups_advantage_reaches_its_own_rows():
    """GRPO normalises within a group, never across the batch: [1, 0, 0, 0] and [1, 1, 1, 0] give
    (1.5, -0.5, -0.5, -0.5) and (0.5, 0.5, 0.5, -1.5) on their own rows, over every response token."""
    a = group([1.0, 0.0, 0.0, 0.0], [1, 2], [[3], [4, 5], [6], [7]], [[-0.1], [-0.1, -0.1], [-0.1], [-0.1]])
    b = group([1.0, 1.0, 1.0, 0.0], [1], [[3, 4, 5], [6], [7], [8]], [[-0.1] * 3, [-0.1], [-0.1], [-0.1]], lease_id=1)
    batch = build_batch([a, b], 0, pad_id=0)
    per_row = [float(batch.adv[i][batch.response_mask[i].bool()].unique()) for i in range(8)]
    assert per_row == pytest.approx([1.5, -0.5, -0.5, -0.5, 0.5, 0.5, 0.5, -1.5], rel=1e-5)
    assert batch.group.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_rlzvp_token_advantages_go_to_zero_variance_rows_only(tiny_model, tmp_path, loss_inputs):
    cfg = make_config(tmp_path, "--advantage.kind", "rlzvp", "--zvp.alpha", "0.5")
    trainer = Trainer.from_config(cfg, tiny_model)
    batch = _batch(trainer, cfg)
    grpo_adv = batch.adv.clone()
    trainer.gradients(batch, torch.arange(len(batch.group)))
    (x,) = loss_inputs
    (rows,) = trainer.micro_batches(batch, torch.arange(len(batch.group)))  # the micro-batch's row order
    for k, i in enumerate(rows.tolist()):
        on = x.mask[k].bool()
        if batch.zvp[i] == 0:  # a mixed group's row keeps its GRPO advantage
            assert torch.equal(x.adv[k][on], grpo_adv[i][:len(on)][on])
        elif batch.zvp[i] > 0:  # positive zero-variance: alpha * H_t
            assert torch.allclose(x.adv[k][on], 0.5 * x.entropy[k][on])
        else:  # negative: -alpha * (max_k H_k - H_t)
            h = x.entropy[k][on]
            assert torch.allclose(x.adv[k][on], -0.5 * (h.max() - h))
    assert (batch.zvp != 0).any() and (batch.zvp == 0).any()


def test_learner_forward_matches_full_logits_at_each_samples_temperature(tiny_model, tmp_path):
    cfg = make_config(tmp_path, "--learner.logit_chunk_tokens", "3")
    trainer = Trainer.from_config(cfg, tiny_model)
    batch = _batch(trainer, cfg)
    logp, ent = trainer.forward(batch)
    logits = trainer.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    mask = batch.response_mask.bool()
    assert torch.allclose(logp[mask], token_logprobs(logits, batch.targets, batch.temperature)[mask], atol=1e-5)
    full = torch.log_softmax(logits.detach(), -1)  # the entropy at T = 1 from the full logits
    assert torch.allclose(ent[mask], -(full.exp() * full).sum(-1)[mask], atol=1e-5)


def test_a_packed_sample_attends_to_itself_only(tiny_model, tmp_path):
    """All rows packed into one sequence: changing one sample's tokens moves its own log-probs and
    no other's (a mask that let attention cross sample boundaries would move its neighbours')."""
    cfg = make_config(tmp_path, "--learner.micro_batch_tokens", "0")
    trainer = Trainer.from_config(cfg, tiny_model)
    batch = _batch(trainer, cfg)
    assert len(trainer.micro_batches(batch, torch.arange(len(batch.group)))) == 1
    with torch.no_grad():
        before = trainer.logprobs(batch)
        changed = 5
        batch.input_ids[changed, 1:3] = (batch.input_ids[changed, 1:3] + 7) % trainer.model.config.vocab_size
        after = trainer.logprobs(batch)
    moved = (after - before).abs().amax(1)
    assert float(moved[changed]) > 1e-3
    others = torch.arange(len(moved)) != changed
    assert float(moved[others].max()) < 1e-5, moved


def test_packed_position_ids_restart_at_zero_in_every_sample():
    """Rotary embeddings would hide a constant offset from the loss (it shifts every q and k alike), so
    the ids themselves are checked."""
    from learner.training.packing import packed_row

    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0], [1, 2, 3, 4]])
    mask = (ids != 0).long()
    mask[2] = 1
    row = packed_row(ids, mask)
    assert row["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    assert row["input_ids"].tolist() == [[5, 6, 7, 8, 9, 1, 2, 3, 4]]
    assert row["cu_seq_lens_q"].tolist() == [0, 3, 5, 9] and row["max_length_q"] == 4


def test_packed_micro_batches_hold_each_row_once_within_every_share_of_the_budget():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 60, (37,), generator=gen).tolist()
    for world in (1, 2, 3):
        padded = pack(lengths, 120, world)
        packed = pack(lengths, 120, world, packed=True)
        assert sorted(i for mb in packed for i in mb) == list(range(37))
        for mb in packed:
            assert all(sum(lengths[i] for i in mb[r::world]) <= 120 for r in range(world))
        assert len(packed) < len(padded)  # real tokens fill micro-batches that padding would have cut
    with pytest.raises(ValueError, match="exceeds learner.micro_batch_tokens = 50"):
        pack(lengths, 50, packed=True)


def test_pi_prox_is_the_policy_at_the_start_of_the_batch_for_all_k_updates(tiny_model, tmp_path, loss_inputs):
    cfg = make_config(tmp_path, "--learner.updates_per_batch", "3", "--learner.micro_batch_tokens", "60",
                      "--learner.lr", "1e-2")
    trainer = Trainer.from_config(cfg, tiny_model)
    start = Trainer.from_config(cfg, tiny_model)  # the same weights, never updated
    batch = _batch(trainer, cfg)
    updates = {"n": 0}
    real_step = trainer.optimizer.step
    update_of = []  # the update each recorded LossInputs belongs to

    def counting_step(*a, **k):
        updates["n"] += 1
        return real_step(*a, **k)

    trainer.optimizer.step = counting_step
    real_accumulate = trainer._accumulate
    trainer._accumulate = lambda sub: (update_of.append(updates["n"]), real_accumulate(sub))[1]
    metrics = trainer.train_batch(batch).metrics
    assert updates["n"] == 3 and metrics["updates"] == 3 and "update/2/clip_frac" in metrics
    assert set(update_of) == {0, 1, 2} and len(update_of) == len(loss_inputs)
    # pi_prox in every update is the start policy's log-prob, computed by the learner (not vLLM's mu)
    ref = start.logprobs(batch)
    for x in loss_inputs:
        m = x.mask.bool()
        assert not torch.allclose(x.prox[m], x.mu[m], atol=1e-3)
    later = [x for u, x in zip(update_of, loss_inputs) if u > 0]
    assert later
    for x in later:  # the current policy has moved away from pi_prox after the first update ...
        m = x.mask.bool()
        assert float((x.logp[m].detach() - x.prox[m]).abs().max()) > 1e-4
    # ... and pi_prox equals the start policy row by row (match each micro-batch's rows by their mu)
    on = batch.response_mask.bool()
    flat_ref = {round(float(m), 6): float(r) for m, r in zip(batch.mu[on], ref.detach()[on])}
    for x in loss_inputs:
        m = x.mask.bool()
        for mu, p in zip(x.mu[m].tolist(), x.prox[m].tolist()):
            assert p == pytest.approx(flat_ref[round(mu, 6)], abs=1e-5)


def test_a_sample_that_can_never_fit_the_budget_is_a_startup_error(tiny_model, tmp_path):
    from learner.session import open_learner
    from pipeline.data import load_problems

    cfg = make_config(tmp_path, "--learner.micro_batch_tokens", "8")
    cfg.run_dir.mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"learner.micro_batch_tokens.*generator.max_tokens"):
        open_learner(cfg, tiny_model, load_problems(cfg.data), launcher=None)


def test_flash_attention_only_for_bf16_compute_on_a_gpu(monkeypatch):
    """flash-attention has no fp32 kernels: an fp32 learner on a GPU packs through packed_sdpa."""
    import importlib.util

    from learner.training import packing

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "flash_attn" else None)
    cuda = torch.device("cuda", 0)
    assert packing.attention_for(cuda, "bf16-mixed") == packing.attention_for(cuda, "bf16") == "flash_attention_2"
    assert packing.attention_for(cuda, "fp32") == packing.PACKED_SDPA
    assert packing.attention_for(torch.device("cpu"), "bf16") == packing.PACKED_SDPA
