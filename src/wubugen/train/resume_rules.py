"""What `--resume` does with options (docs/reliability.md):

  * `--resume DIR` alone continues with the run's own stored options (the config in the checkpoint it resumes), whatever
    the defaults or presets say today;
  * an option given with it (a flag, or a value of `--preset` / `--config`) that differs from the stored one either
    applies, and is logged as `name old -> new`, or is refused, naming the option and why (the model's architecture,
    the clip shape, the batch layout the data position counts in, the random streams, the optimizer's state);
  * the resumed run writes to the run it resumes, and its config.toml and later checkpoints record the options it
    really runs with;
  * a last checkpoint that cannot be read names the previous good one (`--resume_fallback`: continues from it).

`plan_resume` does all of it before anything is built; the trainer then loads the planned checkpoint.
"""
from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wubugen import checkpoint as ckpt
from wubugen.config import Config, build_config, flag_table, load_toml, preset_values
from wubugen.config.loading import flatten_options
from wubugen.errors import UserError

SHAPE_OPTIONS = ("image_h", "image_w", "num_channels", "num_input_frames", "num_predict_frames")
REFUSED_TRAIN = {
    "batch_size": "the run's data position and step count are in batches of the stored size",
    "grad_accum_steps": "the run's data position and step count are in batches of the stored size",
    "seed": "the run's data order and noise streams come from the stored seed",
    "optimizer": "the checkpoint holds the other optimizer's state",
}
# not options of the run itself: how this invocation starts
IGNORED = frozenset({"resume", "resume_fallback", "load_checkpoint", "load_strict", "checkpoint_dir", "local_rank"})


@dataclass
class ResumePlan:
    cfg: Config  # what the resumed run trains with (checkpoint_dir: the run it resumes)
    checkpoint: ckpt.Checkpoint  # the checkpoint it continues from, loaded on the CPU
    stored: Config  # that checkpoint's own options
    run_dir: Path
    lines: list[str] = field(default_factory=list)  # notes and the applied changes, for rank 0 to print


def given_options(ns: argparse.Namespace) -> dict[str, tuple[Any, str]]:
    """The options this command line sets, as {name: (raw value, where it came from)}: the `--preset`'s values, then
    the `--config` file's, then flags (later wins), as `config_from_args` layers them over the defaults."""
    given: dict[str, tuple[Any, str]] = {}
    preset, config_file = getattr(ns, "preset", None), getattr(ns, "config", None)
    if preset:
        given.update({k: (v, f"--preset {preset}") for k, v in preset_values(preset).items() if k != "checkpoint_dir"})
    if config_file:
        given.update({k: (v, f"--config {config_file}") for k, v in load_toml(config_file).items()
                      if k != "checkpoint_dir"})
    given.update({k[len("opt__"):]: (v, "flag") for k, v in vars(ns).items() if k.startswith("opt__") and v is not None})
    return given


def _value(cfg: Config, path: tuple[str, ...]) -> Any:
    obj: Any = cfg
    for p in path:
        obj = getattr(obj, p)
    return obj


def _show(v: Any) -> str:
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    return str(v)


def why_refused(name: str, section: str) -> str | None:
    """Why an option cannot change on resume, or None when it applies."""
    if section == "model":
        return "it changes the model's architecture, whose tensors the checkpoint holds"
    if name in SHAPE_OPTIONS:
        return "it changes the clip shape the checkpoint's model was built for"
    return REFUSED_TRAIN.get(name)


def _load_for_resume(path: Path) -> tuple[ckpt.Checkpoint, Config]:
    from wubugen.train.state import check_train_state

    c = ckpt.load_checkpoint(path, map_location="cpu")
    check_train_state(c)
    return c, ckpt.stored_config(c)


