"""The run's configuration: its schema (every setting with its type, range, default and description:
pipeline/config/schema.py), reading it from TOML files and overrides (pipeline/config/files.py), and
its reference as `run.py config` prints it (pipeline/config/reference.py)."""

from pipeline.config.files import (PACKAGED_MODELS, REMOVED, ConfigError, apply_overrides, dumps, dumps_generator,
                                   from_dict, load, loads, loads_generator, read_toml, to_toml_dict)
from pipeline.config.schema import (AdvantageConfig, Config, DAPOConfig, DataConfig, DataFields, EvalConfig,
                                    GeneratorConfig, GeneratorSettings, LearnerConfig, LogConfig, LossConfig,
                                    ModelConfig, ReactivationConfig, RunConfig, ScheduleConfig, Section,
                                    TinyModelConfig, TrackerConfig, TransportConfig, WarmStartConfig, WeightsConfig,
                                    ZVPConfig)

__all__ = ["PACKAGED_MODELS", "REMOVED", "AdvantageConfig", "Config", "ConfigError", "DAPOConfig", "DataConfig",
           "DataFields", "EvalConfig", "GeneratorConfig", "GeneratorSettings", "LearnerConfig", "LogConfig",
           "LossConfig", "ModelConfig", "ReactivationConfig", "RunConfig", "ScheduleConfig", "Section",
           "TinyModelConfig", "TrackerConfig", "TransportConfig", "WarmStartConfig", "WeightsConfig", "ZVPConfig",
           "apply_overrides", "dumps", "dumps_generator", "from_dict", "load", "loads", "loads_generator",
           "read_toml", "to_toml_dict"]
