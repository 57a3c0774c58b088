"""The `wubugen` command. Each subcommand lives beside the code it drives and registers itself here."""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

from wubugen import __version__
from wubugen.errors import Interrupted, SignalAbort, UserError, os_error_message

# (module, attribute): each module exposes `register(subparsers)` adding its subcommand(s) with `set_defaults(func=...)`.
COMMANDS = (
    "wubugen.inspect_cmd",
    "wubugen.data.commands",
    "wubugen.train.commands",
    "wubugen.train.phases",
    "wubugen.eval.commands",
    "wubugen.track.commands",
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


def _on_sigterm(signum, frame) -> None:
    raise SignalAbort(signum)  # outside a training loop, which stops gracefully on its own (train/signals.py)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # SIGTERM (Slurm, Kubernetes) ends a command as Ctrl-C does: one line, `finally` blocks remove partial outputs
    own_sigterm = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if own_sigterm else None
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"wubugen: error: {e}", file=sys.stderr)
        return e.exit_code
    except Interrupted as e:  # a training run stopped on a signal, after writing its checkpoint
        if str(e):
            print(f"wubugen: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a full disk, a read-only folder, a path that is a file: the path and what to do
        print(f"wubugen: error: {os_error_message(e)}", file=sys.stderr)
        return 2
    except SignalAbort as e:
        print(f"wubugen: {signal.Signals(e.signum).name}: stopped", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("wubugen: interrupted", file=sys.stderr)
        return 130
    finally:
        if own_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
