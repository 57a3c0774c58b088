"""docs/options.md, generated: every option of the schema (name, type, default, range, description, the guide's launcher
variable, TOML key) by --help group, the presets side by side, and each subcommand's own arguments.

`render(parser)` takes the `wubugen` parser (cli.build_parser(), passed in: the config layer does not import the
commands); scripts/gen_options.py writes the file and tests/test_options_doc.py checks it is up to date.
"""
from __future__ import annotations

import argparse
from typing import Literal, get_args, get_origin

from wubugen.config.arguments import format_value, schema_option
from wubugen.config.loading import base_type, preset_values
from wubugen.config.schema import GROUPS, PRESETS, SECTIONS, Option, options

GENERATOR = "scripts/gen_options.py"
# the guide's launcher variable that is no option: the process count, given to torchrun
NPROC = ("NPROC_PER_NODE", "`torchrun --nproc_per_node N -m wubugen train ...` (scripts/train.sh and scripts/train.bat "
                           "run it when NPROC_PER_NODE > 1)")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def type_name(o: Option) -> str:
    inner, optional = base_type(o.type)
    many = get_origin(inner) is list
    if many:
        (inner,) = get_args(inner)
    if get_origin(inner) is Literal:
        name = " \\| ".join(f"`{c}`" for c in get_args(inner))
    elif o.metavar in ("PATH", "DIR"):
        name = "path"
    else:
        name = getattr(inner, "__name__", str(inner))
    if many:
        name = f"list of {name}"
    return f"{name} or none" if optional else name


def _option_rows(group: str) -> list[str]:
    rows = ["| option | type | default | range | description | launcher | TOML key |", "|---|---|---|---|---|---|---|"]
    for o in options():
        if o.group != group:
            continue
        name = f"`--{o.name}`" + (" ●" if o.common else "")
        rows.append("| " + " | ".join([
            name, type_name(o), _cell(_code(format_value(o.default))), _cell(o.range.text if o.range else ""),
            _cell(o.help), _code(o.guide or ""), f"`{o.toml_key}`"]) + " |")
    return rows


def _launcher_rows() -> list[str]:
    rows = ["| launcher variable | option |", "|---|---|"]
    rows += [f"| `{o.guide}` | `--{o.name}` |" for o in options() if o.guide]
    rows.append(f"| `{NPROC[0]}` | {NPROC[1]} |")
    return rows


def _preset_rows() -> list[str]:
    values = {name: preset_values(name) for name in PRESETS}
    rows = ["| option | default | " + " | ".join(f"`{p}`" for p in PRESETS) + " |",
            "|---|---|" + "---|" * len(PRESETS)]
    for o in options():
        if not any(o.name in v for v in values.values()):
            continue
        cells = [_cell(_code(format_value(v[o.name]))) if o.name in v else "·" for v in values.values()]
        rows.append(f"| `--{o.name}` | {_cell(_code(format_value(o.default)))} | " + " | ".join(cells) + " |")
    return rows


def _commands(parser: argparse.ArgumentParser, prog: str) -> list[tuple[str, argparse.ArgumentParser]]:
    """(command line, parser) of every subcommand, depth first."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((f"{prog} {name}", sub))
                found.extend(_commands(sub, f"{prog} {name}"))
    return found


def _argument_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for a in parser._actions:
        if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) or schema_option(a) is not None:
            continue
        if a.option_strings:
            name = ", ".join(f"`{s}`" for s in a.option_strings)
            value = "" if a.nargs == 0 else (a.metavar or ("{" + ",".join(a.choices) + "}" if a.choices else a.dest))
        else:
            name, value = f"`{a.metavar or a.dest}`", ""
        default = "" if a.default is None or a.default is argparse.SUPPRESS or a.nargs == 0 else format_value(a.default)
        required = " (required)" if a.required and a.option_strings else ""
        cells = [name, _cell(_code(value)), _cell(_code(default)), _cell((a.help or "") + required)]
        rows.append("| " + " | ".join(cells) + " |")
    if not rows:
        return []
    return ["| argument | value | default | description |", "|---|---|---|---|", *rows]


def _config_note(parser: argparse.ArgumentParser) -> str:
    taken = [o for o in map(schema_option, parser._actions) if o is not None]
    if not taken:
        return ""
    sections = sorted({o.path[0] for o in taken}, key=SECTIONS.index)
    if len(taken) == len(options()):
        return "It takes every option above (`--help` shows the ● ones, `--help-all` all)."
    return f"It takes the options of the TOML section{'s' if len(sections) > 1 else ''} " + \
        ", ".join(f"`[{s}]`" for s in sections) + " above (all of them in `--help`)."


def _command_sections(parser: argparse.ArgumentParser) -> list[str]:
    out: list[str] = []
    for line, sub in _commands(parser, parser.prog):
        out += ["", f"### `{line}`"]
        if sub.description:
            out += ["", " ".join(sub.description.split("\n\n")[0].split())]
        rows, note = _argument_rows(sub), _config_note(sub)
        if rows:
            out += ["", *rows]
        if note:
            out += ["", note]
        examples = (sub.epilog or "").split("\n\n")[0]
        if examples.startswith("example"):
            out += ["", "```", examples, "```"]
    return out


def render(parser: argparse.ArgumentParser | None = None) -> str:
    """The whole of docs/options.md; with `parser`, also a section per subcommand."""
    n = len(options())
    lines = [
        "# Options reference",
        "",
        f"<!-- Generated by `python {GENERATOR}` from src/wubugen/config/schema.py and the commands' arguments; "
        "do not edit. tests/test_options_doc.py fails when this file is out of date. -->",
        "",
        f"Every one of the {n} options of `wubugen train` (and `wubugen inspect`), from the schema that also makes "
        "`--help` and checks the values. Values come from, later winning: the defaults below, `--preset NAME`, "
        "`--config FILE.toml`, flags.",
        "",
        "* **Flags**: `--name VALUE`; lists `--name 64 32`; booleans `--name`, `--name true|false` or `--no-name`; "
        "`none` clears an optional value.",
        "* **TOML**: under the section of the TOML key (`[train]` then `lambda_kl = 0.001`; `[model.wubu_s]` then "
        "`num_levels = 2`), or with the flag's name at the top level (`lambda_kl = 0.001`).",
        "* **Range**: checked before anything is built, with a one-line error naming the option; for a list, of every "
        "value. Every number must also be finite (no `nan`, `inf`).",
        "* ● marks the options plain `wubugen train --help` shows (the ones a user of the training guide touches); "
        "`--help-all` shows all of them.",
        "",
        "## The training guide's launcher variables",
        "",
        "`scripts/train.sh` and `scripts/train.bat` take the guide's `.bat` variables (TRAINING_GUIDE.md §2-4); each "
        "is one of these (and `--help` names it, as `launcher LAMBDA_KL`).",
        "",
        *_launcher_rows(),
    ]
    for key, title in GROUPS.items():
        lines += ["", f"## {title[0].upper()}{title[1:]}", "", *_option_rows(key)]
    lines += ["", "## Presets side by side", "",
              "Every option a preset sets (src/wubugen/presets/NAME.toml; `·`: not set, so the default).", "",
              *_preset_rows()]
    if parser is not None:
        lines += ["", "## Subcommands", "",
                  "Each command's own arguments; `wubugen COMMAND --help` shows them with examples."]
        lines += _command_sections(parser)
    return "\n".join(lines) + "\n"
