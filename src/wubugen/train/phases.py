"""`wubugen phases PLAN.toml`: the guide's phased strategy as one command, and `wubugen phases status ROOT`.

A plan names a preset and options shared by every phase, then the phases in order. Each phase trains into
`<root>/<name>/` and, from the second on, starts from the best checkpoint of the last phase that trained
(`--load_checkpoint`), with its own flags winning (lambda_kl, learning rates, FiLM on/off), as the guide says. A phase
whose `summary.json` exists is done and skipped, so re-running a plan after an interruption goes on where it stopped
(an interrupted phase resumes exactly).

When a phase hands over follows the guide's "when to proceed": its length (epochs, max_steps), and, as options of the
phase, a plateau of the validation metric (`stop_plateau_patience`, `stop_plateau_min_delta`) or a threshold
(`stop_metric_threshold`), checked after every validation (train/stopping.py). A phase may require conditions before it
starts, read from the previous phase's best checkpoint; an `optional` phase whose conditions fail is skipped and the
reason recorded, a required one stops the plan with the reason:

    requires = ["avg_val_psnr > 20", "gan_stable"]    # the guide's Phase 3 entry bar
    requires = ["avg_val_psnr >= entry - 0.5"]        # "stable": within 0.5 dB of the value the phase started from

`METRIC OP VALUE` compares the previous phase's best metrics (any avg_val_* key) with a number, or with `entry` (+/- a
number): the same metric of the checkpoint that phase started from. `gan_stable`: none of the health monitor's
D-guessing, D-too-strong and D-collapsed rules held at the end of the previous phase.

An option given as "previous" takes the value the previous phase that trained ended with (lambda_kl: the one it was
using at its end; any other option: its config), as the guide's Phase 3 keeps "the lambda_kl value from your best
Phase 2 checkpoint".

`<root>/phases.json` records the plan's decisions as it goes (each phase's state, what it loaded, why it was skipped);
`wubugen phases status ROOT` shows it with each phase's steps, best metric, checkpoint and why it ended, also while a
phase runs.

    preset = "launcher"
    root = "runs/guide"
    [options]                     # every phase
    video_data_path = "footage/"
    [[phase]]
    name = "phase1"
    lambda_kl = 0.0001
    epochs = 20
    stop_plateau_patience = 3
"""
from __future__ import annotations

import json
import operator
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wubugen.config import ConfigError, HelpFormatter, build_config, read_toml
from wubugen.config.schema import VAL_METRICS
from wubugen.errors import UserError
from wubugen.media import atomic_write_text
from wubugen.track.runinfo import PLAN_STATUS_FILE, SUMMARY_FILE, plan_rows, read_json, run_info

PLAN_KEYS = ("name", "optional", "requires")  # a [[phase]] table's own keys; the rest are options
GAN_RULES = ("d_guessing", "d_too_strong", "d_collapsed")
OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
_CONDITION = re.compile(r"^\s*(\w+)\s*(>=|<=|>|<)\s*(?:(entry)\s*(?:([+-])\s*([0-9.]+(?:e-?[0-9]+)?))?|"
                        r"(-?[0-9.]+(?:e-?[0-9]+)?))\s*$")


