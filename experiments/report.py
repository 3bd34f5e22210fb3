"""The sweep report: every summary figure as mean and 95 % confidence interval over seeds, a markdown
table and a PNG (`run.py report DIR` redraws it). Figures per cell come from its metrics.jsonl and
summary.json (written by `run.py train` at the end of a finished run)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from pipeline.rundir import finished, read_summary

# two-sided 95 % Student t quantiles by degrees of freedom (n seeds - 1)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}

FIGURES = [  # (key, column title, format)
    ("residual_early", "residual share, first quarter", ".3f"),
    ("residual_late", "residual share, last quarter", ".3f"),
    ("reactivated", "reactivated (leased > T0, came back mixed)", ".3f"),
    ("heldout_start", "held-out mean@k, step 0", ".3f"),
    ("heldout_mean", "held-out mean@k", ".3f"),
    ("heldout_pass", "held-out pass@k", ".3f"),
    ("ess", "ESS", ".3f"),
    ("truncated", "truncated / masked share", ".4f"),
    ("prox_mu_gap", "mean abs(pi_prox - mu)", ".2e"),
    ("entropy", "entropy, last quarter", ".3f"),
    ("lag_mean", "trained lag, mean", ".2f"),
    ("leased_t_max", "leased T, max", ".3f"),
    ("response_tokens", "response tokens, mean", ".1f"),
]


def _mean(xs) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(xs) / len(xs) if xs else float("nan")


def cell_figures(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval/mean_at_k" in r]
    summary = read_summary(run_dir)
    q = max(1, len(steps) // 4)
    lag_hist = {int(k): v for k, v in summary.stats["lag_hist"].items()}
    total = sum(lag_hist.values()) or 1
    gaps = [v for r in steps for k, v in r.items() if k.startswith("prox_mu_gap/")]
    return {
        "residual_early": _mean(r["residual_frac"] for r in steps[:q]),
        "residual_late": _mean(r["residual_frac"] for r in steps[-q:]),
        "reactivated": _mean(r.get("reactivated_rate") for r in steps),
        "heldout_start": evals[0]["eval/mean_at_k"] if len(evals) > 1 and evals[0]["step"] == 0 else float("nan"),
        "heldout_mean": evals[-1]["eval/mean_at_k"] if evals else float("nan"),
        "heldout_pass": evals[-1]["eval/pass_at_k"] if evals else float("nan"),
        "ess": _mean(r["ess"] for r in steps), "truncated": _mean(r["truncated_frac"] for r in steps),
        "prox_mu_gap": _mean(gaps), "entropy": _mean(r["entropy"] for r in steps[-q:]),
        "response_tokens": _mean(r.get("response_len") for r in steps),
        "lag_mean": sum(k * v for k, v in lag_hist.items()) / total, "lag_max": max(lag_hist, default=0),
        "lag_share": {k: v / total for k, v in sorted(lag_hist.items())},
        "asked_max_lag": summary.config["learner"]["max_lag"],
        "leased_t_max": max((r.get("leased_temp_max", float("nan")) for r in steps), default=float("nan")),
        "residual_curve": [r["residual_frac"] for r in steps],
        "by_h": _shares(summary.lease_outcomes.get("by_h", {}), summary.stats.get("cut_by_h", {})),
        "by_length": _shares(summary.lease_outcomes.get("by_length", {}), summary.stats.get("cut_by_length", {})),
        "reactivated_by_temp": {float(k.split("/")[1]): _mean(r.get(k) for r in steps)
                                for k in sorted({k for r in steps for k in r if k.startswith("reactivated_by_temp/")})},
    }


def _shares(outcomes: dict[str, dict[str, int]], cut: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per bin: the share of its groups dropped stale and dropped by the filter (of those that came
    back), and the share of its trained tokens whose IS weight was truncated or masked."""
    out = {}
    for b in sorted(set(outcomes) | set(cut)):
        c = outcomes.get(b, {})
        back = sum(c.get(k, 0) for k in ("trained", "dropped_stale", "dropped_filtered")) or 1
        cut_tokens, tokens = cut.get(b, (0.0, 0.0))
        out[b] = {"stale": c.get("dropped_stale", 0) / back, "filtered": c.get("dropped_filtered", 0) / back,
                  "cut": cut_tokens / tokens if tokens else float("nan")}
    return out


