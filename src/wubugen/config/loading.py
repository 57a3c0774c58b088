"""Loading options: presets, TOML files and flags into a `Config` (schema.py), and writing a `Config` back as TOML.

Values are resolved in this order, later winning: field defaults < `--preset NAME` (a TOML file in wubugen/presets) <
`--config FILE.toml` < flags. TOML files may use sections (`[data]`, `[model]`, `[model.wubu_s]`, `[train]`, `[log]`) or
flat flag names at the top level. The flags themselves and their help: config/arguments.py.
"""
from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import tomli_w

from wubugen.config.schema import PRESETS, SECTIONS, STACKS, Config, ConfigError, options, validate

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


# --------------------------------------------------------------------------------------------------------------------
# Flag table: flag name -> (path of attribute names, annotated type, default)
# --------------------------------------------------------------------------------------------------------------------
def flag_table() -> dict[str, tuple[tuple[str, ...], Any, Any]]:
    """Every option (schema.options()) by flag name; a list default is a tuple."""
    return {o.name: (o.path, o.type, o.default) for o in options()}


def base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) for `X | None`."""
    if get_origin(tp) in (Union, getattr(__import__("types"), "UnionType", Union)):
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Turn a TOML or string value into the field's type, or raise ConfigError naming the option."""
    inner, optional = base_type(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "")):
        if optional:
            return None
        raise ConfigError(f"--{name} needs a value")
    origin = get_origin(inner)
    try:
        if origin is list:
            (elem,) = get_args(inner)
            if isinstance(value, dict):  # a TOML table of NAME = VALUE (--reward_weights)
                value = [f"{k}={v}" for k, v in value.items()]
            items = value if isinstance(value, (list, tuple)) else str(value).replace(",", " ").split()
            return [_coerce(name, elem, v) for v in items]
        if origin is Literal:
            choices = get_args(inner)
            if value not in choices:
                raise ConfigError(f"--{name} must be one of {', '.join(map(str, choices))}, not {value!r}")
            return value
        if inner is bool:
            if isinstance(value, bool):
                return value
            s = str(value).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"--{name} takes true or false, not {value!r}")
        if inner is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if inner is float:
            return float(value)
        if inner is str:
            return str(value)
    except ConfigError:
        raise
    except (TypeError, ValueError):
        raise ConfigError(f"--{name}: {value!r} is not a valid {getattr(inner, '__name__', inner)}") from None
    raise TypeError(f"unsupported option type for {name}: {tp}")


def _set(cfg: Config, path: tuple[str, ...], value: Any) -> None:
    obj: Any = cfg
    for p in path[:-1]:
        obj = getattr(obj, p)
    setattr(obj, path[-1], value)


def _get(cfg: Config, path: tuple[str, ...]) -> Any:
    obj: Any = cfg
    for p in path:
        obj = getattr(obj, p)
    return obj


# --------------------------------------------------------------------------------------------------------------------
# TOML
# --------------------------------------------------------------------------------------------------------------------
def flatten_options(doc: dict[str, Any], source: str) -> dict[str, Any]:
    """Sectioned (as `Config.to_dict()`) or flat options -> {flag name: value}; unknown names are a ConfigError."""
    table = flag_table()
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        if key in SECTIONS and isinstance(value, dict):
            for k, v in value.items():
                if k in STACKS and isinstance(v, dict):
                    for sk, sv in v.items():
                        flat[STACKS[k] + sk] = sv
                else:
                    flat[k] = v
        else:
            flat[key] = value
    unknown = sorted(k for k in flat if k not in table)
    if unknown:
        raise ConfigError(f"{source}: unknown option(s) {', '.join(unknown)}")
    return flat


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A TOML document, or a ConfigError naming `what` and the path (missing, not UTF-8, not valid TOML)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {p} does not exist")
    try:
        return tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {p} is not valid TOML: {e}") from None


def load_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file of options -> {flag name: value}."""
    return flatten_options(read_toml(path), str(path))


def preset_values(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    text = resources.files("wubugen.presets").joinpath(f"{name}.toml").read_text()
    return flatten_options(tomllib.loads(text), f"preset {name}")


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    """TOML has no null: an absent key means the field's default (None)."""
    return {k: _drop_none(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}


def dump_toml(d: dict[str, Any]) -> str:
    """A config dict (`Config.to_dict()`) as TOML, sectioned as `load_toml` reads it."""
    return tomli_w.dumps(_drop_none(d))


def config_toml(cfg: Config) -> str:
    return dump_toml(cfg.to_dict())


def build_config(preset: str | None = None, config_file: str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults < preset < config file < overrides (flag name -> value, strings allowed)."""
    table = flag_table()
    cfg = Config()
    layers: list[dict[str, Any]] = []
    if preset:
        layers.append(preset_values(preset))
    if config_file:
        layers.append(load_toml(config_file))
    if overrides:
        unknown = sorted(k for k in overrides if k not in table)
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(unknown)}")
        layers.append(overrides)
    for layer in layers:
        for name, value in layer.items():
            path, tp, _ = table[name]
            _set(cfg, path, _coerce(name, tp, value))
    if cfg.train.use_amp:
        cfg.train.precision = "fp16"
    validate(cfg)
    return cfg


def config_from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a Config from `Config.to_dict()` output (e.g. stored in a checkpoint)."""
    return build_config(overrides=flatten_options(d, "stored config"))