# --------------------------------------------------------------------------------------------------------------------
# Conditions
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Condition:
    text: str
    metric: str | None = None  # None: gan_stable
    op: str = ">"
    value: float = 0.0  # the number, or the offset from the entry value
    relative: bool = False  # compared with `entry` + value

    def check(self, prev: str, info: dict[str, Any], entry: dict[str, Any] | None) -> tuple[bool, str]:
        """(met?, why) against the previous phase `prev`'s run info and the metrics of the checkpoint it started
        from (`entry`, None for the plan's first phase)."""
        if self.metric is None:
            health = info.get("health") or {}
            if not health.get("window_full", False):
                return True, f"{prev}'s health windows never filled: GAN stability not judged"
            held = [r for r in health.get("active", []) if r in GAN_RULES]
            return (not held, f"{prev} ended with {', '.join(held)} holding" if held else f"{prev}'s GAN was stable")
        have = (info.get("best_metrics") or {}).get(self.metric)
        if have is None:
            return False, f"{prev}'s best checkpoint has no {self.metric}"
        if self.relative:
            base = (entry or {}).get(self.metric)
            if base is None:
                return True, f"{prev} started from no earlier checkpoint: {self.text!r} holds by default"
            bar, what = base + self.value, f"entry {base:.4g}{self.value:+g}"
        else:
            bar, what = self.value, f"{self.value:g}"
        ok = OPS[self.op](have, bar)
        return ok, f"{prev}'s best {self.metric} {have:.4g} {'' if ok else 'not '}{self.op} {what}"


def parse_condition(text: Any, where: str) -> Condition:
    if not isinstance(text, str):
        raise UserError(f"{where}: a condition is a string, not {text!r}")
    if text.strip() == "gan_stable":
        return Condition(text.strip())
    m = _CONDITION.match(text)
    if not m or m.group(1) not in VAL_METRICS:
        raise UserError(f"{where}: cannot read condition {text!r}: write 'METRIC OP NUMBER', 'METRIC OP entry - "
                        f"NUMBER' or 'gan_stable', with METRIC one of {', '.join(VAL_METRICS)}")
    metric, op, entry, sign, offset, number = m.groups()
    if entry:
        value = float(offset or 0.0) * (-1 if sign == "-" else 1)
        return Condition(text.strip(), metric, op, value, True)
    return Condition(text.strip(), metric, op, float(number))


# --------------------------------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------------------------------
def load_plan(path: str) -> dict[str, Any]:
    p = Path(path)
    plan = read_toml(p, "phase plan")
    phases = plan.get("phase")
    if not isinstance(phases, list) or not phases:
        raise UserError(f"phase plan {p} has no [[phase]] tables")
    names = [ph.get("name") for ph in phases]
    if any(not isinstance(n, str) or not n for n in names) or len(set(names)) != len(names):
        raise UserError(f"phase plan {p}: every [[phase]] needs a unique name")
    for ph in phases:
        where = f"phase plan {p}, phase {ph['name']}"
        if not isinstance(ph.get("optional", False), bool):
            raise UserError(f"{where}: optional is true or false")
        requires = ph.get("requires", [])
        if isinstance(requires, str):
            requires = [requires]
        if not isinstance(requires, list):
            raise UserError(f"{where}: requires is a list of conditions")
        ph["requires"] = [parse_condition(c, where) for c in requires]
    return plan


