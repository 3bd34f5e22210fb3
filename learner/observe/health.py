"""A run's health at a glance: the learner writes `health.json` into its run folder every few seconds
(and at each step and checkpoint), and `run.py status [RUN_DIR]` prints one screen from it, live or
finished. Wall-clock times, so that another process (or a person the next morning) can read ages."""

from __future__ import annotations

import os
import time
from pathlib import Path

import msgspec

from pipeline.rundir import latest
from pipeline.config import LearnerConfig

HEALTH = "health.json"
WRITE_EVERY_S = 5.0


class GeneratorHealth(msgspec.Struct, kw_only=True):
    state: str  # up | starting | restarting | cooling | torn (a failed receive: waits for a whole version)
    restarts_last_hour: int = 0
    cooling: str = ""  # why it rests (over which budget, its exit code and last log line)
    retry_in_s: float | None = None  # when it is tried again
    last_error: str = ""
    seen_s_ago: float | None = None


class Health(msgspec.Struct, kw_only=True):
    written: float  # wall clock
    started: float
    pid: int
    step: int
    steps: int
    samples_per_s: float  # over the run so far
    lag_mean: float  # of the last step
    lag_max: int
    generators: dict[int, GeneratorHealth]
    leases: dict[str, int]
    weights_mismatch: int
    checkpoint: str = ""  # the newest, and when it was written (wall clock)
    checkpoint_time: float = 0.0
    checkpoint_every_s: float = 0.0  # the expected interval, from the recent step time
    finished: bool = False


def write(run_dir: Path, health: Health) -> None:
    tmp = run_dir / (HEALTH + ".tmp")
    tmp.write_bytes(msgspec.json.encode(health))
    tmp.rename(run_dir / HEALTH)


def report(run_dir: Path, lc: LearnerConfig, steps_done: int, step: int, stats, leases,
           generators: dict[int, GeneratorHealth], last_lag: tuple[float, int], started_wall: float,
           elapsed: float, finished: bool = False) -> None:
    """Write the run's health as it stands (`stats`: the run statistics; `leases`: the lease book;
    `elapsed`: seconds since the first rollout; `steps_done`: steps taken by this process)."""
    newest = latest(run_dir / "checkpoints")
    write(run_dir, Health(
        written=time.time(), started=started_wall, pid=os.getpid(), step=step, steps=lc.steps,
        samples_per_s=stats.samples_trained / elapsed if elapsed > 0 else 0.0,
        lag_mean=last_lag[0], lag_max=last_lag[1], generators=generators,
        leases={"dispatched": leases.dispatched, "open": leases.open, **leases.outcomes},
        weights_mismatch=stats.weights_mismatch, checkpoint=newest.name if newest else "",
        checkpoint_time=newest.stat().st_mtime if newest else 0.0,
        checkpoint_every_s=lc.checkpoint_every * elapsed / max(steps_done, 1) if lc.checkpoint_every else 0.0,
        finished=finished))


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def status(run_dir: Path, now: float | None = None) -> str:
    """One screen on the run in `run_dir`, and its warnings."""
    path = run_dir / HEALTH
    if not path.exists():
        return f"{run_dir}: no {HEALTH} (not a run folder, or a run that has not started its loop yet)"
    h = msgspec.json.decode(path.read_bytes(), type=Health)
    now = time.time() if now is None else now
    left = (h.steps - h.step) / (h.step / max(h.written - h.started, 1e-9)) if h.step else float("nan")
    state = "finished" if h.finished else f"running (pid {h.pid}, health written {_age(now - h.written)} ago)"
    lines = [f"run {run_dir}: {state}",
             f"  step {h.step} / {h.steps}   {h.samples_per_s:.1f} samples/s   lag now mean {h.lag_mean:.1f} "
             f"max {h.lag_max}   time left at this rate {_age(left) if left == left else '?'}",
             f"  leases {h.leases}"]
    for gid, g in sorted(h.generators.items()):
        seen = f", last heard {_age(g.seen_s_ago)} ago" if g.seen_s_ago is not None else ""
        extra = (f", tried again in {_age(max(0.0, g.retry_in_s - (now - h.written)))}: {g.cooling}"
                 if g.cooling and g.retry_in_s is not None else "")
        lines.append(f"  generator {gid}: {g.state}{extra} ({g.restarts_last_hour} restarts in the last hour{seen})"
                     + (f"\n      last error: {g.last_error}" if g.last_error else ""))
    ckpt_age = now - h.checkpoint_time if h.checkpoint else None
    lines.append(f"  newest checkpoint: {h.checkpoint} ({_age(ckpt_age)} old)" if h.checkpoint
                 else "  newest checkpoint: none yet")
    warnings = []
    if h.weights_mismatch:
        warnings.append(f"{h.weights_mismatch} weight updates did not verify (weights_mismatch)")
    if any(g.state == "cooling" for g in h.generators.values()):
        warnings.append("a generator is cooling down after failing (see above)")
    since = ckpt_age if ckpt_age is not None else now - h.started
    if not h.finished and h.checkpoint_every_s and since > 2 * h.checkpoint_every_s:
        warnings.append(f"no checkpoint for {_age(since)}, over two intervals ({_age(h.checkpoint_every_s)} each)")
    if not h.finished and now - h.written > 6 * WRITE_EVERY_S + 60:
        warnings.append(f"the learner has not written its health for {_age(now - h.written)}: stopped or hung")
    lines += [f"  WARNING: {w}" for w in warnings]
    return "\n".join(lines)
