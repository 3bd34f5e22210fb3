"""Run statistics: what the summary is made of, and the residual-prompt window of each step (§6).

Everything here is a running sum or a short list per step, never a per-sample list: a run may last days.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import msgspec
import torch

from learner.groups import Group
from learner.tracker import Tracker


@dataclass
class RunStats:
    """What the summary is made of; also what the tests inspect."""

    step_rewards: list[float] = field(default_factory=list)
    step_residual: list[float] = field(default_factory=list)  # share of arriving groups all-correct
    evals: list[tuple[int, dict]] = field(default_factory=list)  # (step, score) of held-out rounds
    group_kinds: collections.Counter = field(default_factory=collections.Counter)
    trained_temp_sum: float = 0.0
    trained_groups: int = 0
    lag_hist: collections.Counter = field(default_factory=collections.Counter)
    trained_lags_max: int = 0
    samples_trained: int = 0
    versions_announced: list[int] = field(default_factory=list)
    weights_verified: int = 0
    weights_mismatch: int = 0
    probe_max_diff: float = 0.0
    rollouts_by_generator: collections.Counter = field(default_factory=collections.Counter)
    version_regressions: int = 0  # a generator's rollouts going back in weight version (must stay 0)
    seconds: float = 0.0
    train_seconds: float = 0.0  # time inside optimiser steps (the rest of `seconds` the learner waited)
    leased_temps: collections.Counter = field(default_factory=collections.Counter)  # T (2 decimals) -> groups
    above_t0: int = 0  # groups leased above T0 (pushed to explore) ...
    above_t0_mixed: int = 0  # ... that came back mixed: reactivated

    def record_arrival(self, kind: str, temperature: float, t0: float) -> None:
        self.group_kinds[kind] += 1
        self.leased_temps[round(temperature, 2)] += 1
        if temperature > t0 + 1e-9:
            self.above_t0 += 1
            self.above_t0_mixed += kind == "mixed"

    def to_state(self) -> dict:
        return msgspec.to_builtins(self)

    @classmethod
    def from_state(cls, st: dict) -> "RunStats":
        """Inverse of `to_state` (JSON turned the counters' integer keys into strings)."""
        st = dict(st)
        for key in ("lag_hist", "rollouts_by_generator"):
            st[key] = collections.Counter({int(k): v for k, v in st[key].items()})
        st["group_kinds"] = collections.Counter(st["group_kinds"])
        st["leased_temps"] = collections.Counter({float(k): v for k, v in st.get("leased_temps", {}).items()})
        st["evals"] = [tuple(e) for e in st["evals"]]
        return cls(**st)

    def record_step(self, groups: list[Group], lags: list[int], residual_frac: float, seconds: float) -> dict:
        """Account one finished optimiser step; returns its share of the step's metrics."""
        self.train_seconds += seconds
        for g, lag in zip(groups, lags):
            self.lag_hist[lag] += g.n
            self.trained_temp_sum += g.temperature
            self.trained_groups += 1
        rewards = torch.cat([g.rewards for g in groups])
        self.step_rewards.append(float(rewards.mean()))
        self.step_residual.append(residual_frac)
        self.samples_trained += int(rewards.numel())
        self.trained_lags_max = max(self.trained_lags_max, max(lags))
        return {"reward": float(rewards.mean()),
                "temperature_mean": sum(g.temperature for g in groups) / len(groups),
                "trained_residual_frac": sum(g.kind == "positive" for g in groups) / len(groups),
                "lag_mean": sum(lags) / len(lags), "lag_max": max(lags), "step_seconds": seconds}


@dataclass
class Window:
    """Groups that arrived since the last optimiser step, for the residual-prompt metrics (§6)."""

    t0: float  # the schedule's base temperature: groups leased above it were pushed to explore
    kinds: collections.Counter = field(default_factory=collections.Counter)
    by_temp: dict = field(default_factory=lambda: collections.defaultdict(collections.Counter))
    temps: list[float] = field(default_factory=list)
    above_t0: int = 0
    above_t0_mixed: int = 0
    filtered: int = 0

    def add(self, kind: str, temperature: float) -> None:
        self.kinds[kind] += 1
        self.by_temp[round(temperature, 2)][kind] += 1
        self.temps.append(temperature)
        if temperature > self.t0 + 1e-9:
            self.above_t0 += 1
            self.above_t0_mixed += kind == "mixed"

    def metrics(self, tracker: Tracker) -> dict:
        total = sum(self.kinds.values()) or 1
        out = {f"groups/{k}": self.kinds[k] / total for k in ("positive", "negative", "mixed")}
        out["residual_frac"] = self.kinds["positive"] / total
        for t, c in sorted(self.by_temp.items()):
            out[f"residual_by_temp/{t:.2f}"] = c["positive"] / (sum(c.values()) or 1)
            if t > self.t0 + 1e-9:  # leased above T0: the share that came back mixed (reactivated)
                out[f"reactivated_by_temp/{t:.2f}"] = c["mixed"] / (sum(c.values()) or 1)
        if self.temps:  # a step may see no arrivals at all; then there is no temperature to report
            out["leased_temp_mean"] = sum(self.temps) / len(self.temps)
            out["leased_temp_max"] = max(self.temps)
        if self.above_t0:
            out["reactivated_rate"] = self.above_t0_mixed / self.above_t0
        hs = [p.h for p in tracker.prompts]
        out["h_mean"] = sum(hs) / len(hs)
        out["h_max"] = max(hs)
        out["h_positive_frac"] = sum(h > 0 for h in hs) / len(hs)
        out["dynamic_sampling_filtered"] = self.filtered
        return out


def run_counters(dispatcher, buffered: int, stats: RunStats, **more) -> dict:
    """Every lease outcome and the run's fault counters: the `leases:` line of the summary."""
    d = dispatcher
    return {"dispatched": d.dispatched, **dict(d.outcomes), "open": d.open, "in_flight": d.outstanding(),
            "buffered": buffered, "weights_verified": stats.weights_verified,
            "weights_mismatch": stats.weights_mismatch, "probe_max_diff": stats.probe_max_diff,
            **{k: dict(v) if isinstance(v, dict) else v for k, v in more.items()}}