def phase_options(plan: dict[str, Any], index: int, root: Path, overrides: dict[str, Any],
                  load_from: str | None = None, phase_steps: int = 0) -> dict[str, Any]:
    """The options phase `index` trains with: the plan's shared ones, the phase's, then `overrides`; its run dir
    under `root`; --resume when it was interrupted, else --load_checkpoint from `load_from` (the last phase that
    trained; by default the one before it)."""
    ph = {k: v for k, v in plan["phase"][index].items() if k not in PLAN_KEYS}
    name = plan["phase"][index]["name"]
    opts = {**plan.get("options", {}), **ph}
    if phase_steps > 0:  # a try-out of the plan: short phases, validated often enough for the stop rules to act,
        # with media during training and health windows short enough to fill (the plan's own values win)
        opts.update(max_steps=phase_steps, val_interval=max(1, phase_steps // 8))
        for k, v in (("wandb_log_train_recon_interval", max(1, phase_steps // 4)),
                     ("wandb_log_fixed_noise_samples_interval", max(1, phase_steps // 4)), ("health_window", 4)):
            opts.setdefault(k, v)
    opts.update(overrides)
    if load_from is None and index > 0:
        load_from = plan["phase"][index - 1]["name"]
    for k, v in list(opts.items()):
        if v == "previous":
            opts[k] = previous_value(root, load_from, k, name)
    run_dir = root / name
    opts["checkpoint_dir"] = str(run_dir)
    if (run_dir / "last.json").exists() and not (run_dir / SUMMARY_FILE).exists():
        opts["resume"] = str(run_dir)  # this phase was interrupted: continue it exactly
        opts.pop("load_checkpoint", None)
    elif load_from is not None and "load_checkpoint" not in ph:
        opts["load_checkpoint"] = str(root / load_from)
    return opts


def previous_value(root: Path, prev: str | None, key: str, phase: str) -> Any:
    """An option's value as the phase `prev` ended: lambda_kl from its summary (the controller may have moved it), any
    other from its config.toml."""
    from wubugen.config import load_toml

    if prev is None:
        raise UserError(f"phase {phase}: {key} = \"previous\" needs a phase before it")
    summary = read_json(root / prev / SUMMARY_FILE)
    if key == "lambda_kl" and isinstance(summary, dict) and "lambda_kl" in summary:
        return summary["lambda_kl"]
    config = root / prev / "config.toml"
    if not config.is_file():
        return "previous"  # not trained yet (a dry run): known once it has
    return load_toml(config).get(key, "previous")


class PlanStatus:
    """`<root>/phases.json`: the plan's decisions, rewritten (atomically) at each of them."""

    def __init__(self, root: Path, plan_path: str, preset: str | None, names: list[str]):
        self.path = root / PLAN_STATUS_FILE
        old = read_json(self.path) or {}
        known = {r["name"]: r for r in old.get("phases", []) if isinstance(r, dict) and "name" in r}
        self.doc = {"plan": str(plan_path), "preset": preset,
                    "phases": [known.get(n, {"name": n, "state": "pending"}) for n in names]}
        self.root = root

    def record(self, name: str, **fields: Any) -> None:
        rec = next(r for r in self.doc["phases"] if r["name"] == name)
        rec.update(fields, updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(self.doc, indent=2) + "\n")

    def loaded_from(self, name: str) -> str | None:
        return next((r.get("loaded_from") for r in self.doc["phases"] if r["name"] == name), None)


def _entry_metrics(root: Path, status: PlanStatus, phase: str) -> dict[str, Any] | None:
    source = status.loaded_from(phase)
    return run_info(root / source)["best_metrics"] if source else None


def run_plan(path: str, overrides: dict[str, Any], dry_run: bool = False, preset: str | None = None,
             phase_steps: int = 0, per_phase: dict[str, dict[str, Any]] | None = None) -> int:
    from wubugen.errors import Interrupted
    from wubugen.train.commands import run_training

    plan = load_plan(path)
    per_phase = per_phase or {}
    names = [ph["name"] for ph in plan["phase"]]
    unknown = sorted(set(per_phase) - set(names))
    if unknown:
        raise UserError(f"--set names phase(s) {', '.join(unknown)}, not in the plan ({', '.join(names)})")
    root = Path(overrides.pop("root", None) or plan.get("root", "runs/phases"))
    preset = preset or plan.get("preset")
    status = PlanStatus(root, path, preset, names) if not dry_run else None
    prev: str | None = None  # the last phase that trained: the next one starts from its best checkpoint
    for i, ph in enumerate(plan["phase"]):
        name, run_dir = ph["name"], root / ph["name"]
        if (run_dir / SUMMARY_FILE).exists():
            print(f"phase {name}: done ({run_dir / SUMMARY_FILE}), skipped")
            if status is not None:
                status.record(name, state="done")
            prev = name
            continue
        started = (run_dir / "last.json").exists()  # an interrupted phase: its conditions held when it began
        if ph["requires"] and not started and not dry_run:
            checks = ([c.check(prev, run_info(root / prev), _entry_metrics(root, status, prev)) for c in ph["requires"]]
                      if prev is not None else [(True, "first phase")])
            failed = [why for ok, why in checks if not ok]
            if failed:
                why = "; ".join(failed)
                if ph.get("optional", False):
                    print(f"phase {name} ({i + 1}/{len(names)}): skipped (optional): {why}", flush=True)
                    status.record(name, state="skipped", reason=why)
                    continue
                status.record(name, state="stopped", reason=why)
                raise UserError(f"phase {name}: its conditions are not met: {why}; the plan stops here (see the "
                                f"guide's troubleshooting, or make the phase optional)")
            print(f"phase {name}: conditions met: {'; '.join(why for _, why in checks)}")
        opts = phase_options(plan, i, root, {**overrides, **per_phase.get(name, {})}, prev, phase_steps)
        unresolved = [k for k, v in opts.items() if v == "previous"]
        if unresolved and not dry_run:
            raise UserError(f"phase {name}: no value of {', '.join(unresolved)} from the phase before it")
        try:
            cfg = build_config(preset, overrides={k: v for k, v in opts.items() if k not in unresolved})
        except ConfigError as e:
            raise UserError(f"phase {name}: {e}") from None
        shown = {k: v for k, v in opts.items() if k not in plan.get("options", {})}
        print(f"phase {name} ({i + 1}/{len(names)}): {shown}", flush=True)
        if dry_run:
            if ph["requires"]:
                print(f"  requires {', '.join(c.text for c in ph['requires'])} (checked when it starts)")
            prev = name
            continue
        status.record(name, state="running", loaded_from=prev if "resume" not in opts else status.loaded_from(name),
                      started=time.strftime("%Y-%m-%dT%H:%M:%S"), reason=None)
        try:
            summary = run_training(cfg)
        except Interrupted:
            raise  # recorded as running; `phases status` reads it as interrupted once the process is gone
        except BaseException as e:
            status.record(name, state="failed", reason=str(e).splitlines()[0][:300] if str(e) else type(e).__name__)
            raise
        status.record(name, state="done", end_reason=summary.get("end_reason"))
        prev = name
    if not dry_run:
        _write_report(root)
    return 0


def _write_report(root: Path) -> None:
    """The plan's HTML report once it has run through (phases also rewrite it as they train: --report_every_minutes)."""
    from wubugen.track.html_report import write_report

    try:
        print(f"report: {write_report(root)}   (wubugen phases status {root}: the table again)")
    except Exception as e:  # noqa: BLE001 - the phases trained; a report can be written later with `wubugen report`
        print(f"note: the plan's HTML report was not written ({type(e).__name__}: {e}); try `wubugen report {root}`")


# --------------------------------------------------------------------------------------------------------------------
# `wubugen phases status`
# --------------------------------------------------------------------------------------------------------------------
def _fmt(v: Any, spec: str = ".4g") -> str:
    return "-" if v is None else format(v, spec) if isinstance(v, float) else str(v)


def status_lines(root: Path) -> list[str]:
    rows = plan_rows(root)
    doc = read_json(root / PLAN_STATUS_FILE) or {}
    out = [f"plan {doc.get('plan', '?')} (preset {doc.get('preset') or 'none'}) in {root}"]
    table = [("phase", "state", "steps", "best", "checkpoint", "why it ended / note")]
    for r in rows:
        end = r.get("end_reason") or {}
        note = end.get("detail") and f"{end.get('kind')}: {end.get('detail')}" or r.get("reason") or ""
        if r["state"] == "running":
            note = note or "running now"
        elif r["state"] == "interrupted":
            note = f"interrupted: re-run the plan to resume it (wubugen phases {doc.get('plan', 'PLAN.toml')})"
        fired = (r.get("health") or {}).get("fired") or {}
        if fired:
            note += ("; " if note else "") + "health: " + ", ".join(f"{k} x{v}" for k, v in sorted(fired.items()))
        best = "-" if r.get("best") is None else f"{r['metric'].replace('avg_val_', '')} {_fmt(r['best'])}" + (
            f" @{r['best_step']}" if r.get("best_step") is not None else "")
        ckpt = r.get("checkpoint") if r["state"] not in ("skipped", "pending", "stopped") else None
        table.append((r["name"], r["state"], _fmt(r.get("steps")), best, _fmt(ckpt), note))
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    out += ["  ".join(c.ljust(w) for c, w in zip(row[:5], widths)) + "  " + row[5] for row in table]
    return out


def _status(target: str) -> int:
    p = Path(target)
    if p.is_file():  # a plan: its root
        p = Path(load_plan(str(p)).get("root", "runs/phases"))
    if not (p / PLAN_STATUS_FILE).is_file():
        if (p / "metrics.jsonl").exists() or (p / "last.json").exists():  # one run
            info = run_info(p)
            print(json.dumps(info, indent=2))
            return 0
        raise UserError(f"{p} holds no {PLAN_STATUS_FILE} (written by `wubugen phases PLAN.toml`) and is no run")
    print("\n".join(status_lines(p)))
    return 0


def _cmd(args) -> int:
    if args.plan == "status":
        if not args.run:
            raise UserError("wubugen phases status ROOT: name the plan's root directory (or its PLAN.toml)")
        return _status(args.run)
    overrides: dict[str, Any] = {}
    per_phase: dict[str, dict[str, Any]] = {}
    for item in args.set or []:
        if "=" not in item:
            raise UserError(f"--set takes name=value or phase.name=value, not {item!r}")
        k, v = item.split("=", 1)
        if "." in k:
            phase, k = k.split(".", 1)
            per_phase.setdefault(phase, {})[k] = v
        else:
            overrides[k] = v
    if args.root:
        overrides["root"] = args.root
    return run_plan(args.plan, overrides, dry_run=args.dry_run, preset=args.preset, phase_steps=args.phase_steps,
                    per_phase=per_phase)


PHASES_EXAMPLES = """examples:
  wubugen phases configs/phases/guide.toml --set video_data_path=footage/ --dry-run
  wubugen phases configs/phases/guide.toml --set video_data_path=footage/ --set batch_size=8 --root runs/guide
  wubugen phases configs/phases/guide.toml --preset tiny --phase-steps 80 --root runs/try   # minutes on a CPU
  wubugen phases status runs/guide          # each phase: state, steps, best metric, checkpoint, why it ended
  wubugen report runs/guide                 # one HTML page: curves per phase, health events, samples"""


def register(sub) -> None:
    p = sub.add_parser("phases", help="run a phased training plan (TOML): each phase starts from the previous best",
                       description=__doc__, formatter_class=HelpFormatter, epilog=PHASES_EXAMPLES)
    p.add_argument("plan", metavar="PLAN.toml",
                   help="the plan, e.g. configs/phases/guide.toml (the guide's phases); or `status` ROOT")
    p.add_argument("run", nargs="?", metavar="ROOT", help="with `status`: the plan's root directory (or its PLAN.toml)")
    p.add_argument("--root", default=None, metavar="DIR",
                   help="where the phases' run directories go (default: the plan's root, else runs/phases)")
    p.add_argument("--preset", default=None, metavar="NAME",
                   help="the preset every phase starts from, instead of the plan's (e.g. tiny to try a plan out)")
    p.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="an option for every phase, winning over the plan; PHASE.NAME=VALUE for one phase; NAME is any "
                        "option of `wubugen train --help-all` (repeatable)")
    p.add_argument("--phase-steps", type=int, default=0, metavar="N",
                   help="shorten every phase to at most N optimizer steps, validating every N/8, logging samples and "
                        "videos every N/4, with health windows of 4 logs (a try-out of the plan: the stop rules and "
                        "conditions still apply)")
    p.add_argument("--dry-run", action="store_true", help="print the phases and their options, train nothing")
    p.set_defaults(func=_cmd)
