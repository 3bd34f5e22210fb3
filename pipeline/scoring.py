"""Evaluation arithmetic shared by the in-training evaluator and `run.py eval`: mean@k and pass@k."""

from __future__ import annotations

import msgspec

# A reward at least this counts as a correct response: verifiers give {0, 1}, and pass@k, a group's
# outcome and the reasoning-gym scorer's partial credit all read it through this one threshold.
CORRECT = 1.0


def correct(reward: float) -> bool:
    return reward >= CORRECT


class DatasetScore(msgspec.Struct):
    name: str
    problems: int
    k: int
    mean_at_k: float  # average reward over all k samples of all problems (the papers' mean@k, Acc@k)
    pass_at_k: float  # share of problems with at least one correct sample among the k
    too_long: int = 0  # problems whose prompt did not fit the model's context: scored 0, counted


def score(name: str, rewards_per_problem: list[list[float]], too_long: int = 0) -> DatasetScore:
    if not rewards_per_problem:
        raise ValueError(f"{name}: no results to score")
    k = len(rewards_per_problem[0])
    n = len(rewards_per_problem)
    mean = sum(sum(r) / len(r) for r in rewards_per_problem) / n
    passed = sum(any(correct(x) for x in r) for r in rewards_per_problem) / n
    return DatasetScore(name, n, k, mean, passed, too_long)


def table(scores: list[DatasetScore]) -> str:
    lines = [f"{'dataset':<34} {'problems':>8} {'k':>3} {'mean@k':>8} {'pass@k':>8} {'too long':>8}"]
    for s in scores:
        lines.append(f"{s.name:<34} {s.problems:>8} {s.k:>3} {s.mean_at_k:>8.4f} {s.pass_at_k:>8.4f} "
                     f"{s.too_long:>8}")
    return "\n".join(lines)
