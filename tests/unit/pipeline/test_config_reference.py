"""The settings' reference (pipeline/config/reference.py): every setting described where it is
defined, docs/configuration.md in step with the schema, and `run.py config` printing it."""

import subprocess
import sys
from typing import Annotated

import pytest

from pipeline.config import reference
from pipeline.config.schema import D, PosInt, Section
from tests.conftest import ROOT

pytestmark = pytest.mark.unit


def undescribed(struct=None) -> list[str]:
    return [s.name for s in (reference.settings(struct) if struct else reference.settings()) if not s.description]


def test_every_setting_has_a_description_and_every_section_one():
    assert undescribed() == []
    assert all(reference.sections().values())
    assert len(reference.settings()) > 100


def test_a_setting_without_a_description_is_caught():
    class Extra(Section):
        described: Annotated[PosInt, D("a described one")] = 1
        bare: int = 0

    assert undescribed(Extra) == ["bare"]


def test_the_generated_reference_is_in_step_with_the_schema():
    """If this fails: python run.py config --markdown > docs/configuration.md"""
    assert (ROOT / "docs" / "configuration.md").read_text() == reference.markdown()


def test_the_reference_gives_type_default_and_range():
    lr = next(s for s in reference.settings() if s.name == "learner.lr")
    assert (lr.type, lr.default, lr.range) == ("float", "0.0001", "> 0")
    gpu = next(s for s in reference.settings() if s.name == "generator.gpu_memory_utilization")
    assert gpu.range == "> 0, <= 1"
    tokens = next(s for s in reference.settings() if s.name == "generator.max_tokens")
    assert tokens.type == 'int | "auto"' and tokens.default == '"auto"' and tokens.range == ">= 1"
    assert any(s.name == "model.tiny.hidden_size" for s in reference.settings())  # nested sections flattened


def test_run_py_config_prints_a_section():
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), "config", "schedule"], capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith("[schedule]") and "tmax" in out and "Tmax: the highest temperature" in out
    assert "[learner]" not in out
    bad = subprocess.run([sys.executable, str(ROOT / "run.py"), "config", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "no section 'nope'" in bad.stderr
