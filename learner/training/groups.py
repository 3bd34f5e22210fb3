"""Turns rollout messages into complete groups, and saves them for a checkpoint. (The buffer that holds
them until a step trains them is lag control's: learner/orchestration/buffer.py.)

Groups are whole by construction: a Rollout carries all n samples of one lease, and one with any
other count is refused (and its lease closed as failed), never normalised as if it were complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec
import torch

from learner.training.advantages import GroupAdvantage, Outcome, outcome
from pipeline.messages import Rollout, pack_floats, pack_ids, unpack_floats, unpack_ids


class BadRollout(ValueError):
    pass


@dataclass
class Group:
    lease_id: int
    prompt_id: int
    epoch: int
    temperature: float  # as recorded by the generator; the learner uses this value, not a recomputed one
    prompt: torch.Tensor  # [P] int64
    responses: list[torch.Tensor]  # n x [L_j] int64
    behaviour_logprobs: list[torch.Tensor]  # n x [L_j] float32 (mu)
    rewards: torch.Tensor  # [n] float32
    version_first: int  # oldest weight version any token was sampled under
    version_last: int
    token_versions: list[torch.Tensor] | None = None  # n x [L_j] per-token versions (in-flight updates)
    # Over the complete group, set once by the intake (learner/orchestration/intake.py) when the group arrives.
    advantage: GroupAdvantage | None = None
    outcome: Outcome = field(init=False)  # decided once, from the verifier's rewards

    def __post_init__(self) -> None:
        self.outcome = outcome(self.rewards)

    @property
    def n(self) -> int:
        return len(self.responses)

    @property
    def mean_tokens(self) -> float:
        """The mean response length, in tokens."""
        return sum(len(r) for r in self.responses) / max(self.n, 1)

    def lag(self, version: int) -> int:
        """Versions between the weights that sampled the group's oldest token and `version`."""
        return version - self.version_first


class GroupState(msgspec.Struct, kw_only=True):
    """A group as saved in a checkpoint: arrays as compact byte strings (base64 in JSON), no pickle."""

    lease_id: int
    prompt_id: int
    epoch: int
    temperature: float
    prompt: bytes
    responses: list[bytes]
    behaviour_logprobs: list[bytes]
    rewards: list[float]
    version_first: int
    version_last: int
    token_versions: list[bytes] = []
    advantage: list[float] = []  # the group's advantage as computed at intake, and its RL-ZVP sign
    zvp: int = 0


def group_to_state(g: Group) -> GroupState:
    return GroupState(lease_id=g.lease_id, prompt_id=g.prompt_id, epoch=g.epoch, temperature=g.temperature,
                      prompt=pack_ids(g.prompt), responses=[pack_ids(r) for r in g.responses],
                      behaviour_logprobs=[pack_floats(m) for m in g.behaviour_logprobs],
                      rewards=g.rewards.tolist(), version_first=g.version_first, version_last=g.version_last,
                      token_versions=[pack_ids(v) for v in g.token_versions or []],
                      advantage=g.advantage.per_sample.tolist() if g.advantage is not None else [],
                      zvp=g.advantage.zvp if g.advantage is not None else 0)


def group_from_state(raw) -> Group:
    d = msgspec.convert(raw, GroupState)
    ids = lambda b: torch.from_numpy(unpack_ids(b).astype("int64"))  # noqa: E731
    return Group(lease_id=d.lease_id, prompt_id=d.prompt_id, epoch=d.epoch, temperature=d.temperature,
                 prompt=ids(d.prompt), responses=[ids(r) for r in d.responses],
                 behaviour_logprobs=[torch.from_numpy(unpack_floats(m).copy()) for m in d.behaviour_logprobs],
                 rewards=torch.tensor(d.rewards, dtype=torch.float32),
                 version_first=d.version_first, version_last=d.version_last,
                 token_versions=[ids(v) for v in d.token_versions] or None,
                 advantage=GroupAdvantage(torch.tensor(d.advantage, dtype=torch.float32), d.zvp)
                 if d.advantage else None)


def group_from_rollout(r: Rollout, group_size: int) -> Group:
    if len(r.samples) != group_size:
        raise BadRollout(f"lease {r.lease_id}: {len(r.samples)} samples, expected {group_size}")
    responses, mus, versions = [], [], []
    for s in r.samples:
        tokens, lps = unpack_ids(s.tokens), unpack_floats(s.logprobs)
        if len(tokens) != len(lps) or len(tokens) == 0:
            raise BadRollout(f"lease {r.lease_id}: {len(tokens)} tokens but {len(lps)} log-probs")
        tv = unpack_ids(s.token_versions) if s.token_versions else None
        if tv is not None and (len(tv) != len(tokens) or tv.min() != s.version_first or tv.max() != s.version_last):
            raise BadRollout(f"lease {r.lease_id}: per-token versions disagree with the sample's")
        responses.append(torch.from_numpy(tokens.astype("int64")))
        mus.append(torch.from_numpy(lps.copy()))
        versions.append(torch.from_numpy(tv.astype("int64")) if tv is not None
                        else torch.full((len(tokens),), s.version_first, dtype=torch.int64))
    if not r.temperature > 0:
        raise BadRollout(f"lease {r.lease_id}: temperature {r.temperature}")
    return Group(
        lease_id=r.lease_id, prompt_id=r.prompt_id, epoch=r.epoch, temperature=r.temperature,
        prompt=torch.from_numpy(unpack_ids(r.prompt_tokens).astype("int64")),
        responses=responses, behaviour_logprobs=mus,
        rewards=torch.tensor([s.reward for s in r.samples], dtype=torch.float32),
        version_first=min(s.version_first for s in r.samples),
        version_last=max(s.version_last for s in r.samples),
        token_versions=versions,
    )

