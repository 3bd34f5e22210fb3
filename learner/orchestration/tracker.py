"""Per-prompt history: the single source of truth for H_i, visits and what each prompt last saw.

Update rule (docs/algorithms.md §2): after a complete visit of prompt i, H_i <- H_i + 1 if all n responses
were correct; otherwise H_i is unchanged (or reset to 0 with `reset_on_mixed`). A visit is recorded
when its whole group arrives, whether or not it is later trained on: the prompt was observed either way.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import msgspec

from learner.training.advantages import Outcome

@dataclass
class PromptState:
    h: int = 0  # visits whose whole group was correct
    visits: int = 0
    last_reward_mean: float = math.nan
    last_temperature: float = math.nan
    last_sampled_version: int = -1
    last_trained_version: int = -1


class Tracker:
    def __init__(self, num_prompts: int, reset_on_mixed: bool = False):
        self.prompts = [PromptState() for _ in range(num_prompts)]
        self.reset_on_mixed = reset_on_mixed

    def __len__(self) -> int:
        return len(self.prompts)

    def h(self, prompt_id: int) -> int:
        return self.prompts[prompt_id].h

    def record_visit(self, prompt_id: int, outcome: Outcome, reward_mean: float, temperature: float,
                     version: int) -> None:
        """A complete visit of `prompt_id`, whose group's `outcome` was decided when it arrived."""
        s = self.prompts[prompt_id]
        if outcome == Outcome.POSITIVE:
            s.h += 1
        elif outcome == Outcome.MIXED and self.reset_on_mixed:
            s.h = 0
        s.visits += 1
        s.last_reward_mean = reward_mean
        s.last_temperature = temperature
        s.last_sampled_version = version

    def metrics(self) -> dict:
        """Where the tracker stands: how far the schedule has pushed prompts (docs/algorithms.md §6)."""
        hs = [p.h for p in self.prompts]
        return {"h_mean": sum(hs) / len(hs), "h_max": max(hs), "h_positive_frac": sum(h > 0 for h in hs) / len(hs)}

    def record_trained(self, prompt_id: int, version: int) -> None:
        self.prompts[prompt_id].last_trained_version = version

    def state_dict(self) -> dict:
        return {"reset_on_mixed": self.reset_on_mixed, "prompts": [asdict(p) for p in self.prompts]}

    def load_state_dict(self, state: dict) -> None:
        self.reset_on_mixed = state["reset_on_mixed"]
        # JSON has no NaN: a never-visited prompt's float fields come back as null, and go back to NaN
        nan = lambda v: math.nan if v is None else v  # noqa: E731
        self.prompts = [PromptState(**{**p, "last_reward_mean": nan(p["last_reward_mean"]),
                                       "last_temperature": nan(p["last_temperature"])}) for p in state["prompts"]]

    def dump(self, path) -> None:
        """One JSON object per prompt, for analysis."""
        with open(path, "wb") as f:
            for i, p in enumerate(self.prompts):
                f.write(msgspec.json.encode({"prompt_id": i, **asdict(p)}) + b"\n")
