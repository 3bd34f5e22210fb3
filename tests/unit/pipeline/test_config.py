import subprocess
import sys

import msgspec
import pytest

from pipeline.config import Config, ConfigError, apply_overrides, from_dict, load
from tests.conftest import DEFAULT_TOML, ROOT


def test_default_toml_loads_and_overrides_apply():
    cfg = load(DEFAULT_TOML, ["--learner.lr", "1e-6", "--schedule.tmax=1.5", "--log.wandb", "false"])
    assert cfg.learner.lr == 1e-6
    assert cfg.schedule.tmax == 1.5
    assert cfg.log.wandb is False
    assert cfg.data.source == "reasoning_gym:basic_arithmetic"


@pytest.mark.parametrize("overrides, field", [
    (["--learner.bogus", "1"], "bogus"),
    (["--nosuchsection.x", "1"], "nosuchsection"),
    (["--learner.lr", "abc"], "learner.lr"),
    (["--learner.max_lag", "-1"], "learner.max_lag"),
    (["--learner.group_size", "1"], "learner.group_size"),
    (["--loss.correction", "nonsense"], "loss.correction"),
    (["--schedule.t0", "1.5", "--schedule.tmax", "1.2"], "schedule.tmax"),
    (["--model.path", "/no/such/model"], "model.path"),
])
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ConfigError) as err:
        load(DEFAULT_TOML, overrides)
    assert field in str(err.value)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="has no value"):
        apply_overrides({}, ["--learner.lr"])
    with pytest.raises(ConfigError, match="expected an override"):
        apply_overrides({}, ["learner.lr", "1"])


def test_missing_config_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[learner\nlr = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad)


def test_resolved_config_round_trips():
    cfg = load(DEFAULT_TOML)
    assert from_dict(msgspec.to_builtins(cfg)) == cfg
    assert Config() == from_dict({})


def test_dry_run_prints_resolved_config_and_exits():
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), "train", "--dry-run", "--learner.steps", "7"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    resolved = msgspec.json.decode(out.stdout)
    assert resolved["learner"]["steps"] == 7


def test_dry_run_checks_gpu_placement_from_the_config_alone():
    """On a CPU machine too: a cluster config whose learner sits on a generator's GPU is refused."""
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), "train", "--dry-run", "--generator.devices", '["0"]',
                          "--learner.device", "cuda:0"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "generator.devices[0] gives to a generator" in out.stderr, out.stderr


def test_cli_config_error_exits_2_with_field():
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), "train", "--learner.lr", "oops"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "learner.lr" in out.stderr


def test_a_removed_setting_is_named_with_what_became_of_it():
    with pytest.raises(ConfigError, match=r"transport.weights_port was removed: each generator's weight group"):
        from_dict({"transport": {"weights_port": 29500}})


def test_a_generator_receives_only_its_sections():
    from pipeline.config import GeneratorSettings, dumps, dumps_generator, loads_generator

    cfg = from_dict({"generator": {"max_tokens": 7}, "learner": {"lr": 0.5}})
    text = dumps_generator(cfg)
    assert set(msgspec.json.decode(text)) == {"run", "model", "transport", "generator", "weights"}
    assert loads_generator(text) == GeneratorSettings.of(cfg) and loads_generator(text).generator.max_tokens == 7
    assert loads_generator(dumps(cfg)) == GeneratorSettings.of(cfg)  # a run's whole resolved config also does
    with pytest.raises(ConfigError, match=r"generator.max_tokens"):
        loads_generator(b'{"generator": {"max_tokens": -1}}')


def test_a_tasks_options_are_replaced_whole_by_a_file_that_sets_them_not_merged(tmp_path):
    """The embedded default's reasoning-gym options would be unknown to another task."""
    from pipeline.config import load

    base = tmp_path / "base.toml"
    base.write_text('[data]\nsource = "reasoning_gym:basic_arithmetic"\ntask_options = { min_terms = 2, max_digits = 1 }\n'
                    '[learner]\nsteps = 7\n')
    top = tmp_path / "top.toml"
    top.write_text('extends = "base.toml"\n[data]\nsource = "traces:add"\ntask_options = { digits = 3 }\n')
    cfg = load([str(top)], ["--data.task_options.digits", "4"])
    assert cfg.data.task_options == {"digits": 4} and cfg.learner.steps == 7  # other sections still merge