def mean_ci(xs: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % confidence interval (0 with one seed)."""
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return float("nan"), float("nan")
    if len(xs) == 1:
        return xs[0], 0.0
    return statistics.fmean(xs), T95.get(len(xs) - 1, 1.96) * statistics.stdev(xs) / math.sqrt(len(xs))


def _label(group: tuple) -> str:
    return ", ".join(f"{k.split('.')[-1]}={Path(str(v)).stem if k == 'preset' else v}" for k, v in group)


def grouped(sweep_dir: Path) -> dict[tuple, list[dict]]:
    grid = json.loads((sweep_dir / "grid.json").read_text())
    out: dict[tuple, list[dict]] = {}
    for cell in grid["cells"]:
        run_dir = sweep_dir / "cells" / cell["name"]
        if not finished(run_dir):
            continue  # failed or not run yet: the report says how many seeds each row has
        group = tuple((k, v) for k, v in cell["values"].items() if k != "run.seed")
        out.setdefault(group, []).append(cell_figures(run_dir))
    return out


def effects(groups: dict[tuple, list[dict]], stats: dict, axis: str, key: str = "heldout_mean") -> list[str]:
    """For each group with `axis` above 0, the difference of `key` from the group with `axis` = 0 and
    every other setting equal (e.g. does exploration still help at lag 8?)."""
    out = []
    for g in groups:
        values = dict(g)
        if float(values.get(axis, 0) or 0) <= 0:
            continue
        base = tuple((k, 0.0 if k == axis else v) for k, v in g)
        match = next((b for b in groups if tuple((k, float(v) if k == axis else v) for k, v in b) == base), None)
        if match is None:
            continue
        (a, ca), (b, cb) = stats[_label(g)][key], stats[_label(match)][key]
        d, cd = a - b, math.sqrt(ca ** 2 + cb ** 2)
        verdict = "beyond" if abs(d) > cd else "within"
        out.append(f"- {_label(g)}: {d:+.3f} ± {cd:.3f} ({verdict} the interval)")
    return out


def drop_tables(groups: dict[tuple, list[dict]]) -> list[str]:
    """Markdown tables: per setting and bin (H at lease, response length in quarters of max_tokens),
    the shares dropped stale, dropped by the filter and IS-cut, each the mean over seeds."""
    lines = []
    for key, title in (("by_h", "the prompt's H when leased"), ("by_length", "the group's mean response length "
                                                                              "(quarters of max_tokens)")):
        bins = sorted({b for cells in groups.values() for c in cells for b in c[key]})
        if not bins:
            continue
        lines += ["", f"Dropped stale / dropped by the filter / IS-truncated token share, by {title}:", "",
                  "| cell | " + " | ".join(bins) + " |", "|" + "---|" * (len(bins) + 1)]
        for g, cells in groups.items():
            row = []
            for b in bins:
                m = {k: _mean(c[key][b][k] for c in cells if b in c[key]) for k in ("stale", "filtered", "cut")}
                row.append(" / ".join("-" if math.isnan(m[k]) else f"{m[k]:.3f}" for k in ("stale", "filtered", "cut")))
            lines.append(f"| {_label(g)} | " + " | ".join(row) + " |")
    return lines


def write_sweep_report(sweep_dir: Path, title: str = "Sweep") -> tuple[str, dict]:
    """report.md + sweep.png; returns the markdown table and {group label: {figure: (mean, ci)}}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = grouped(sweep_dir)
    if not groups:
        raise ValueError(f"{sweep_dir}: no finished cell to report")
    stats = {_label(g): {k: mean_ci([c[k] for c in cells]) for k, _, _ in FIGURES} for g, cells in groups.items()}
    head = "| cell | seeds | " + " | ".join(t for _, t, _ in FIGURES) + " |"
    lines = [f"# {title}", "", "Each figure is the mean over seeds ± the half-width of its 95 % confidence "
             "interval (Student t). Residual share: all-correct groups among those that arrived.", "", head,
             "|" + "---|" * (len(FIGURES) + 2)]
    notes = []
    for g, cells in groups.items():
        label = _label(g)
        row = " | ".join(f"{stats[label][k][0]:{f}} ± {stats[label][k][1]:{f}}" for k, _, f in FIGURES)
        lines.append(f"| {label} | {len(cells)} | {row} |")
        asked, trained = cells[0]["asked_max_lag"], max(c["lag_max"] for c in cells)
        if trained < asked:
            notes.append(f"- {label}: asked for max_lag {asked}, trained at lag {trained} at most")
    if notes:
        lines += ["", "Lag actually trained (a cell may not reach the lag it allows):", *notes]
    if found := effects(groups, stats, "schedule.ts"):
        lines += ["", "ERPO's effect on held-out mean@k over Ts = 0 at the same other settings (difference of "
                      "means ± the root sum of squares of their 95 % half-widths):", *found]
    lines += drop_tables(groups)
    lines += ["", "![sweep](sweep.png)", ""]
    (sweep_dir / "report.md").write_text("\n".join(lines))

    fig, ax = plt.subplots(2, 3, figsize=(20, 9))
    for g, cells in groups.items():
        label = _label(g)
        curves = [c["residual_curve"] for c in cells]
        n = min(map(len, curves))
        ax[0, 0].plot([statistics.fmean(c[i] for c in curves) for i in range(n)], label=label)
        lags = sorted({k for c in cells for k in c["lag_share"]})
        ax[1, 1].plot(lags, [statistics.fmean(c["lag_share"].get(k, 0.0) for c in cells) for k in lags], "o-",
                      label=label)
        m, ci = stats[label]["heldout_mean"]
        ax[0, 1].errorbar([stats[label]["lag_mean"][0]], [m], yerr=[ci], fmt="o", capsize=4, label=label)
        for key, marker in (("ess", "o"), ("truncated", "x")):
            mm, cc = stats[label][key]
            ax[1, 0].errorbar([stats[label]["lag_mean"][0]], [mm], yerr=[cc], fmt=marker, capsize=3)
        mm, cc = stats[label]["prox_mu_gap"]
        ax[1, 2].errorbar([stats[label]["lag_mean"][0]], [mm], yerr=[cc], fmt="o", capsize=3, label=label)
        temps = sorted({t for c in cells for t in c["reactivated_by_temp"]})
        if temps:
            ax[0, 2].plot(temps, [_mean(c["reactivated_by_temp"].get(t) for c in cells) for t in temps], "o-",
                          label=label)
    titles = {(0, 0): "residual share of arriving groups over training (mean over seeds)",
              (0, 1): "held-out mean@k (95 % CI) by the mean trained lag",
              (0, 2): "reactivated: share of groups leased at T > T0 that came back mixed, by T",
              (1, 0): "ESS (o) and truncated share (x) by mean lag", (1, 1): "lag distribution of trained samples",
              (1, 2): "mean abs(pi_prox - mu) (95 % CI) by mean lag"}
    for (i, j), t in titles.items():
        ax[i, j].set_title(t, fontsize=9)
    ax[0, 0].legend(fontsize=6)
    ax[0, 1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(sweep_dir / "sweep.png", dpi=90)
    plt.close(fig)
    return "\n".join(lines), stats
