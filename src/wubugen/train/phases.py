"""`wubugen phases PLAN.toml`: the guide's phased strategy as one command.

A plan names a preset and options shared by every phase, then the phases in order. Each phase trains into
`<root>/<name>/` and, from the second on, starts from the previous phase's best checkpoint (`--load_checkpoint`), with
its own flags winning (lambda_kl, learning rates, FiLM on/off), as the guide says. A phase whose `summary.json` exists is
done and skipped, so re-running a plan after an interruption goes on where it stopped (an interrupted phase resumes).

    preset = "launcher"
    root = "runs/guide"
    [options]                     # every phase
    video_data_path = "footage/"
    [[phase]]
    name = "phase1"
    lambda_kl = 0.0001
    epochs = 10
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from wubugen.config import ConfigError, HelpFormatter, build_config, read_toml
from wubugen.errors import UserError


def load_plan(path: str) -> dict[str, Any]:
    p = Path(path)
    plan = read_toml(p, "phase plan")
    phases = plan.get("phase")
    if not isinstance(phases, list) or not phases:
        raise UserError(f"phase plan {p} has no [[phase]] tables")
    names = [ph.get("name") for ph in phases]
    if any(not isinstance(n, str) or not n for n in names) or len(set(names)) != len(names):
        raise UserError(f"phase plan {p}: every [[phase]] needs a unique name")
    return plan


def phase_options(plan: dict[str, Any], index: int, root: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    ph = dict(plan["phase"][index])
    name = ph.pop("name")
    opts = {**plan.get("options", {}), **ph, **overrides}
    opts["checkpoint_dir"] = str(root / name)
    run_dir = root / name
    if (run_dir / "last.json").exists() and not (run_dir / "summary.json").exists():
        opts["resume"] = str(run_dir)  # this phase was interrupted: continue it exactly
        opts.pop("load_checkpoint", None)
    elif index > 0 and "load_checkpoint" not in ph:
        opts["load_checkpoint"] = str(root / plan["phase"][index - 1]["name"])
    return opts


def run_plan(path: str, overrides: dict[str, Any], dry_run: bool = False) -> int:
    from wubugen.train.commands import run_training

    plan = load_plan(path)
    root = Path(overrides.pop("root", None) or plan.get("root", "runs/phases"))
    preset = plan.get("preset")
    for i, ph in enumerate(plan["phase"]):
        run_dir = root / ph["name"]
        if (run_dir / "summary.json").exists():
            print(f"phase {ph['name']}: done ({run_dir / 'summary.json'}), skipped")
            continue
        opts = phase_options(plan, i, root, overrides)
        try:
            cfg = build_config(preset, overrides=opts)
        except ConfigError as e:
            raise UserError(f"phase {ph['name']}: {e}") from None
        shown = {k: v for k, v in opts.items() if k not in plan.get("options", {})}
        print(f"phase {ph['name']} ({i + 1}/{len(plan['phase'])}): {shown}", flush=True)
        if dry_run:
            continue
        run_training(cfg)
    return 0


def _cmd(args) -> int:
    overrides = {}
    for item in args.set or []:
        if "=" not in item:
            raise UserError(f"--set takes name=value, not {item!r}")
        k, v = item.split("=", 1)
        overrides[k] = v
    if args.root:
        overrides["root"] = args.root
    return run_plan(args.plan, overrides, dry_run=args.dry_run)


PHASES_EXAMPLES = """examples:
  wubugen phases configs/phases/guide.toml --set video_data_path=footage/ --dry-run
  wubugen phases configs/phases/guide.toml --set video_data_path=footage/ --set batch_size=8 --root runs/guide"""


def register(sub) -> None:
    p = sub.add_parser("phases", help="run a phased training plan (TOML): each phase starts from the previous best",
                       description=__doc__, formatter_class=HelpFormatter, epilog=PHASES_EXAMPLES)
    p.add_argument("plan", metavar="PLAN.toml", help="the plan, e.g. configs/phases/guide.toml (the guide's phases)")
    p.add_argument("--root", default=None, metavar="DIR",
                   help="where the phases' run directories go (default: the plan's root, else runs/phases)")
    p.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="an option for every phase, winning over the plan; NAME is any option of "
                        "`wubugen train --help-all` (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the phases and their options, train nothing")
    p.set_defaults(func=_cmd)

