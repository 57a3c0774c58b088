"""The `wubugen` command. Each subcommand lives beside the code it drives and registers itself here."""
from __future__ import annotations

import argparse
import importlib
import sys

from wubugen import __version__
from wubugen.errors import UserError

# (module, attribute): each module exposes `register(subparsers)` adding its subcommand(s) with `set_defaults(func=...)`.
COMMANDS = (
    "wubugen.inspect_cmd",
    "wubugen.data.commands",
    "wubugen.train.commands",
    "wubugen.train.phases",
    "wubugen.eval.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wubugen", description="WuBu-GAAD hybrid VAE-GAN for short video clips")
    parser.add_argument("--version", action="version", version=f"wubugen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod_name in COMMANDS:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name == mod_name:  # that part of the package is not built yet
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"wubugen: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("wubugen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
