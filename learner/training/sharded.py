"""The learner's model sharded across several training processes with FSDP2, under `torchrun`.

Rank 0 is the learner: it runs the whole loop (leases, generators, broadcasts, checkpoints) as
on one device. The other ranks only hold their shard of the weights and optimiser state and follow:
before each collective, rank 0 tells them what comes next (a step on this batch, gather the weights,
score the probe, gather a checkpoint, load a checkpoint's optimiser state, stop) and every rank
takes part. Micro-batches are planned over the whole batch, the same on every rank (each gets every
row's lengths), and each rank trains every world-th row of each, packed, and receives the tokens of
those rows only, in host memory; the loss coefficients are the whole update's, and the loss is
scaled by the world size, so FSDP's averaged gradient is the one-device gradient (docs/algorithms.md §5).

Collectives must run in the same order on every rank, so each operation holds one lock from the
moment rank 0 tells the followers to its end, whichever of the learner's threads calls it.
"""

from __future__ import annotations

import datetime
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from learner.training import checkpoint
from learner.training.groups import Group
from learner.training.trainer import Trainer
from learner.training.batch import Batch, build_batch
from pipeline.config import Config
from pipeline.model_settings import derive

STEP, WEIGHTS, PROBE, STATE, LOAD, STOP, ALIVE = range(1, 8)

# Batch fields as they cross the training group, in host memory (gloo's half of the group: a whole
# padded batch never lands on a GPU for the trip). Every rank gets every row's per-row fields (the
# micro-batch plan and the loss's normaliser read them); the per-token ones, the bulk, go to each rank
# for its own rows only. (targets is input_ids shifted, rebuilt on arrival; tail: S or S-1 columns.)
_PER_ROW = [("zvp", torch.float32), ("temperature", torch.float32), ("lag", torch.long), ("group", torch.long),
            ("lengths", torch.long), ("response_lengths", torch.long)]
_PER_TOKEN = [("input_ids", torch.long, 0), ("attention_mask", torch.long, 0), ("response_mask", torch.float32, 1),
              ("mu", torch.float32, 1), ("adv", torch.float32, 1), ("token_lag", torch.long, 1)]


def share(rows: torch.Tensor, rank: int, world: int) -> tuple[torch.Tensor, bool]:
    """Rank `rank`'s part of a micro-batch: every world-th row. A rank with none still runs one row,
    weighted zero: each forward and backward is a collective that every rank must join."""
    mine = rows[rank::world]
    return (mine, True) if len(mine) else (rows[:1], False)


def launched() -> bool:
    """Started by torchrun with more than one training process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join_training_group(timeout_s: float = 1800.0) -> int:
    """Join the training processes' group (torchrun's env://); returns this process's rank.
    `timeout_s`: `learner.group_timeout_s`, the longest any collective may wait."""
    # CPU tensors (the names shared with share_string, the step's header) over gloo, CUDA ones over
    # NCCL: plain "nccl" has no CPU backend ("No backend type associated with device type cpu")
    dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo",
                            timeout=datetime.timedelta(seconds=timeout_s))
    return dist.get_rank()


def lead_or_follow(cfg: Config, start_model: Callable[[], str]) -> tuple["ShardedTrainer | None", str]:
    """Under torchrun: join the training group and build this rank's shard from the model folder
    rank 0 names (`start_model()`, called on rank 0 only). Rank 0 gets the trainer the learner
    drives and that folder; the other ranks follow rank 0's collectives until it says stop, then
    get None."""
    rank = join_training_group(cfg.learner.group_timeout_s)
    model_path = share_string(start_model() if rank == 0 else None)
    resolved, _ = derive(cfg, model_path, sequences=1)  # the generation length (the trainer's Dr. GRPO constant)
    trainer = ShardedTrainer.from_config(resolved, model_path)
    if rank == 0:
        return trainer, model_path
    trainer.follow()
    leave_training_group()
    return None, model_path


def leave_training_group() -> None:
    """Tear the training group down before the process exits: left to interpreter shutdown, its
    backends' threads can die mid-teardown and abort the process after a finished run."""
    if dist.is_initialized():
        dist.destroy_process_group()


