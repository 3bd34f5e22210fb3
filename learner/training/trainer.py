"""The policy model, its optimiser, and one optimiser step on a rollout batch of complete groups.

One step (one weight version) is `learner.updates_per_batch` = k optimiser updates. The rollout batch is
shuffled by group and split into k parts; each update accumulates gradients over micro-batches of at
most `learner.micro_batch_tokens` tokens (packed end to end, `learner.packing`). The loss's normaliser is the update's, never a
micro-batch's (`learner/training/loss.py`, `aggregation_coef`), so however the samples are cut, the gradient is
that of the update in one piece (docs/design.md §3, "the split never changes the step"). The learner's
peak memory is thus set by the token budget and the logits chunk (`learner/training/logprobs.py`), not by the
batch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol
from pathlib import Path

import torch

from learner.training import checkpoint
from learner.training.advantages import zvp_token_advantages
from learner.training.clock import StageClock
from learner.training.batch import Batch, build_batch, pack, split_updates
from learner.training.groups import Group
from learner.training.logprobs import response_logprobs, token_logprobs
from learner.training.packing import attention_for, packed_row
from learner.training.loss import LossInputs, LossSums, aggregation_coef, policy_loss
from pipeline.probe import probe_tokens
from pipeline.config import Config, LearnerConfig, LossConfig, ZVPConfig
from pipeline.models import load_causal_lm


@dataclass
class StepResult:
    """What one optimiser step reports: its metrics, and per group of its batch the tokens whose IS
    weight was cut (the learner bins these by H and length: learner/observe/stats.py)."""

    metrics: dict[str, float]
    cut_by_group: dict[int, list[float]]  # batch group index -> [cut tokens, tokens]


PRECISION_DTYPE = {"fp32": "float32", "bf16-mixed": "float32", "bf16": "bfloat16"}


def host_buffer(layout: list[tuple[str, tuple[int, ...]]], dtype: torch.dtype, pin: bool
                ) -> list[tuple[str, torch.Tensor]]:
    """Tensors of the given names and shapes, views of one host block (pinned if `pin`)."""
    sizes = [math.prod(shape) for _, shape in layout]
    block = torch.empty(sum(sizes), dtype=dtype, pin_memory=pin)
    out, offset = [], 0
    for (name, shape), n in zip(layout, sizes):
        out.append((name, block[offset:offset + n].view(shape)))
        offset += n
    return out


class TrainerLike(Protocol):
    """What the learner's parts need of a trainer (`Trainer`, the sharded one, or a test's stand-in):
    the loop, the stepper, the weights' publisher and the checkpoint writer."""

    version: int  # optimiser steps taken: the weights' version
    device: torch.device
    dtype: str
    concurrent_snapshot: bool  # the weights may be copied beside a step's forward pass

    def step(self, groups: list[Group], before_update: Callable[[], object] | None = None,
             on_batch: Callable[[Batch], None] | None = None) -> StepResult: ...
    def probe_logprobs(self) -> list[float]: ...
    def host_weights(self, dtype: torch.dtype, into: list[tuple[str, torch.Tensor]] | None = None
                     ) -> list[tuple[str, torch.Tensor]]: ...
    def full_state(self) -> tuple[dict | None, dict]: ...
    def load_optimizer(self, ckpt: Path) -> None: ...
    def keep_alive(self) -> None: ...


