"""Per-step metrics to a local JSONL file and to wandb (offline unless the user logs in)."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

import msgspec

from learner.observe.stats import residual_share

log = logging.getLogger(__name__)


class MetricsLog:
    def __init__(self, path: Path, *, use_wandb: bool, wandb_mode: str, run_name: str, config: dict,
                 resumed_at: int | None = None, checkpoint: str = ""):
        """`resumed_at`: the version of the checkpoint a resumed run continues from. The lines of
        later steps (written before the run stopped, and lost with it) move to `metrics.lost.jsonl`,
        and a `resumed` line marks the place, so no step is in the file twice."""
        path.parent.mkdir(parents=True, exist_ok=True)
        if resumed_at is not None and path.exists():
            self._cut_after(path, resumed_at, checkpoint)
        self.file = path.open("ab")
        self.wandb = None
        if use_wandb and wandb_mode != "disabled":
            try:
                import wandb

                os.environ.setdefault("WANDB_SILENT", "true")
                # one wandb run per run folder: a resumed run continues it (its id is kept beside the
                # metrics). The id is made here, not by wandb's helpers, which move between releases
                # (`wandb.util.generate_id` is gone from 0.31): any 8 lowercase hex characters will do.
                id_file = path.parent / "wandb_id"
                run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
                id_file.write_text(run_id)
                self.wandb = wandb.init(project="rlvr", name=run_name, mode=wandb_mode, config=config,
                                        dir=str(path.parent), reinit="finish_previous", id=run_id, resume="allow")
            except Exception as exc:  # noqa: BLE001 - tracking must never take the run down
                log.warning("wandb unavailable (%s); metrics go to %s only", exc, path)

    @staticmethod
    def _cut_after(path: Path, step: int, checkpoint: str) -> None:
        lines = path.read_bytes().splitlines(keepends=True)
        keep, lost = [], []
        for line in lines:
            try:
                (lost if msgspec.json.decode(line).get("step", 0) > step else keep).append(line)
            except msgspec.DecodeError:  # a line cut short by the crash
                lost.append(line if line.endswith(b"\n") else line + b"\n")
        if lost:
            with open(path.with_name("metrics.lost.jsonl"), "ab") as f:
                f.writelines(lost)
            log.warning("%s: %d lines after step %d (lost with the run's stop) moved to metrics.lost.jsonl",
                        path, len(lost), step)
        marker = msgspec.json.encode({"step": step, "event": "resumed", "checkpoint": checkpoint,
                                      "lines_moved": len(lost)}) + b"\n"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(b"".join(keep) + marker)
        tmp.rename(path)

    def alert(self, title: str, text: str) -> None:
        """A wandb alert (e-mail or Slack, where the user set them up) for what an operator must see:
        a generator cooling down, a run stopped. Offline, or without wandb, only the log has it."""
        log.error("%s: %s", title, text)
        if self.wandb is not None:
            try:
                self.wandb.alert(title=title, text=text)
            except Exception as exc:  # noqa: BLE001 - an alert must never take the run down
                log.warning("wandb alert not sent (%s)", exc)

    def log(self, step: int, metrics: dict) -> None:
        self.file.write(msgspec.json.encode({"step": step, **metrics}) + b"\n")
        self.file.flush()
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        self.file.close()
        if self.wandb is not None:
            self.wandb.finish()


def summarize(stats, counters: dict) -> tuple[str, str]:
    """A short human summary of a run and its machine-readable last line."""
    rewards = stats.step_rewards
    q = max(1, len(rewards) // 4)
    first = sum(rewards[:q]) / q if rewards else 0.0
    last = sum(rewards[-q:]) / q if rewards else 0.0
    kinds = stats.arrivals.outcomes
    groups = sum(kinds.values())
    residual = residual_share(kinds)  # of all groups that arrived
    mean_temp = stats.trained_temp_sum / stats.trained_groups if stats.trained_groups else 0.0
    sps = stats.samples_trained / stats.seconds if stats.seconds else 0.0
    res = stats.step_residual
    res_first, res_last = (sum(res[:q]) / len(res[:q]), sum(res[-q:]) / len(res[-q:])) if res else (0.0, 0.0)
    temps = stats.arrivals.temperatures()
    t_min, t_med, t_max = (temps[0], temps[len(temps) // 2], temps[-1]) if temps else (0.0, 0.0, 0.0)
    above, above_mixed = stats.arrivals.above_t0, stats.arrivals.above_t0_mixed
    reactivated = above_mixed / above if above else 0.0
    lag_total = sum(stats.lag_hist.values()) or 1
    lags = ", ".join(f"{k}: {v / lag_total:.0%}" for k, v in sorted(stats.lag_hist.items()))
    text = "\n".join([
        f"steps {len(rewards)}   samples trained {stats.samples_trained}   {sps:.1f} samples/s",
        f"train reward: first quarter {first:.3f} -> last quarter {last:.3f}",
        f"groups: {groups} complete ({kinds['positive']} all-correct = {residual:.1%} residual, "
        f"{kinds['negative']} all-wrong, {kinds['mixed']} mixed)",
        f"residual share of arriving groups: first quarter {res_first:.3f} -> last quarter {res_last:.3f}",
        f"leased temperatures: min {t_min:.3f} / median {t_med:.3f} / max {t_max:.3f}   groups leased above T0 "
        f"{above}, came back mixed (reactivated) {above_mixed} = {reactivated:.1%}",
        f"mean temperature of trained groups {mean_temp:.3f}   lag distribution (samples) {{{lags}}}",
        f"leases: {counters}",
        "learner time (share of the time in steps): "
        + ("   ".join(f"{k} {v:.0%}" for k, v in stats.time_share().items()) or "none recorded"),
        *[f"held-out (step {step}): {e['name']} mean@{e['k']} {e['mean_at_k']:.4f}  pass@{e['k']} {e['pass_at_k']:.4f}"
          for step, e in (stats.evals[:1] + stats.evals[-1:] if len(stats.evals) > 1 else stats.evals)],
    ])
    result = (f"RESULT steps={len(rewards)} samples={stats.samples_trained} reward_first={first:.4f} "
              f"reward_last={last:.4f} residual_frac={residual:.4f} mean_temp={mean_temp:.4f} "
              f"samples_per_s={sps:.2f}")
    if len(stats.evals) > 1:  # held-out mean@k before and after (eval.first and eval.final)
        result += f" acc_start={stats.evals[0][1]['mean_at_k']:.4f} acc_end={stats.evals[-1][1]['mean_at_k']:.4f}"
    return text, result
