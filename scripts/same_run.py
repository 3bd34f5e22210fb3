#!/usr/bin/env python
"""Does a change keep what training does? Runs one exact-lag command at two commits (or compares two
run folders already made) and checks that every step logged the same loss, reward, token counts,
temperatures, H and lag, to `--tol`, and that the trackers ended equal.

    python scripts/same_run.py --commits bccc535 HEAD          # run the 30-step exact run at both
    python scripts/same_run.py --commits bccc535 HEAD --config configs/train.toml   # the ERPO default
    python scripts/same_run.py --runs runs/a runs/b            # compare two finished runs

Under exact lag control (`learner.lag_control = "exact"`) a run is a function of its config and seed,
so any difference is a change of behaviour, not of timing. Timings (keys with time, seconds, per_s)
are skipped. Each commit runs in a git worktree of its own under --work, with this checkout's Python.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ["configs/default.toml"]
COMMAND = ["--learner.lag_control", "exact", "--learner.max_lag", "2", "--learner.steps", "30", "--run.seed", "3",
           "--eval.final", "false"]
# what must match step by step: the loss, rewards, token counts, temperatures, H and lag
WATCHED = ("loss", "reward", "tokens", "temperature", "temp", "h_", "lag", "residual", "groups/", "leases/")
SKIPPED = ("time", "seconds", "per_s", "memory", "mem_")


def watched(key: str) -> bool:
    return any(w in key for w in WATCHED) and not any(s in key for s in SKIPPED)


def read_steps(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "reward" in r]  # step rows (not alerts, not held-out rounds)


def compare(a: Path, b: Path, tol: float) -> list[str]:
    """Every difference between two runs' step metrics and trackers (empty: the same run)."""
    sa, sb = read_steps(a), read_steps(b)
    diffs = [] if len(sa) == len(sb) else [f"{len(sa)} steps against {len(sb)}"]
    compared = 0
    for i, (x, y) in enumerate(zip(sa, sb)):
        for key in sorted(k for k in set(x) | set(y) if watched(k)):
            if key not in x or key not in y:
                diffs.append(f"step {i}: {key} only in {'the first' if key in x else 'the second'}")
                continue
            u, v = x[key], y[key]
            compared += 1
            if isinstance(u, (int, float)) and isinstance(v, (int, float)):
                if not math.isclose(u, v, rel_tol=tol, abs_tol=tol):
                    diffs.append(f"step {i}: {key} {u!r} != {v!r}")
            elif u != v:
                diffs.append(f"step {i}: {key} {u!r} != {v!r}")
    ta, tb = (p / "tracker.jsonl" for p in (a, b))
    if ta.exists() and tb.exists() and ta.read_text() != tb.read_text():
        diffs.append("the trackers differ")
    print(f"compared {compared} figures over {min(len(sa), len(sb))} steps")
    return diffs


def run_at(commit: str, work: Path, config: list[str]) -> Path:
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", commit], check=True, capture_output=True,
                         text=True).stdout.strip()
    tree = work / sha  # by commit, not by name: HEAD moves
    if not tree.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), sha], check=True)
    name = "same-run-" + "-".join(Path(c).stem for c in config)
    run_dir = tree / "runs" / name
    if not (run_dir / "summary.json").exists():
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}
        cache = work / "cache"  # the warm-started model, shared (its key hashes what shaped it)
        subprocess.run([sys.executable, "run.py", "train", "--config", *config, *COMMAND, "--run.name", name,
                        "--run.out_dir", str(tree / "runs"), "--log.progress", "false",
                        "--run.cache_dir", str(cache)],
                       cwd=tree, env=env, check=True)
    return run_dir


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--commits", nargs=2, metavar=("A", "B"))
    group.add_argument("--runs", nargs=2, type=Path, metavar=("DIR_A", "DIR_B"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/same-run"))
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--config", nargs="+", default=CONFIG, help="the config files of the run (default: %(default)s)")
    args = ap.parse_args()
    runs = args.runs or [run_at(c, args.work, args.config) for c in args.commits]
    diffs = compare(*runs, tol=args.tol)
    for d in diffs[:40]:
        print(d)
    print("SAME" if not diffs else f"DIFFERENT ({len(diffs)} differences)")
    return 0 if not diffs else 1


if __name__ == "__main__":
    sys.exit(main())
