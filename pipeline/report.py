"""The study report: markdown + PNG plots from the runs' metrics.jsonl and tracker.jsonl files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class RunSummary:
    name: str
    steps: int
    residual_second_half: float  # mean residual-group share of arriving groups, second half of steps
    heldout_mean: float
    heldout_pass: float
    reward_first: float
    reward_last: float
    mean_temp: float
    filtered: int


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def _smooth(xs: list[float], k: int = 10) -> list[float]:
    return [_mean(xs[max(0, i - k + 1):i + 1]) for i in range(len(xs))]


def summarize_run(run_dir: Path) -> tuple[RunSummary, list[dict], list[dict]]:
    rows = _read_jsonl(run_dir / "metrics.jsonl")
    steps = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval/mean_at_k" in r]
    if not steps:
        raise ValueError(f"{run_dir}: no training steps in metrics.jsonl")
    half = steps[len(steps) // 2:]
    q = max(1, len(steps) // 4)
    summary = RunSummary(
        name=run_dir.name, steps=len(steps),
        residual_second_half=_mean(r["residual_frac"] for r in half),
        heldout_mean=evals[-1]["eval/mean_at_k"] if evals else float("nan"),
        heldout_pass=evals[-1]["eval/pass_at_k"] if evals else float("nan"),
        reward_first=_mean(r["reward"] for r in steps[:q]), reward_last=_mean(r["reward"] for r in steps[-q:]),
        mean_temp=_mean(r["leased_temp_mean"] for r in steps if "leased_temp_mean" in r),
        filtered=sum(r.get("dynamic_sampling_filtered", 0) for r in steps),
    )
    tracker = _read_jsonl(run_dir / "tracker.jsonl") if (run_dir / "tracker.jsonl").exists() else []
    return summary, steps, tracker


def write_report(study_dir: Path, names: list[str]) -> tuple[list[RunSummary], str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {n: summarize_run(study_dir / n) for n in names}
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    ax = axes.flat
    for n, (s, steps, tracker) in runs.items():
        x = [r["step"] for r in steps]
        ax[0].plot(x, _smooth([r["residual_frac"] for r in steps]), label=n)
        tsteps = [r for r in steps if "leased_temp_mean" in r]
        tx = [r["step"] for r in tsteps]
        ax[1].plot(tx, _smooth([r["leased_temp_mean"] for r in tsteps]), label=f"{n} mean")
        ax[1].plot(tx, [r["leased_temp_max"] for r in tsteps], ":", alpha=0.6, label=f"{n} max")
        ax[2].plot(x, _smooth([r["reward"] for r in steps]), label=n)
        hs = [p["h"] for p in tracker]
        if hs:
            ax[3].hist(hs, bins=range(0, max(hs) + 2), alpha=0.45, label=n)
        ax[4].plot(x, _smooth([r["entropy"] for r in steps]), label=n)
    ax[5].bar(list(runs), [s.heldout_mean for s, _, _ in runs.values()])
    titles = ["residual (all-correct) share of arriving groups", "leased temperature", "train reward",
              "H_i at the end (prompts)", "token entropy (T = 1)", "held-out mean@k (final)"]
    for a, t in zip(ax, titles):
        a.set_title(t)
        if t != titles[5]:
            a.legend(fontsize=7)
    for a in ax[:3]:
        a.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(study_dir / "study.png", dpi=90)
    plt.close(fig)

    summaries = [s for s, _, _ in runs.values()]
    lines = [
        "# Residual-prompt study", "",
        "Same warm start, same sample budget, embedded default task. Residual = share of arriving groups "
        "that were all-correct, averaged over the second half of training. Held-out = final mean@k.", "",
        "| algorithm | steps | residual (2nd half) | held-out mean@k | pass@k | reward first->last quarter "
        "| mean leased T | groups filtered |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        lines.append(f"| {s.name} | {s.steps} | {s.residual_second_half:.3f} | {s.heldout_mean:.4f} | "
                     f"{s.heldout_pass:.4f} | {s.reward_first:.3f} -> {s.reward_last:.3f} | {s.mean_temp:.3f} | "
                     f"{s.filtered} |")
    lines += ["", "![study](study.png)", ""]
    (study_dir / "report.md").write_text("\n".join(lines))
    by = {s.name: s for s in summaries}
    result = "RESULT " + " ".join(
        [f"{n}_residual={by[n].residual_second_half:.4f}" for n in names]
        + [f"{n}_acc={by[n].heldout_mean:.4f}" for n in names])
    return summaries, result
