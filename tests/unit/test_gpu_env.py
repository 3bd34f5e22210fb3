"""`make venv-gpu`'s plan (scripts/gpu_env.py): vLLM for CUDA and the torch it pins, as a pair, from PyPI
alone; its dry run prints it on any machine, this one included."""

import subprocess
import sys
import tomllib

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.unit


def test_the_dry_run_prints_the_pinned_pair_from_pypi_alone_and_installs_nothing():
    existed = (ROOT / ".venv-gpu").exists()
    out = subprocess.run(["make", "-s", "venv-gpu", "DRY_RUN=1", f"PYTHON={sys.executable}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    install = [ln for ln in lines if "vllm==" in ln and "pip install" in ln]
    assert len(install) == 1 and "torch==2.13.0" in install[0] and "vllm==0.32.0" in install[0]
    assert "--isolated" in install[0]  # this machine's pip settings (a local CPU torch wheel) cannot win
    assert (ROOT / ".venv-gpu").exists() == existed  # nothing was made


def test_the_pair_is_the_one_the_project_declares():
    sys.path.insert(0, str(ROOT / "scripts"))
    import gpu_env

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert f"vllm=={gpu_env.PAIR['vllm']}" in project["optional-dependencies"]["gpu"]
    assert f"torch=={gpu_env.PAIR['torch']}" in project["dependencies"]
