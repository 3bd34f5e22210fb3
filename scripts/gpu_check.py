"""The GPU check in one command (`make test-gpu`), run first the day a GPU is at hand: the GPU tests
(tests/gpu), then one line that carries every figure they printed.

    RESULT card=... passed=N failed=N skipped=N peak_gib=... tokens_per_s=... ...

It runs under the Python it is started with: `.venv-gpu/bin/python` (`make venv-gpu`), or a GPU
image's own python3 with the project's pure dependencies carried as wheels (docs/gpu.md). A missing
dependency is named in the RESULT line rather than failing on import. The whole check is bounded by
`--timeout` seconds (default 540: under ten minutes with the machine's start).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# what the GPU tests import beyond torch and transformers
NEEDED = ("msgspec", "zmq", "safetensors", "transformers", "psutil", "numpy")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timeout", type=float, default=540.0)
    ap.add_argument("--out", default="", help="a folder for the log and the JUnit report")
    args = ap.parse_args()
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        print(f"RESULT error=missing_packages missing={','.join(missing)}")
        return 1
    out = Path(args.out or ROOT / "runs" / "gpu-check")
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-s", "-p", "no:cacheprovider", str(ROOT / "tests" / "gpu"),
           "--junitxml", str(out / "junit.xml")]
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT, env=env)
        text, rc = run.stdout + run.stderr, run.returncode
    except subprocess.TimeoutExpired as exc:
        text, rc = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or ""), 124
    (out / "log.txt").write_text(text)
    print(text[-6000:])
    figures: dict[str, object] = {}
    for line in text.splitlines():
        if line.startswith("{") and '"card"' in line:
            try:
                figures.update(json.loads(line))
            except json.JSONDecodeError:
                pass
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", text)}
    fields = {"card": json.dumps(figures.pop("card", "none")), "rc": rc, **{k: counts.get(k, 0) for k in
                                                                            ("passed", "failed", "skipped", "error")}}
    fields.update({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in figures.items()})
    print("RESULT " + " ".join(f"{k}={v}" for k, v in fields.items()))
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
