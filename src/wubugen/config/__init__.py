"""Options: the schema (every option, its type and default, and the checks) and their loading from presets, TOML
files and flags. `from wubugen.config import Config, build_config, ...` gives both."""
from wubugen.config.loading import (add_config_arguments, build_config, config_from_args, config_from_dict,
                                    config_toml, dump_toml, flag_table, load_toml, preset_values, read_toml)
from wubugen.config.schema import (FLOW_STATS, PRESETS, SECTIONS, STACKS, VAL_METRICS, Config, ConfigError,
                                   DataConfig, FrameGeometry, LogConfig, ModelConfig, TrainConfig, WuBuStackConfig,
                                   validate)

__all__ = [
    "FLOW_STATS", "PRESETS", "SECTIONS", "STACKS", "VAL_METRICS", "Config", "ConfigError", "DataConfig",
    "FrameGeometry", "LogConfig", "ModelConfig", "TrainConfig", "WuBuStackConfig", "add_config_arguments",
    "build_config", "config_from_args", "config_from_dict", "config_toml", "dump_toml", "flag_table", "load_toml",
    "preset_values", "read_toml", "validate",
]
