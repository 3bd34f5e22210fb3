"""`run.py bench soak --minutes M`: the default pipeline for M minutes, watched from outside.

Every `SAMPLE_S` seconds the learner process and each generator process are read with psutil
(resident memory, open file descriptors, threads), and the run folder's size. After a warm-up
(the first fifth of the run, at least two minutes when there is room), resident memory is fitted with
a line: its slope, in MB per hour, is the drift a run of days would see. A restarted generator is a
new process; each process is fitted over its own samples and the largest slope is reported.
"""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from benchmarks.timing import print_table

SAMPLE_S = 10.0
STALL_S = 300.0  # no step for this long ends the soak with an error: a stalled run is no soak


def _slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value), per hour."""
    if len(points) < 3:
        return 0.0
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    return 3600.0 * sum((t - mx) * (v - my) for t, v in points) / var if var else 0.0


def _step(run_dir: Path) -> int:
    """The learner's step as its health file says (0 before the first one is written)."""
    try:
        return int(json.loads((run_dir / "health.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return 0


def _folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20 if path.exists() else 0.0


def _read(proc: psutil.Process) -> tuple[float, int, int] | None:
    try:
        with proc.oneshot():
            return proc.memory_info().rss / 2**20, proc.num_fds(), proc.num_threads()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def bench_soak(config: list[str], overrides: list[str], minutes: float, out_dir: Path) -> dict:
    run_name = f"soak-{int(time.time())}"
    cmd = [sys.executable, str(Path(__file__).resolve().parent.parent / "run.py"), "train", "--config", *config,
           "--learner.steps", "100000000", "--eval.final", "false", "--log.progress", "false",
           "--run.out_dir", str(out_dir), "--run.name", run_name, *overrides]
    run_dir = out_dir / run_name
    # The learner's output goes to a file: a pipe nobody reads fills up (64 KB of log lines) and
    # then blocks the learner in the middle of whatever it was logging.
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / f"{run_name}.log"
    log_file = open(log_path, "w")
    learner = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, text=True)
    steps: list[tuple[float, int]] = []  # (seconds, the learner's step), from its health file
    series: dict[tuple[str, int], list[tuple[float, float, int, int]]] = collections.defaultdict(list)
    disk: list[tuple[float, float]] = []
    start = time.monotonic()
    end = start + 60.0 * minutes
    warmup = min(max(0.2 * (end - start), 120.0), 0.5 * (end - start))
    try:
        root = psutil.Process(learner.pid)
        while time.monotonic() < end and learner.poll() is None:
            t = time.monotonic() - start
            reading = _read(root)
            if reading is not None:
                series[("learner", root.pid)].append((t, *reading))
            generators = []
            for child in root.children(recursive=True):
                try:
                    if "generate" in " ".join(child.cmdline()) and (r := _read(child)) is not None:
                        series[("generator", child.pid)].append((t, *r))
                        generators.append(r[0])
                except psutil.Error:  # it exited (or is a zombie, a restart under way) while we looked
                    pass
            disk.append((t, _folder_mb(run_dir)))
            steps.append((t, _step(run_dir)))
            print(f"[soak] {t / 60:5.1f} min  step {steps[-1][1]}  learner {reading[0] if reading else 0:.1f} MB  "
                  f"generator {' '.join(f'{g:.1f}' for g in generators)} MB  run folder {disk[-1][1]:.1f} MB  "
                  f"({sum(1 for (k, _) in series if k == 'generator')} generator processes so far)", flush=True)
            stalled = [s for tt, s in steps if tt >= t - STALL_S]
            if t > STALL_S + warmup and len(set(stalled)) == 1:
                raise RuntimeError(f"the soak run made no step in {STALL_S:.0f} s (still at step {stalled[0]}); "
                                   f"its log: {log_path}")
            time.sleep(SAMPLE_S)
    finally:
        if learner.poll() is None:
            learner.send_signal(signal.SIGTERM)  # finish the step, checkpoint, stop
        try:
            learner.wait(timeout=300)
        except subprocess.TimeoutExpired:
            learner.kill()
            learner.wait()
        log_file.close()
    if not any(k == "learner" for k, _ in series):
        raise RuntimeError(f"the soak run did not start:\n{log_path.read_text()[-2000:]}")

    def after_warmup(points):
        return [p for p in points if p[0] >= warmup] or points[-3:]

    out: dict[str, float] = {}
    for kind in ("learner", "generator"):
        procs = [after_warmup(pts) for (k, _), pts in series.items() if k == kind and pts]
        long_enough = [pts for pts in procs if pts[-1][0] - pts[0][0] >= 0.5 * (end - start - warmup)] or procs
        slopes = [_slope_per_hour([(p[0], p[1]) for p in pts]) for pts in long_enough]
        rss = [pts[-1][1] for pts in long_enough]
        out[f"rss_slope_{kind}_mb_h"] = max(slopes, default=0.0)
        out[f"rss_{kind}_mb"] = max(rss, default=0.0)
        out[f"fds_growth_{kind}"] = max((pts[-1][2] - pts[0][2] for pts in long_enough), default=0)
        out[f"threads_growth_{kind}"] = max((pts[-1][3] - pts[0][3] for pts in long_enough), default=0)
    out["generator_processes"] = sum(1 for k, _ in series if k == "generator")
    out["disk_mb_h"] = _slope_per_hour([d for d in disk if d[0] >= warmup] or disk)
    out["minutes"] = (time.monotonic() - start) / 60.0
    out["steps"] = steps[-1][1] if steps else 0
    print_table([
        ("run", f"{run_dir} ({out['minutes']:.1f} min, warm-up {warmup / 60:.1f} min, a sample every {SAMPLE_S:.0f} s)"),
        ("learner resident memory", f"{out['rss_learner_mb']:.0f} MB, slope {out['rss_slope_learner_mb_h']:+.1f} MB/h"),
        ("generator resident memory", f"{out['rss_generator_mb']:.0f} MB, slope {out['rss_slope_generator_mb_h']:+.1f} MB/h"),
        ("open files / threads, growth after warm-up",
         f"learner {out['fds_growth_learner']:+d} / {out['threads_growth_learner']:+d}, "
         f"generator {out['fds_growth_generator']:+d} / {out['threads_growth_generator']:+d}"),
        ("run folder growth", f"{out['disk_mb_h']:+.1f} MB/h"),
        ("steps", f"{out['steps']} ({out['steps'] / max(out['minutes'], 1e-9):.0f} a minute); log {log_path}"),
    ])
    print(f"RESULT rss_slope_learner_mb_h={out['rss_slope_learner_mb_h']:.2f} "
          f"rss_slope_generator_mb_h={out['rss_slope_generator_mb_h']:.2f} "
          f"fds_growth={max(out['fds_growth_learner'], out['fds_growth_generator'])} "
          f"threads_growth={max(out['threads_growth_learner'], out['threads_growth_generator'])} "
          f"disk_mb_h={out['disk_mb_h']:.2f} steps={out['steps']}")
    return out
