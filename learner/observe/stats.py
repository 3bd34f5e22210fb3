"""Run statistics: what the summary is made of, and the residual-prompt metrics of each step (docs/algorithms.md §6).

Everything here is a running sum or a short list per step, never a per-sample list: a run may last days.
"""

from __future__ import annotations

import collections
import collections.abc
from dataclasses import dataclass, field, fields

import msgspec
import torch

from learner.training.advantages import Outcome
from learner.training.groups import Group


TEMP_DECIMALS = 2  # leased temperatures are counted in buckets of this many decimals


def residual_share(counts: collections.abc.Mapping[str, int]) -> float:
    """The share of groups that came back all-correct (residual), of `counts` by outcome; 0 for none."""
    return counts.get(Outcome.POSITIVE, 0) / (sum(counts.values()) or 1)


@dataclass
class Arrivals:
    """Complete groups as they arrived, by outcome and by leased temperature: the one arrival
    counter. The run statistics fill one per optimiser step (their window); the run's totals add them up."""

    t0: float  # the schedule's base temperature: groups leased above it were pushed to explore
    by_temp: dict = field(default_factory=lambda: collections.defaultdict(collections.Counter))  # T -> outcome -> groups
    temp_sum: float = 0.0
    temp_max: float = 0.0
    above_t0: int = 0  # groups leased above T0 ...
    above_t0_mixed: int = 0  # ... that came back mixed: reactivated
    filtered: int = 0  # dropped by dynamic sampling (counted here; lag control decides)

    def add(self, outcome: Outcome, temperature: float) -> None:
        self.by_temp[round(temperature, TEMP_DECIMALS)][outcome] += 1
        self.temp_sum += temperature
        self.temp_max = max(self.temp_max, temperature)
        if temperature > self.t0 + 1e-9:
            self.above_t0 += 1
            self.above_t0_mixed += outcome == Outcome.MIXED

    def __iadd__(self, o: "Arrivals") -> "Arrivals":
        for t, c in o.by_temp.items():
            self.by_temp[t].update(c)
        self.temp_sum += o.temp_sum
        self.temp_max = max(self.temp_max, o.temp_max)
        self.above_t0 += o.above_t0
        self.above_t0_mixed += o.above_t0_mixed
        self.filtered += o.filtered
        return self

    @property
    def outcomes(self) -> collections.Counter:
        out: collections.Counter = collections.Counter({str(k): 0 for k in Outcome})
        for c in self.by_temp.values():
            out.update(c)
        return out

    @property
    def groups(self) -> int:
        return sum(self.outcomes.values())

    def temperatures(self) -> list[float]:
        """Every arrived group's leased temperature (bucketed), sorted."""
        return sorted(t for t, c in self.by_temp.items() for _ in range(sum(c.values())))

    def metrics(self) -> dict:
        """The residual-prompt metrics of these arrivals (docs/algorithms.md §6)."""
        kinds = self.outcomes
        total = sum(kinds.values()) or 1
        out = {f"groups/{k}": kinds[k] / total for k in Outcome}
        out["residual_frac"] = residual_share(kinds)
        for t, c in sorted(self.by_temp.items()):
            out[f"residual_by_temp/{t:.2f}"] = residual_share(c)
            if t > self.t0 + 1e-9:  # leased above T0: the share that came back mixed (reactivated)
                out[f"reactivated_by_temp/{t:.2f}"] = c[Outcome.MIXED] / (sum(c.values()) or 1)
        if self.groups:  # a step may see no arrivals at all; then there is no temperature to report
            out["leased_temp_mean"] = self.temp_sum / self.groups
            out["leased_temp_max"] = self.temp_max
        if self.above_t0:
            out["reactivated_rate"] = self.above_t0_mixed / self.above_t0
        out["dynamic_sampling_filtered"] = self.filtered
        return out

    def to_state(self) -> dict:
        return {"t0": self.t0, "by_temp": {str(t): dict(c) for t, c in self.by_temp.items()},
                "temp_sum": self.temp_sum, "temp_max": self.temp_max, "above_t0": self.above_t0,
                "above_t0_mixed": self.above_t0_mixed, "filtered": self.filtered}

    @classmethod
    def from_state(cls, st: dict) -> "Arrivals":
        out = cls(**{**st, "by_temp": collections.defaultdict(collections.Counter)})
        for t, c in st["by_temp"].items():
            out.by_temp[float(t)] = collections.Counter(c)
        return out


UNSAVED = ("arrivals", "window", "last_version")  # `arrivals` is saved by its own to_state


