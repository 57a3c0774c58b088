"""Options: the schema (every option, its type, default, description and range, and the checks), their loading from
presets, TOML files and flags, and their flags and help on the command line.
`from wubugen.config import Config, build_config, ...` gives all three."""
from wubugen.config.arguments import HelpFormatter, add_config_arguments, config_from_args
from wubugen.config.loading import (build_config, config_from_dict, config_toml, dump_toml, flag_table, load_toml,
                                    preset_values, read_toml)
from wubugen.config.schema import (FLOW_STATS, GROUPS, PRESETS, SECTIONS, STACKS, VAL_METRICS, Config, ConfigError,
                                   DataConfig, FrameGeometry, LogConfig, ModelConfig, Option, TrainConfig,
                                   WuBuStackConfig, options, validate)

__all__ = [
    "FLOW_STATS", "GROUPS", "PRESETS", "SECTIONS", "STACKS", "VAL_METRICS", "Config", "ConfigError", "DataConfig",
    "FrameGeometry", "HelpFormatter", "LogConfig", "ModelConfig", "Option", "TrainConfig", "WuBuStackConfig",
    "add_config_arguments", "build_config", "config_from_args", "config_from_dict", "config_toml", "dump_toml",
    "flag_table", "load_toml", "options", "preset_values", "read_toml", "validate",
]
