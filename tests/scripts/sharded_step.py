"""Run under torchrun by tests/e2e/test_sharded.py: two optimiser steps of the sharded trainer on fixed
groups, beside the one-device trainer on the same groups; then a checkpoint of the sharded one, a
fresh sharded trainer resumed from it, and a third step on each. Rank 0 writes the largest differences."""

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from learner.training import checkpoint, sharded  # noqa: E402
from learner.training.groups import Group  # noqa: E402
from learner.training.trainer import Trainer  # noqa: E402
from pipeline import config as config_mod  # noqa: E402
from tests.builders import with_advantage  # noqa: E402


def groups(vocab: int, count: int = 4, size: int = 4) -> list[Group]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for i in range(count):
        responses = [torch.randint(3, vocab, (int(torch.randint(2, 7, (1,), generator=gen)),), generator=gen)
                     for _ in range(size)]
        out.append(Group(lease_id=i, prompt_id=i, epoch=0, temperature=1.0 + 0.1 * i,
                         prompt=torch.randint(3, vocab, (5,), generator=gen), responses=responses,
                         behaviour_logprobs=[-torch.rand(len(r), generator=gen) for r in responses],
                         rewards=torch.tensor([float((i + j) % 2) for j in range(size)]),
                         version_first=0, version_last=0))
    return with_advantage(out)


def main(config_json: str, model_path: str, out: str, quiet_s: float = 0.0) -> None:
    cfg = config_mod.loads(Path(config_json).read_bytes())
    rank = sharded.join_training_group(cfg.learner.group_timeout_s)
    trainer = sharded.ShardedTrainer.from_config(cfg, model_path)
    if rank != 0:
        trainer.follow()  # the first trainer, until rank 0 stops it ...
        sharded.ShardedTrainer.from_config(cfg, sharded.share_string(None)).follow()  # ... then the resumed one
        return
    one = Trainer.from_config(cfg, model_path)
    batch = groups(one.model.config.vocab_size)
    for i in range(2):
        a, b = trainer.step(batch), one.step(batch)
        if i == 0 and quiet_s:
            # rank 0 quiet for longer than the group's timeout (as while it waits for rollouts), speaking
            # only through keep_alive: the followers, waiting inside a collective, must not time out
            quiet_until = time.monotonic() + quiet_s
            while time.monotonic() < quiet_until:
                trainer.keep_alive()
                time.sleep(0.05)
    weights = dict(trainer.named_weights())
    diff = max(float((weights[n] - p).abs().max()) for n, p in one.named_weights())
    probe = max(abs(x - y) for x, y in zip(trainer.probe_logprobs(), one.probe_logprobs()))
    model_state, optim = trainer.full_state()
    state_diff = max(float((model_state[n] - p).abs().max()) for n, p in one.model.state_dict().items())
    one_optim = one.optimizer.state_dict()
    optim_diff = max(float((optim["state"][i]["exp_avg"] - s["exp_avg"]).abs().max())
                     for i, s in one_optim["state"].items())
    ckpt = checkpoint.save(Path(out).parent / "ckpt", trainer.version, trainer.model, optim, {"version": 2},
                           model_path, keep=1, model_state=model_state)
    trainer.stop_followers()
    resumed = sharded.ShardedTrainer.from_config(cfg, sharded.share_string(str(ckpt)))
    resumed.load_optimizer(ckpt)
    resumed.step(batch), one.step(batch)
    weights = dict(resumed.named_weights())
    resumed_diff = max(float((weights[n] - p).abs().max()) for n, p in one.named_weights())
    resumed.stop_followers()
    Path(out).write_text(json.dumps({
        "resumed": resumed_diff,
        "weights": diff, "probe": probe, "state": state_diff, "optim": optim_diff,
        "grad_norm": [a.metrics["grad_norm"], b.metrics["grad_norm"]], "version": trainer.version,
        "moved": max(float((p - q).abs().max()) for (_, p), (_, q) in
                     zip(one.named_weights(), Trainer.from_config(cfg, model_path).named_weights())),
        "param_groups": optim["param_groups"][0]["params"] == one_optim["param_groups"][0]["params"]}))


if __name__ == "__main__":
    main(*sys.argv[1:4], *(float(x) for x in sys.argv[4:5]))