def pick_checkpoint(path: str, fallback: bool) -> tuple[ckpt.Checkpoint, Config, list[str]]:
    """The checkpoint `--resume path` continues from: the run's last one, or, when that cannot be read, the newest
    earlier one that can (only with `fallback`; otherwise the error names it)."""
    try:
        c, stored = _load_for_resume(ckpt.resolve_checkpoint(path, prefer="last"))
        return c, stored, []
    except UserError as e:
        problem = str(e)
    run_dir = ckpt.run_dir_of(path)
    found = ckpt.list_checkpoints(run_dir)
    if not found:
        raise UserError(f"--resume {path}: {problem}")
    for d in reversed(found):
        try:
            c, stored = _load_for_resume(d)
        except UserError:
            continue
        if not fallback:
            raise UserError(f"--resume {path}: {problem}; the previous good checkpoint is {c.path} (step {c.step}): "
                            f"add --resume_fallback to continue from it, or give it as --resume {c.path}")
        return c, stored, [f"note: {problem}: resuming from the previous good checkpoint {c.path} (step {c.step}) "
                           "instead (--resume_fallback)"]
    raise UserError(f"--resume {path}: {problem}; no earlier checkpoint in {run_dir} can be read either")


def _desired(stored: Config, given: dict[str, tuple[Any, str]]) -> Config:
    """The stored options with the given ones over them."""
    flat = flatten_options(stored.to_dict(), "stored config")
    flat["load_checkpoint"] = None  # a phase's start, done: a resumed run continues, it does not load weights again
    flat.update({k: v for k, (v, _) in given.items()})
    return build_config(overrides=flat)


def plan_resume(cfg: Config, given: dict[str, tuple[Any, str]] | None = None) -> ResumePlan:
    """Resolve `cfg.train.resume`: the checkpoint, the options to train with, what changes and what is refused.

    given: the options of the command line (`given_options`): they go over the stored ones. None (a caller that built
    a whole Config, such as `wubugen phases`): `cfg` is taken as the options wanted, compared with the stored ones.
    """
    t = cfg.train
    c, stored, lines = pick_checkpoint(t.resume, t.resume_fallback)
    run_dir = ckpt.run_dir_of(c.path)
    if given is None:
        want = copy.deepcopy(cfg)
        sources: dict[str, str] = {}
        asked_dir = t.checkpoint_dir
    else:
        want = _desired(stored, given)
        sources = {k: s for k, (_, s) in given.items()}
        asked_dir = given["checkpoint_dir"][0] if "checkpoint_dir" in given else None
    refused, changed = [], []
    if asked_dir is not None and Path(asked_dir).resolve() != run_dir.resolve():
        refused.append(f"--checkpoint_dir {asked_dir}: a resumed run writes to the run it resumes ({run_dir}); drop "
                       "--checkpoint_dir, or branch off into a new run with --load_checkpoint")
    for name, (path, _, _) in flag_table().items():
        old, new = _value(stored, path), _value(want, path)
        if name in IGNORED or old == new:
            continue
        src = sources.get(name, "flag")
        shown = f"--{name} {_show(old)} -> {_show(new)}" + ("" if src == "flag" else f" (from {src})")
        reason = why_refused(name, path[0])
        (refused if reason else changed).append(f"{shown}: {reason}" if reason else shown[2:])
    if refused:
        hint = (f"; to train with new values of these, start a new run from its weights: --load_checkpoint {run_dir} "
                "--checkpoint_dir NEW_DIR") if any("--checkpoint_dir" not in r for r in refused) else ""
        raise UserError(f"--resume {t.resume}: refused: " + "; ".join(refused) + hint)
    want.train.resume, want.train.resume_fallback = t.resume, t.resume_fallback
    want.train.load_checkpoint = None
    want.train.checkpoint_dir = str(run_dir)
    if changed:
        lines.append(f"resume with changed options: {', '.join(changed)}")
    newest = ckpt.list_checkpoints(run_dir)
    if newest and newest[-1] != c.path:
        lines.append(f"note: resuming from step {c.step}, older than the run's newest checkpoint {newest[-1].name}: "
                     "later checkpoints are replaced as the run reaches their steps")
    return ResumePlan(want, c, stored, run_dir, lines)
