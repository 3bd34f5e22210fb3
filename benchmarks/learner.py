"""`run.py bench learner`: the learner's optimiser step beside its plain baseline."""

from __future__ import annotations

import statistics

import msgspec

from benchmarks.timing import median_time, print_table


def bench_learner(cfg, model_path: str, trials: int = 20, quiet: bool = False) -> dict:
    """One optimiser step with the lag-corrected loss (tis) at per-sample temperatures, beside the same
    step with plain GRPO's clipped loss at T = 1, on the same batch and the same starting weights."""
    import copy

    import torch

    from learner.groups import Group
    from learner.trainer import Trainer

    torch.manual_seed(0)
    lc = cfg.learner
    trainer = Trainer(cfg, model_path)
    vocab = trainer.model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    groups = []
    for i in range(lc.groups_per_step):
        responses = [torch.randint(3, vocab, (int(torch.randint(2, cfg.generator.max_tokens + 1, (1,), generator=gen)),),
                                   generator=gen) for _ in range(lc.group_size)]
        groups.append(Group(lease_id=i, prompt_id=i, epoch=0, temperature=1.0 + 0.02 * (i % 10),
                            prompt=torch.randint(3, vocab, (18,), generator=gen), responses=responses,
                            behaviour_logprobs=[-torch.rand(len(r), generator=gen) for r in responses],
                            rewards=torch.tensor([float(j % 2) for j in range(lc.group_size)]),
                            version_first=0, version_last=0))
    state = copy.deepcopy(trainer.model.state_dict())
    plain_cfg = msgspec.structs.replace(cfg, loss=msgspec.structs.replace(
        cfg.loss, correction="ppo_behaviour", logprob_temperature="one"))

    def step(c):
        def run():
            trainer.model.load_state_dict(state)
            trainer.cfg = c
            trainer.step(groups)
        return run

    # interleave the two so drift in machine load hits both alike
    t_tis, t_plain = [], []
    for _ in range(trials):
        t_plain.append(median_time(step(plain_cfg), 1, warmup=0))
        t_tis.append(median_time(step(cfg), 1, warmup=0))
    tis, plain = statistics.median(t_tis), statistics.median(t_plain)
    out = {"tis_step_s": tis, "plain_step_s": plain, "overhead": tis / plain}
    if quiet:
        return out
    print_table([
        ("batch", f"{lc.groups_per_step} groups x {lc.group_size} samples"),
        ("step, tis + per-sample T", f"{tis * 1000:.1f} ms"),
        ("step, plain GRPO clip at T = 1", f"{plain * 1000:.1f} ms"),
    ])
    print(f"RESULT overhead={out['overhead']:.3f}")
    return out
