"""Real objects built small for unit tests: a lease book over a few problems, the rollout a generator
would send for a lease, a group with its advantage. (Test doubles live in tests/doubles.py.)"""

from __future__ import annotations

import torch

from learner.training.advantages import AdvantageRule
from learner.training.groups import Group
from learner.orchestration.leases import LeaseBook
from learner.orchestration.tracker import Tracker
from pipeline.config import Config, from_dict
from pipeline.problems import Problem
from pipeline.messages import Assignment, Rollout, Sample, pack_floats, pack_ids


def lease_book(num: int = 5, group_size: int = 4, timeout_s: float = 10.0, cfg: Config | None = None
               ) -> tuple[Tracker, LeaseBook]:
    """A tracker and a lease book over `num` arithmetic problems, prompts [1, 2, i]."""
    cfg = cfg or from_dict({})
    problems = [Problem(i, f"q{i}", str(i), "reasoning_gym:basic_arithmetic") for i in range(num)]
    tracker = Tracker(num)
    max_tokens = 64 if cfg.generator.max_tokens == "auto" else cfg.generator.max_tokens  # as the run resolves it
    return tracker, LeaseBook(problems, [[1, 2, i] for i in range(num)], tracker, cfg.schedule, group_size,
                              max_tokens, timeout_s, cfg.data.seed)


def rollout(a: Assignment, n: int = 4, version: int = 0, rewards=None, generator_id: int = 0,
            token_versions: list[list[int]] | None = None) -> Rollout:
    """What a generator sends back for lease `a`: n samples of two tokens each (or of
    `token_versions[j]`'s length, sampled under those per-token versions)."""
    rewards = rewards or [1.0] * n
    samples = []
    for j, r in enumerate(rewards):
        tv = token_versions[j] if token_versions else None
        length = len(tv) if tv else 2
        samples.append(Sample(tokens=pack_ids(list(range(5, 5 + length))), logprobs=pack_floats([-0.1] * length),
                              reward=r, version_first=min(tv) if tv else version,
                              version_last=max(tv) if tv else version, finish_reason="stop",
                              token_versions=pack_ids(tv) if tv else b""))
    return Rollout(lease_id=a.lease_id, generator_id=generator_id, prompt_id=a.prompt_id, epoch=a.epoch,
                   temperature=a.temperature, prompt_tokens=a.prompt_tokens, samples=samples,
                   gen_seconds=0.0, verify_seconds=0.0)


def rule(cfg: Config | None = None) -> AdvantageRule:
    cfg = cfg or from_dict({})
    return AdvantageRule.from_config(cfg.advantage, cfg.ra, cfg.dapo, cfg.generator.max_tokens)


def group(rewards: list[float], prompt: list[int], responses: list[list[int]], mu: list[list[float]],
          temperature: float = 1.0, version: int = 0, lease_id: int = 0, cfg: Config | None = None) -> Group:
    """A complete group whose advantage was computed as the intake computes it."""
    r = torch.tensor(rewards, dtype=torch.float32)
    g = Group(lease_id=lease_id, prompt_id=lease_id, epoch=0, temperature=temperature, prompt=torch.tensor(prompt),
              responses=[torch.tensor(x) for x in responses], behaviour_logprobs=[torch.tensor(m) for m in mu],
              rewards=r, version_first=version, version_last=version)
    g.advantage = rule(cfg).of(g.rewards, g.outcome, [len(x) for x in responses])
    return g


def with_advantage(groups: list[Group], cfg: Config | None = None) -> list[Group]:
    """Give groups built by hand the advantage the intake would have stored on them."""
    r = rule(cfg)
    for g in groups:
        g.advantage = r.of(g.rewards, g.outcome, [len(x) for x in g.responses])
    return groups
