"""Loading options: presets, TOML files and flags into a `Config` (schema.py), and writing a `Config` back as TOML.

Values are resolved in this order, later winning: field defaults < `--preset NAME` (a TOML file in wubugen/presets) <
`--config FILE.toml` < flags. TOML files may use sections (`[data]`, `[model]`, `[model.wubu_s]`, `[train]`, `[log]`) or
flat flag names at the top level.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import tomli_w

from wubugen.config.schema import PRESETS, SECTIONS, STACKS, Config, ConfigError, validate

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


# --------------------------------------------------------------------------------------------------------------------
# Flag table: flag name -> (path of attribute names, annotated type, default)
# --------------------------------------------------------------------------------------------------------------------
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def flag_table() -> dict[str, tuple[tuple[str, ...], Any, Any]]:
    table: dict[str, tuple[tuple[str, ...], Any, Any]] = {}
    cfg = Config()
    for section in SECTIONS:
        sec_obj = getattr(cfg, section)
        hints = _hints(type(sec_obj))
        for f in fields(sec_obj):
            value = getattr(sec_obj, f.name)
            if is_dataclass(value):
                prefix = STACKS[f.name]
                sub_hints = _hints(type(value))
                for sf in fields(value):
                    name = prefix + sf.name
                    assert name not in table, name
                    table[name] = ((section, f.name, sf.name), sub_hints[sf.name], getattr(value, sf.name))
            else:
                assert f.name not in table, f.name
                table[f.name] = ((section, f.name), hints[f.name], value)
    return table


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) for `X | None`."""
    if get_origin(tp) in (Union, getattr(__import__("types"), "UnionType", Union)):
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Turn a TOML or string value into the field's type, or raise ConfigError naming the option."""
    inner, optional = _base_type(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "")):
        if optional:
            return None
        raise ConfigError(f"--{name} needs a value")
    origin = get_origin(inner)
    try:
        if origin is list:
            (elem,) = get_args(inner)
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


# --------------------------------------------------------------------------------------------------------------------
# Argument parsing
# --------------------------------------------------------------------------------------------------------------------
class _BoolAction(argparse.Action):
    """`--flag`, `--flag true|false` and `--no-flag` all work, as old launchers pass store_true flags."""

    def __init__(self, option_strings, dest, **kw):
        opts = list(option_strings) + [s.replace("--", "--no-", 1) for s in option_strings if s.startswith("--")]
        super().__init__(opts, dest, nargs="?", **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string and option_string.startswith("--no-"):
            setattr(namespace, self.dest, "false")
        else:
            setattr(namespace, self.dest, "true" if values is None else values)


def add_config_arguments(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """Add `--preset`, `--config` and one flag per option (all as strings; coerced in `config_from_args`)."""
    parser.add_argument("--preset", default=None, help=f"start from a preset: {', '.join(PRESETS)}")
    parser.add_argument("--config", default=None, metavar="FILE.toml", help="TOML file of options (after the preset)")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, (path, tp, default) in flag_table().items():
        section = path[0]
        if only is not None and section not in only:
            continue
        grp = groups.setdefault(section, parser.add_argument_group(f"{section} options"))
        inner, _ = _base_type(tp)
        help_default = f"default: {default}"
        if inner is bool:
            grp.add_argument(f"--{name}", dest=f"opt__{name}", action=_BoolAction, default=None, help=help_default)
        elif get_origin(inner) is list:
            grp.add_argument(f"--{name}", dest=f"opt__{name}", nargs="+", default=None, help=help_default)
        else:
            choices = get_args(inner) if get_origin(inner) is Literal else None
            grp.add_argument(f"--{name}", dest=f"opt__{name}", default=None, choices=choices, help=help_default)


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


def config_from_args(ns: argparse.Namespace) -> Config:
    overrides = {k[len("opt__"):]: v for k, v in vars(ns).items() if k.startswith("opt__") and v is not None}
    return build_config(getattr(ns, "preset", None), getattr(ns, "config", None), overrides)


def config_from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a Config from `Config.to_dict()` output (e.g. stored in a checkpoint)."""
    return build_config(overrides=flatten_options(d, "stored config"))