def share_string(text: str | None) -> str:
    """Rank 0's `text` on every rank (as bytes in a tensor: nothing pickled)."""
    data = torch.tensor(list(text.encode()) if dist.get_rank() == 0 else [], dtype=torch.uint8)
    size = torch.tensor([len(data)])
    dist.broadcast(size, 0)
    if dist.get_rank() != 0:
        data = torch.empty(int(size), dtype=torch.uint8)
    dist.broadcast(data, 0)
    return bytes(data.tolist()).decode()


class ShardedTrainer(Trainer):
    concurrent_snapshot = False  # the weight copy is a collective: never beside a step

    def __init__(self, *args, **kwargs):
        """As `Trainer`'s; every rank builds its shard from the same model folder."""
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self._lock = threading.Lock()
        self._told = time.monotonic()  # when rank 0 last spoke to the followers
        super().__init__(*args, **kwargs)
        # Each rank sums its rows' loss terms with coefficients taken over the whole update, and
        # FSDP averages the ranks' gradients: scaled by the world size, the average is the sum.
        self.loss_scale = float(self.world)

    def _pick_device(self) -> torch.device:
        # torchrun gives each process its own GPU; on CPU (gloo) every rank uses the CPU
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if not torch.cuda.is_available():
            return torch.device("cpu")
        torch.cuda.set_device(local)  # before the model moves: FSDP2 shards onto the current device
        return torch.device(f"cuda:{local}")

    def _distribute(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import fully_shard

        for layer in model.model.layers:  # one all-gather per decoder layer, then the rest
            fully_shard(layer)
        fully_shard(model)
        return model

    # ---- rank 0: the learner's calls, each told to the followers first --------------------------

    def _tell_followers(self, op: int, *args: int) -> None:
        dist.broadcast(torch.tensor([op, *args, 0, 0][:3], device=self.device), 0)
        self._told = time.monotonic()

    def keep_alive(self) -> None:
        """Called by the learner's loop each tick: a word to the followers when it has been quiet for
        a quarter of the group's timeout (they wait inside a collective meanwhile). Never waits for
        the lock: a collective under way is word enough."""
        if time.monotonic() - self._told < self.lc.group_timeout_s / 4 or not self._lock.acquire(blocking=False):
            return
        try:
            self._tell_followers(ALIVE)
        finally:
            self._lock.release()

    def step(self, groups: list[Group], before_update: Callable[[], object] | None = None,
             on_batch: Callable[[Batch], None] | None = None) -> dict:
        batch = build_batch(groups, self.version, self.pad_id)
        if on_batch is not None:
            on_batch(batch)
        with self._lock:
            self._tell_followers(STEP, *batch.input_ids.shape)
            for name, dtype in _PER_ROW:
                dist.broadcast(getattr(batch, name).to(dtype).contiguous(), 0)
            for rank in range(1, self.world):
                rows = torch.tensor(self._rows_of(batch, rank), dtype=torch.long)
                dist.send(torch.tensor([len(rows)]), rank)
                dist.send(rows, rank)
                for name, dtype, _ in _PER_TOKEN:
                    dist.send(getattr(batch, name)[rows].to(dtype).contiguous(), rank)
            return self.train_batch(batch, before_update)

    def _rows_of(self, batch: Batch, rank: int) -> list[int]:
        """The rows rank `rank` will run in this step: its share of each micro-batch of the pi_prox
        pass (k > 1) and of every update, as `train_batch` will plan them."""
        updates = self.updates(batch)
        passes = ([torch.arange(len(batch.group))] if len(updates) > 1 else []) + updates
        return sorted({i for rows in passes for mb in self.micro_batches(batch, rows)
                       for i in share(mb, rank, self.world)[0].tolist()})

    def named_weights(self) -> list[tuple[str, torch.Tensor]]:
        """Every weight gathered at once (tests; the broadcast goes through `host_weights`)."""
        with self._lock:
            self._tell_followers(WEIGHTS)
            return list(self._full_parameters())

    def host_weights(self, dtype: torch.dtype, into=None) -> list[tuple[str, torch.Tensor]]:
        with self._lock:
            self._tell_followers(WEIGHTS)
            return super().host_weights(dtype, into)

    def probe_logprobs(self) -> list[float]:
        with self._lock:
            self._tell_followers(PROBE)
            return super().probe_logprobs()

    def full_state(self) -> tuple[dict | None, dict]:
        with self._lock:
            self._tell_followers(STATE)
            return self._full_state()

    def load_optimizer(self, ckpt: Path) -> None:
        """Resuming: every rank reads the checkpoint (in the one-device format) and keeps its shard.
        The folder must be readable on every node, as the model folder it was built from is."""
        with self._lock:
            self._tell_followers(LOAD)
            self._load_optimizer(Path(share_string(str(ckpt))))

    def stop_followers(self) -> None:
        with self._lock:
            self._tell_followers(STOP)

    # ---- every rank ----------------------------------------------------------------------------

    def _share(self, rows: torch.Tensor) -> tuple[torch.Tensor, bool]:
        return share(rows, self.rank, self.world)

    def _receive_batch(self, n: int, s: int) -> Batch:
        """Ranks > 0: every row's per-row fields, and the per-token ones of this rank's rows (the
        other rows stay zero: this rank never runs them)."""
        fields = {}
        for name, dtype in _PER_ROW:
            fields[name] = torch.empty(n, dtype=dtype)
            dist.broadcast(fields[name], 0)
        count = torch.empty(1, dtype=torch.long)
        dist.recv(count, 0)
        rows = torch.empty(int(count), dtype=torch.long)
        dist.recv(rows, 0)
        for name, dtype, tail in _PER_TOKEN:
            part = torch.empty((len(rows), s - tail), dtype=dtype)
            dist.recv(part, 0)
            fields[name] = torch.zeros((n, s - tail), dtype=dtype)
            fields[name][rows] = part
        return Batch(targets=fields["input_ids"][:, 1:], **fields)

    def _gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        # each rank filled its own rows and left the others zero: the sum is every row, on every rank
        rows = rows.to(self.device)
        dist.all_reduce(rows)
        return rows.cpu()

    def _full_parameters(self):
        """Each parameter gathered in turn (a collective per parameter, on every rank)."""
        for name, p in self.model.named_parameters():
            yield name, (p.full_tensor() if hasattr(p, "full_tensor") else p)

    def _names(self) -> list[str]:
        """Parameter names in the order a one-device optimizer numbers them."""
        return [name for name, _ in self.model.named_parameters()]

    def _full_state(self) -> tuple[dict, dict]:
        """Full (unsharded) model and optimiser state, numbered like a one-device optimizer's, so
        the checkpoint reads like any other (and resumes on one device)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions, get_model_state_dict, get_optimizer_state_dict)

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(self.model, options=options)
        optim = get_optimizer_state_dict(self.model, self.optimizer, options=options)
        if self.rank != 0:
            return model_state, optim  # gathered on rank 0 only (cpu_offload)
        index = {name: i for i, name in enumerate(self._names())}
        return model_state, _renumber(optim, index.__getitem__)

    def _load_optimizer(self, ckpt: Path) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        by_name = _renumber(checkpoint.optimizer_state(ckpt), self._names().__getitem__)
        # Each rank slices its own shard from the full tensors (no broadcast: that would pickle).
        set_optimizer_state_dict(self.model, self.optimizer, by_name, options=StateDictOptions(full_state_dict=True))

    def follow(self) -> None:
        """Ranks > 0: take part in whatever rank 0 tells them, until it says stop."""
        while True:
            head = torch.zeros(3, dtype=torch.long, device=self.device)
            dist.broadcast(head, 0)
            op, n, s = head.tolist()
            if op == STEP:
                self.train_batch(self._receive_batch(n, s), None)
            elif op == WEIGHTS:
                for _ in self._full_parameters():  # each gathered in turn with rank 0, then let go
                    pass
            elif op == PROBE:
                super().probe_logprobs()
            elif op == STATE:
                self._full_state()
            elif op == LOAD:
                self._load_optimizer(Path(share_string(None)))
            elif op == STOP:
                return
            elif op == ALIVE:
                continue
            else:
                raise RuntimeError(f"training rank {self.rank}: unknown operation {op} from rank 0")


def _renumber(sd: dict, key: Callable) -> dict:
    """An optimizer state dict with each parameter key mapped by `key`: FSDP's names to a
    one-device optimizer's numbers, or back."""
    return {"state": {key(k): s for k, s in sd["state"].items()},
            "param_groups": [{**g, "params": [key(k) for k in g["params"]]} for g in sd["param_groups"]]}
