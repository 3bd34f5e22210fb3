"""The engine's rule for torch.compile (actors/engine.py, eager_where_compilation_fails): errors
suppressed always; under a forced ATEN_CPU_CAPABILITY, no inductor at all, in this process and in
the worker processes vLLM starts (they read the environment)."""

import os

import pytest
import torch._dynamo

from actors.engine import eager_where_compilation_fails

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("capability", ["", "avx2"])
def test_a_forced_cpu_capability_turns_inductor_off_for_the_engine_and_its_workers(monkeypatch, capability):
    config = torch._dynamo.config  # a module with its own attribute rules: saved and put back by hand
    saved = (config.suppress_errors, config.disable)
    config.suppress_errors, config.disable = False, False
    monkeypatch.delenv("TORCHDYNAMO_DISABLE", raising=False)
    if capability:
        monkeypatch.setenv("ATEN_CPU_CAPABILITY", capability)
    else:
        monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    try:
        eager_where_compilation_fails()
        assert config.suppress_errors and config.disable == bool(capability)
        assert (os.environ.get("TORCHDYNAMO_DISABLE") == "1") == bool(capability)
    finally:
        config.suppress_errors, config.disable = saved
        os.environ.pop("TORCHDYNAMO_DISABLE", None)
