"""Options on the command line: one flag per schema option, with its description, a readable metavar and its group, and
the help formatter every wubugen subcommand uses.

`--help` shows the options a user of the training guide touches (`opt(..., common=True)` in the schema) and `--help-all`
every one. Flags arrive as strings and are coerced and checked with the preset's and the TOML file's values in
`build_config`, so a bad value reads the same whether it came from a flag or from a file.
"""
from __future__ import annotations

import argparse
import textwrap
from typing import Any, Literal, get_args, get_origin

from wubugen.config.loading import base_type, build_config
from wubugen.config.schema import GROUPS, PRESETS, Config, Option, options

DEST_PREFIX = "opt__"  # argparse dest of an option's flag; the rest of the namespace belongs to the subcommand


def schema_option(action: argparse.Action) -> Option | None:
    """The schema option an argparse action was made for by add_config_arguments, or None (the command's own)."""
    return getattr(action, "schema_option", None)


# --------------------------------------------------------------------------------------------------------------------
# What --help says of an option
# --------------------------------------------------------------------------------------------------------------------
def metavar(o: Option) -> str | None:
    """N, FLOAT, the schema's own (PATH, DIR, NAME, ...), TEXT, true|false; None for choices (argparse writes {a,b})."""
    inner, _ = base_type(o.type)
    if get_origin(inner) is list:
        (inner,) = get_args(inner)
    if o.metavar:
        return o.metavar
    if get_origin(inner) is Literal:
        return None
    return {bool: "true|false", int: "N", float: "FLOAT"}.get(inner, "TEXT")


def format_value(value: Any) -> str:
    """A value as the command line takes it: none, true/false, lists space-separated, floats as Python writes them."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return " ".join(format_value(v) for v in value)
    return str(value)


def help_text(o: Option) -> str:
    """The option's line in --help: what it does, then (range; default; the guide's launcher variable)."""
    facts = ([o.range.text] if o.range else []) + [f"default {format_value(o.default)}"]
    if o.guide:
        facts.append(f"launcher {o.guide}")
    return f"{o.help} ({'; '.join(facts)})"


# --------------------------------------------------------------------------------------------------------------------
# argparse pieces
# --------------------------------------------------------------------------------------------------------------------
class BoolAction(argparse.Action):
    """`--flag`, `--flag true|false` and `--no-flag` all work, as old launchers pass store_true flags."""

    def __init__(self, option_strings, dest, **kw):
        opts = list(option_strings) + [s.replace("--", "--no-", 1) for s in option_strings if s.startswith("--")]
        super().__init__(opts, dest, nargs="?", **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string and option_string.startswith("--no-"):
            setattr(namespace, self.dest, "false")
        else:
            setattr(namespace, self.dest, "true" if values is None else values)


class HelpAllAction(argparse.Action):
    """`--help-all`: the help with every option (plain --help hides the uncommon ones until then), then exit."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None, note=""):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)
        self.note = note  # the epilog's "n of N options shown" line, which --help-all drops

    def __call__(self, parser, namespace, values, option_string=None):
        for action in parser._actions:
            full = getattr(action, "full_help", None)
            if full is not None:
                action.help = full
        if self.note and parser.epilog:
            parser.epilog = parser.epilog.replace(self.note, "").rstrip()
        parser.print_help()
        parser.exit()


class HelpFormatter(argparse.HelpFormatter):
    """The help of every wubugen command: paragraphs wrapped to the terminal and blocks with indented lines (examples)
    kept as written; the usage line without the config options (it would name 156 of them); booleans as
    `--flag [true|false], --no-flag`; the default of any other argument that takes a value."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 32, width: int | None = None):
        super().__init__(prog, indent_increment, max_help_position, width)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        blocks = []
        for block in textwrap.dedent(text).strip("\n").split("\n\n"):
            if any(line[:1].isspace() for line in block.splitlines()):
                blocks.append("\n".join(indent + line for line in block.splitlines()))
            else:
                blocks.append(textwrap.fill(" ".join(block.split()), width, initial_indent=indent,
                                            subsequent_indent=indent))
        return "\n\n".join(blocks)

    def _format_usage(self, usage, actions, groups, prefix):
        own = [a for a in actions if schema_option(a) is None]
        text = super()._format_usage(usage, own, groups, prefix)
        if usage is None and len(own) < len(actions):
            text = text.rstrip("\n") + " [OPTION ...]\n\n"
        return text

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if isinstance(action, BoolAction):
            return f"{action.option_strings[0]} [true|false], {action.option_strings[1]}"
        return super()._format_action_invocation(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.option_strings and action.nargs != 0 and schema_option(action) is None
                and action.default is not None and action.default is not argparse.SUPPRESS and "default" not in text):
            text += " (default %(default)s)"
        return text


# --------------------------------------------------------------------------------------------------------------------
# The config flags of a subcommand
# --------------------------------------------------------------------------------------------------------------------
def add_config_arguments(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None,
                         brief: bool | None = None) -> None:
    """`--help-all`, `--preset`, `--config` and one flag per option of the TOML sections in `only` (default: all), in
    the schema's groups. brief (default: when every section is there): plain --help shows the common options only."""
    chosen = [o for o in options() if only is None or o.path[0] in only]
    brief = only is None if brief is None else brief
    shown = sum(o.common for o in chosen) if brief else len(chosen)
    parser.formatter_class = HelpFormatter
    note = (f"{shown} of {len(chosen)} options shown: --help-all lists every one, docs/options.md describes them "
            f"with their TOML keys." if shown < len(chosen) else "")
    if note:
        parser.epilog = f"{parser.epilog}\n\n{note}" if parser.epilog else note
    parser.add_argument("--help-all", action=HelpAllAction, note=note,
                        help=f"show all {len(chosen)} options, by group, and exit")
    parser.add_argument("--preset", default=None, metavar="NAME",
                        help=f"start from a preset: {', '.join(PRESETS)} (launcher PRESET in scripts/train.sh)")
    parser.add_argument("--config", default=None, metavar="FILE.toml",
                        help="TOML file of options, applied after the preset; flags win over both")
    groups: dict[str, Any] = {}
    for key in GROUPS:  # argparse prints the groups in the order they are made
        if any(o.group == key for o in chosen):
            groups[key] = parser.add_argument_group(GROUPS[key])
    for o in chosen:
        inner, _ = base_type(o.type)
        kw: dict[str, Any] = dict(dest=DEST_PREFIX + o.name, default=None, metavar=metavar(o),
                                  help=help_text(o).replace("%", "%%"))
        grp = groups[o.group]
        if inner is bool:
            action = grp.add_argument(f"--{o.name}", action=BoolAction, **kw)
        elif get_origin(inner) is list:
            action = grp.add_argument(f"--{o.name}", nargs="+", **kw)
        else:
            choices = get_args(inner) if get_origin(inner) is Literal else None
            action = grp.add_argument(f"--{o.name}", choices=choices, **kw)
        action.schema_option = o
        if brief and not o.common:
            action.full_help, action.help = action.help, argparse.SUPPRESS


def config_from_args(ns: argparse.Namespace) -> Config:
    overrides = {k[len(DEST_PREFIX):]: v for k, v in vars(ns).items() if k.startswith(DEST_PREFIX) and v is not None}
    return build_config(getattr(ns, "preset", None), getattr(ns, "config", None), overrides)