class Trainer:
    # The learner may copy the weights on another thread while a step runs (see learner/training/stepper.py);
    # a sharded trainer may not, as the copy is a collective.
    concurrent_snapshot = True
    world = 1  # training processes that share each micro-batch (learner/training/sharded.py)

    def __init__(self, model_path: str, lc: LearnerConfig, loss: LossConfig, zvp: ZVPConfig, seed: int,
                 max_tokens: int, dtype: str = "float32"):
        """`max_tokens`: the generation length (Dr. GRPO's constant unless `loss.norm_tokens` sets it);
        `dtype`: the weights' dtype on the generators (how closely their probe must match)."""
        self.lc, self.loss, self.zvp, self.seed, self.dtype = lc, loss, zvp, seed, dtype
        self.norm_tokens = loss.norm_tokens or max_tokens
        self.device = self._pick_device()
        model = load_causal_lm(model_path, PRECISION_DTYPE[lc.precision])
        if lc.packing:
            model.set_attn_implementation(attention_for(self.device, lc.precision))
        if lc.activation_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model = self._distribute(model.to(self.device))
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lc.lr, weight_decay=lc.weight_decay)
        self.version = 0  # number of optimiser steps taken: the weights' version
        self.pad_id = self.model.config.pad_token_id or 0
        self.loss_scale = 1.0  # a sharded trainer's rows weigh in as their share of the whole
        self.clock = StageClock(self.device)  # seconds per stage of each step, in its metrics

    @classmethod
    def from_config(cls, cfg: Config, model_path: str) -> "Trainer":
        return cls(model_path, cfg.learner, cfg.loss, cfg.zvp, cfg.run.seed, cfg.generator.max_tokens, cfg.model.dtype)

    def _pick_device(self) -> torch.device:
        return torch.device(self.lc.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def _distribute(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model as this trainer holds it: whole here; sharded in learner/training/sharded.py."""
        return model

    def keep_alive(self) -> None:
        """Between collectives, a sharded trainer keeps its followers waiting (learner/training/sharded.py)."""

    def load_optimizer(self, ckpt: Path) -> None:
        """The optimiser state saved in checkpoint folder `ckpt` (resuming a run)."""
        self.optimizer.load_state_dict(checkpoint.optimizer_state(ckpt))

    def named_weights(self) -> list[tuple[str, torch.Tensor]]:
        # named_parameters() lists tied embeddings once, which is what the engine's loader expects
        return list(self.model.named_parameters())

    @torch.no_grad()
    def host_weights(self, dtype: torch.dtype, into: list[tuple[str, torch.Tensor]] | None = None
                     ) -> list[tuple[str, torch.Tensor]]:
        """The weights copied to host memory in `dtype`, one parameter at a time: the device never
        holds more than one parameter's extra full copy (a sharded trainer gathers each in turn).
        They land in `into` (an earlier copy no longer needed), else in a new host buffer: one block
        for the whole model (pinned beside a GPU, so they go back to it fast; the pinned allocator
        rounds each block up to a power of two, so one block wastes far less than one per tensor)."""
        if into is None:
            layout = [(name, tuple(p.shape)) for name, p in self.model.named_parameters()]
            into = host_buffer(layout, dtype, pin=self.device.type == "cuda")
        for (name, t), (host_name, host) in zip(self._full_parameters(), into, strict=True):
            assert name == host_name, f"snapshot buffer laid out for {host_name}, given {name}"
            # cast where the tensor is: a copy that also casts would go through a pageable host
            # temporary in the source dtype and cast on the CPU
            host.copy_(t.detach().to(dtype))
        return into

    def _full_parameters(self):
        yield from self.model.named_parameters()

    @torch.no_grad()
    def probe_logprobs(self) -> list[float]:
        """Log-probs (T = 1) of the fixed probe sequence, to compare with what a generator reports."""
        tokens = torch.tensor([probe_tokens(self.model.config.vocab_size)], device=self.device)
        with self._autocast():
            logits = self.model(input_ids=tokens).logits[:, :-1]
        return token_logprobs(logits.float(), tokens[:, 1:], torch.ones(1, device=self.device))[0].tolist()

    def full_state(self) -> tuple[dict | None, dict]:
        """(model state dict, or None for the model's own; optimizer state dict) for a checkpoint."""
        return None, self.optimizer.state_dict()

    # ---- the forward pass --------------------------------------------------------------------------

    def _autocast(self):
        if self.lc.precision == "bf16-mixed":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _sample_temperature(self, batch: Batch) -> torch.Tensor:
        if self.loss.logprob_temperature == "sample":
            return batch.temperature
        return torch.ones_like(batch.temperature)

    def forward(self, batch: Batch, entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(log pi_theta of the targets at each sample's T, entropy at T = 1 or, under
        `zvp.entropy_temperature = "sample"`, at the sample's T), both [N, S-1] and zero off the
        response. Only response positions meet the output layer, `learner.logit_chunk_tokens` at a time."""
        mask = batch.response_mask.bool()
        per_token = lambda t: t.unsqueeze(1).expand_as(mask)[mask]  # noqa: E731 - [N] -> [tokens]
        t_entropy = batch.temperature if self.zvp.entropy_temperature == "sample" else torch.ones_like(batch.temperature)
        # The output layer's matmuls under autocast too (bf16 on a GPU under bf16-mixed, not fp32
        # GEMMs); the logits go to fp32 before the softmax (learner/training/logprobs.py).
        with self._autocast():
            hidden = self._response_hidden(batch, mask)
            lp, ent = response_logprobs(hidden, self.model.lm_head.weight, batch.targets[mask],
                                        per_token(self._sample_temperature(batch)),
                                        per_token(t_entropy) if entropy else None, self.lc.logit_chunk_tokens)
        logp = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
        logp = logp.masked_scatter(mask, lp)
        if ent is None:
            return logp, None
        return logp, torch.zeros_like(logp).masked_scatter(mask, ent)

    def _response_hidden(self, batch: Batch, mask: torch.Tensor) -> torch.Tensor:
        """The last hidden state (after the final norm: what the output layer reads) at each position
        that predicts a response token ([tokens, H], in the row-major order of `mask` [N, S-1]). The
        whole model runs (so a sharded root gathers its parameters as usual), but the output layer
        only at one position; the hidden states meet it chunk by chunk in `response_logprobs`."""
        keep = dict(logits_to_keep=1, output_hidden_states=True, use_cache=False)
        if not self.lc.packing:
            out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **keep)
            return out.hidden_states[-1][:, :-1][mask]
        # Packed: the rows' real tokens end to end in one row, attention kept inside each sample
        # (learner/training/packing.py). Padding is on the right, so row i's position t is at start_i + t.
        row = packed_row(batch.input_ids, batch.attention_mask)
        out = self.model(**row, **keep)
        starts = row["cu_seq_lens_q"][:-1].long()
        at = starts[:, None] + torch.arange(mask.shape[1], device=mask.device)
        return out.hidden_states[-1][0, at[mask]]

    def logprobs(self, batch: Batch) -> torch.Tensor:
        return self.forward(batch, entropy=False)[0]

    def _fill_zvp(self, batch: Batch, entropy: torch.Tensor) -> None:
        """RL-ZVP token advantages from the detached entropy of the training policy (docs/algorithms.md §3)."""
        for i in (batch.zvp != 0).nonzero().flatten().tolist():
            pos = batch.response_mask[i].bool()
            batch.adv[i, pos] = zvp_token_advantages(entropy[i][pos], bool(batch.zvp[i] > 0), self.zvp.alpha)

    # ---- the step ----------------------------------------------------------------------------------

    def step(self, groups: list[Group], before_update: Callable[[], object] | None = None,
             on_batch: Callable[[Batch], None] | None = None) -> StepResult:
        """One optimiser step (k updates) on `groups`; `before_update` runs after the first backward
        pass, just before the weights change (the learner uses it to wait for a copy of them);
        `on_batch` sees the batch as built, before it trains (an observer: learner/observe/events.py)."""
        batch = build_batch(groups, self.version, self.pad_id)
        if on_batch is not None:
            on_batch(batch)
        return self.train_batch(batch, before_update)

    def micro_batches(self, batch: Batch, rows: torch.Tensor) -> list[torch.Tensor]:
        """`rows` of `batch` cut into micro-batches by the token budget (whole rows, never split)."""
        lengths = batch.lengths[rows].tolist()
        return [rows[mb] for mb in pack(lengths, self.lc.micro_batch_tokens, self.world, self.lc.packing)]

    def _positions_run(self, batch: Batch, rows: torch.Tensor) -> int:
        """Positions the model runs for micro-batch `rows` (all processes' shares): real tokens when
        packed, rows x the longest when padded."""
        lengths = batch.lengths[rows]
        return int(lengths.sum()) if self.lc.packing else len(rows) * int(lengths.max())

    def _share(self, rows: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """(the rows of a micro-batch this process runs, whether they count): all of them here."""
        return rows, True

    @torch.no_grad()
    def proximal(self, batch: Batch) -> torch.Tensor:
        """log pi_prox of every row: the policy at the start of the rollout batch, one forward pass
        without gradient (needed when k > 1: from the second update on, pi_theta has moved)."""
        prox = torch.zeros_like(batch.mu)
        for mb in self.micro_batches(batch, torch.arange(len(batch.group))):
            mine, counts = self._share(mb)
            logp = self.logprobs(batch.select(mine).to(self.device)).cpu()
            if counts:
                prox[mine, :logp.shape[1]] = logp
        return self._gather_rows(prox)

    def _gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Per-row values each process filled for its own rows, completed for all rows (one device: as they are)."""
        return rows

    def updates(self, batch: Batch) -> list[torch.Tensor]:
        """The rows of each of the step's k updates (`learner.updates_per_batch`, at most one per group)."""
        n_groups = int(batch.group.max()) + 1
        k = min(self.lc.updates_per_batch, n_groups)
        return [torch.isin(batch.group, g).nonzero().flatten() for g in split_updates(n_groups, k, self.seed + self.version)]

    def train_batch(self, batch: Batch, before_update: Callable[[], object] | None = None) -> StepResult:
        """k optimiser updates on the rollout batch, one weight version (docs/algorithms.md §5, mini-batches)."""
        updates = self.updates(batch)
        k = len(updates)
        if k > 1:
            with self.clock.stage("prox"):
                batch.prox = self.proximal(batch)  # pi_prox: the policy at the start of the batch, fixed for all k
        metrics: dict = {}
        total = LossSums()
        for u, rows in enumerate(updates):
            sums = self.gradients(batch, rows)
            if u == 0 and before_update is not None:
                with self.clock.stage("snapshot"):  # waiting for the copy of the weights about to change
                    before_update()
            with self.clock.stage("optimizer"):
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.lc.grad_clip)
                if hasattr(grad_norm, "full_tensor"):  # sharded parameters: the norm over every shard
                    grad_norm = grad_norm.full_tensor()
                self.optimizer.step()
            total += sums
            if k > 1:
                metrics[f"update/{u}/clip_frac"] = sums.clip_frac
                metrics[f"update/{u}/grad_norm"] = float(grad_norm)
        self.version += 1
        metrics.update(asdict(total.stats()), **total.gap_by_lag())
        metrics.update(loss=total.loss / k, grad_norm=float(grad_norm), updates=k, entropy=total.entropy_mean,
                       tokens=int(total.tokens), response_len=float(batch.response_lengths.float().mean()),
                       padding_frac=1.0 - float(batch.lengths.sum()) / max(total.padded, 1.0),
                       **self.clock.take())
        return StepResult(metrics, total.cut_by_group)

    def gradients(self, batch: Batch, rows: torch.Tensor) -> LossSums:
        """The gradient of one update (`rows` of the batch) in the parameters' .grad, accumulated
        over micro-batches; the loss coefficients are the update's (`aggregation_coef`)."""
        lengths = batch.response_lengths.float()
        batch.coef = torch.zeros(len(batch.group))
        batch.coef[rows] = aggregation_coef(lengths[rows], self.loss.aggregation, self.norm_tokens)
        self.optimizer.zero_grad(set_to_none=True)
        sums = LossSums()
        for mb in self.micro_batches(batch, rows):
            sums.padded += self._positions_run(batch, mb)
            mine, counts = self._share(mb)
            sub = batch.select(mine)
            if not counts:
                sub.coef = torch.zeros_like(sub.coef)  # takes part in the collectives, adds nothing
            part = self._accumulate(sub.to(self.device))
            if counts:
                sums += part
        return sums

    def _accumulate(self, batch: Batch) -> LossSums:
        """Forward and backward of one micro-batch; its gradient adds to the update's."""
        with self.clock.stage("forward"):
            logp, entropy = self.forward(batch)
            self._fill_zvp(batch, entropy)
            # With one update per batch, pi_prox is pi_theta at the start of the step: detaching gives it.
            prox = batch.prox if batch.prox is not None else logp.detach()
            loss, sums = policy_loss(LossInputs(logp, prox, batch.mu, batch.adv, batch.response_mask, batch.coef,
                                                batch.token_lag, entropy, batch.group, batch.temperature), self.loss)
        with self.clock.stage("backward"):
            (loss * self.loss_scale).backward()
        return sums