@dataclass
class RunStats:
    """What the summary is made of; also what the tests inspect. It observes: nothing in the
    learner decides anything from it. The loop writes it, from what each owner reports."""

    arrivals: Arrivals  # every complete group that arrived, summed over the steps' windows
    step_rewards: list[float] = field(default_factory=list)
    step_residual: list[float] = field(default_factory=list)  # share of arriving groups all-correct
    evals: list[tuple[int, dict]] = field(default_factory=list)  # (step, score) of held-out rounds
    trained_temp_sum: float = 0.0
    trained_groups: int = 0
    lag_hist: collections.Counter = field(default_factory=collections.Counter)
    trained_lags_max: int = 0
    samples_trained: int = 0
    weights_verified: int = 0
    weights_mismatch: int = 0
    probe_max_diff: float = 0.0
    rollouts_by_generator: collections.Counter = field(default_factory=collections.Counter)  # by generator id
    version_regressions: int = 0  # a generator's rollouts going back in weight version (must stay 0)
    seconds: float = 0.0
    train_seconds: float = 0.0  # time inside optimiser steps (the rest of `seconds` the learner waited)
    time_spent: collections.Counter = field(default_factory=collections.Counter)  # stage -> seconds (learner/training/clock.py)
    # trained tokens whose IS weight was truncated or masked, by the prompt's H at lease and by the group's
    # response length (learner/orchestration/leases.py bins): bin -> [cut tokens, tokens]
    cut_by_h: dict = field(default_factory=dict)
    cut_by_length: dict = field(default_factory=dict)
    # not saved: what arrived since the last optimiser step, and each generator's newest version so far
    window: Arrivals | None = field(default=None, repr=False)
    last_version: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.window is None:
            self.window = Arrivals(self.arrivals.t0)

    def record_arrival(self, generator_id: int, group: Group) -> None:
        """A training group came back from `generator_id`."""
        if group.version_first < self.last_version.get(generator_id, 0):
            self.version_regressions += 1
        self.last_version[generator_id] = group.version_last
        self.rollouts_by_generator[generator_id] += 1

    def record_probe(self, ok: bool, diff: float) -> None:
        """A generator's probe compared with the learner's (learner/weights/publisher.py)."""
        self.probe_max_diff = max(self.probe_max_diff, diff)
        if ok:
            self.weights_verified += 1
        else:
            self.weights_mismatch += 1

    def record_visits(self, visits: list[Group], filtered: int) -> None:
        """Visits recorded in the tracker, and groups dropped by dynamic sampling (learner/orchestration/ledger.py).
        The step's window counts them as the tracker sees them, so that under exact lag control the
        residual share is over the wave's groups in lease order, not over whatever arrived while the step ran."""
        for g in visits:
            self.window.add(g.outcome, g.temperature)
        self.window.filtered += filtered

    def close_window(self) -> Arrivals:
        """The groups that arrived since the last step (added to the run's totals); starts a new window."""
        window, self.window = self.window, Arrivals(self.arrivals.t0)
        self.arrivals += window
        return window

    def time_share(self) -> dict[str, float]:
        """Each stage's share of the time inside optimiser steps (the loop's probe checks and
        checkpoint holds, outside them, as a share of the same)."""
        return {k: v / self.train_seconds for k, v in sorted(self.time_spent.items())} if self.train_seconds else {}

    def to_state(self) -> dict:
        st = msgspec.to_builtins({k: v for k, v in vars(self).items() if k not in UNSAVED})
        return {**st, "arrivals": self.arrivals.to_state()}

    @classmethod
    def from_state(cls, st: dict, t0: float) -> "RunStats":
        """Inverse of `to_state` (JSON turned the counters' integer keys into strings). Fields a
        checkpoint of an older version held and this one does not are left out; `t0` starts the
        arrival totals of a checkpoint that has none."""
        known = {f.name for f in fields(cls)} - {"window", "last_version"}
        st = {k: v for k, v in st.items() if k in known}
        for key in ("lag_hist", "rollouts_by_generator"):
            st[key] = collections.Counter({int(k): v for k, v in st.get(key, {}).items()})
        st["time_spent"] = collections.Counter(st.get("time_spent", {}))
        st["arrivals"] = Arrivals.from_state(st["arrivals"]) if "arrivals" in st else Arrivals(t0)
        st["evals"] = [tuple(e) for e in st["evals"]]
        return cls(**st)

    def record_cut(self, bins: list[tuple[str, str]], cut_by_group: dict[int, list[float]]) -> None:
        """Add a step's IS-cut token counts; `bins[i]`: (H bin, length bin) of the batch's group i."""
        for gi, (cut, tokens) in cut_by_group.items():
            for table, key in zip((self.cut_by_h, self.cut_by_length), bins[gi]):
                acc = table.setdefault(key, [0.0, 0.0])
                acc[0] += cut
                acc[1] += tokens

    def record_step(self, groups: list[Group], lags: list[int], residual_frac: float, seconds: float,
                    stage_seconds: dict[str, float]) -> dict:
        """Account one finished optimiser step (`stage_seconds`: its `time/<stage>` metrics); returns
        its share of the step's metrics."""
        self.train_seconds += seconds
        self.time_spent.update({k[5:]: v for k, v in stage_seconds.items()})
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
                "trained_residual_frac": sum(g.outcome == Outcome.POSITIVE for g in groups) / len(groups),
                "lag_mean": sum(lags) / len(lags), "lag_max": max(lags), "step_seconds": seconds}


def run_counters(leases, buffered: int, stats: RunStats, **more) -> dict:
    """Every lease outcome and the run's fault counters: the `leases:` line of the summary."""
    d = leases
    return {"dispatched": d.dispatched, **dict(d.outcomes), "open": d.open, "in_flight": d.outstanding(),
            "buffered": buffered, "weights_verified": stats.weights_verified,
            "weights_mismatch": stats.weights_mismatch, "probe_max_diff": stats.probe_max_diff,
            **{k: dict(v) if isinstance(v, dict) else v for k, v in more.items()}}
