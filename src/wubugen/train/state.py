"""A run's progress and how it is saved and restored: what `--resume` brings back, what a new phase
(`--load_checkpoint`) takes, and what a rollback after non-finite steps restores.

Two ways to start from a checkpoint:
  * `--resume DIR` continues a run exactly: weights, optimizers, scalers, Q-controllers, RNG states, step, epoch, data
    position, lambda_kl and the running loss windows come back, and the run ends bit-identical to an uninterrupted one
    (on the CPU), from a checkpoint of any step; which options may change on resume is resume_rules.py's;
  * `--load_checkpoint PATH` starts a new phase from those weights: this run's flags win (lambda_kl, learning rates,
    FiLM on/off), steps and epochs count for this run, and tensors that do not match are listed by name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from wubugen.config import Config
from wubugen.errors import TrainingStopped, UserError
from wubugen import checkpoint as ckpt
from wubugen.checkpoint import ema_state_by_name
from wubugen.train.ema import EMA
from wubugen.train.meter import LossMeter
from wubugen.train.optim import apply_lr_momentum_scales
from wubugen.train.players import Players
from wubugen.train.step import StepRunner


@dataclass
class RunState:
    step: int = 0  # optimizer steps of this run
    epoch: int = 0  # epochs of this run (0-based, the one in progress)
    batch_in_epoch: int = 0  # batches of the current epoch consumed (data position for exact resume)
    lambda_kl: float = 0.0
    best_metric: float | None = None
    best_step: int = -1
    rollbacks: int = 0
    lr_factor: float = 1.0  # halved by each rollback after non-finite steps
    nonfinite_total: int = 0  # non-finite steps before the runner's device counter was last reset
    last_val: dict[str, float | None] = field(default_factory=dict)
    scales: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)  # the Q-controllers' latest LR/momentum (G, D)
    val_history: list[float | None] = field(default_factory=list)  # the primary metric at each validation (stopping.py)
    end_reason: dict[str, str] | None = None  # set when the stop rule ends the run (re-checked on resume)
    health: dict[str, Any] = field(default_factory=dict)  # the health monitor's state as of the last save (health.py)


def train_state(state: RunState, players: Players, runner: StepRunner, meter: LossMeter | None = None) -> dict[str, Any]:
    """Everything but the weights that an exact resume needs (plain types and tensors: loaded with weights_only)."""
    s, p = state, players
    return {
        "step": s.step, "epoch": s.epoch, "batch_in_epoch": s.batch_in_epoch, "lambda_kl": s.lambda_kl,
        "best_metric": s.best_metric, "best_step": s.best_step, "rollbacks": s.rollbacks, "lr_factor": s.lr_factor,
        "nonfinite_total": s.nonfinite_total + int(runner.nonfinite_steps.item()),
        "consecutive_nonfinite": int(runner.consecutive_nonfinite.item()),
        "last_val": dict(s.last_val), "scales": list(s.scales), "val_history": list(s.val_history),
        "health": s.health,
        "meter": meter.state_dict() if meter is not None else None,
        "opt_g": p.opt_g.state_dict(), "opt_d": p.opt_d.state_dict(),
        "scaler_g": runner.scaler_g.state_dict(), "scaler_d": runner.scaler_d.state_dict(),
        "q_gen": p.q_gen.state_dict() if p.q_gen else None,
        "q_disc": p.q_disc.state_dict() if p.q_disc else None,
        "q_lkl": p.q_lkl.state_dict() if p.q_lkl else None,
        "rng": ckpt.capture_rng_state(),
    }


def load_weights(players: Players, c: ckpt.Checkpoint, strict: bool, log: Callable[[str], Any]) -> None:
    """Both players' weights (listing tensors that do not match unless strict) and the EMA's, when it is on."""
    for name, module in (("model", players.model), ("disc", players.disc)):
        if name not in c.weights:
            raise UserError(f"checkpoint {c.path} has no {name} weights")
        report = ckpt.load_module_weights(module, c.weights[name], strict, name=name)
        if not report.clean:
            log(report.summary())
    if players.ema is not None:
        ema = players.ema
        state = ema_state_by_name(c.weights.get("ema", {}), players.model)
        if all(n in state and state[n].shape == p.shape for n, p in zip(ema.names, ema.params)):
            ema.load_state_dict(state)
        else:  # no EMA in the checkpoint (or another model's): start it from the loaded weights
            players.ema = EMA(players.model, ema.decay, ema.warmup)


RESUME_KEYS = ("step", "epoch", "batch_in_epoch", "lambda_kl", "best_metric", "best_step", "rollbacks", "lr_factor",
               "nonfinite_total", "last_val", "opt_g", "opt_d", "rng")


def check_train_state(c: ckpt.Checkpoint) -> None:
    """A UserError naming train_state.pt when it lacks what a resume or rollback reads."""
    missing = [k for k in RESUME_KEYS if k not in c.train_state]
    if missing:
        raise UserError(f"{c.path / ckpt.TRAIN_STATE_FILE} is malformed: it has no {', '.join(missing)}")


def load_optimizer(opt: torch.optim.Optimizer, stored: dict[str, Any]) -> None:
    """A stored optimizer state under this run's options: torch's load_state_dict puts the stored param-group
    hyperparameters back, so the ones this run's config gives (base learning rate and momentum, betas, weight decay,
    clip) are set again after it; the current lr and momentum keep their Q-control scale and rollback factor (a base
    that did not change leaves them untouched, bit for bit)."""
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    opt.load_state_dict(stored)
    for group, want in zip(opt.param_groups, fresh):
        for key in ("lr", "momentum"):
            base = f"initial_{key}"
            if key in group and base in group and base in want and group[base] != want[base]:
                group[key] = group[key] * (want[base] / group[base])
        group.update({k: v for k, v in want.items() if k not in ("lr", "momentum")})


def restore_progress(state: RunState, players: Players, c: ckpt.Checkpoint) -> None:
    """Optimizer states, data position and lambda_kl: what a resume and a rollback both bring back. A lambda_kl given
    anew (this run's config differs from the checkpoint's) wins over the stored one."""
    check_train_state(c)
    ts = c.train_state
    load_optimizer(players.opt_g, ckpt.without_dropped_parameters(ts["opt_g"], c.weights["model"], players.model))
    load_optimizer(players.opt_d, ts["opt_d"])
    state.step, state.epoch, state.batch_in_epoch = ts["step"], ts["epoch"], ts["batch_in_epoch"]
    state.lambda_kl = ts["lambda_kl"]
    stored_train = (c.meta.get("config") or {}).get("train") or {}
    if "lambda_kl" in stored_train and stored_train["lambda_kl"] != players.cfg.train.lambda_kl:
        state.lambda_kl = players.cfg.train.lambda_kl


def model_signature(cfg: Config) -> dict[str, Any]:
    """The options that decide the model's tensors (and data shape): a resume must match them exactly."""
    d = cfg.to_dict()
    keep_data = ("image_h", "image_w", "num_channels", "num_input_frames", "num_predict_frames")
    return {"model": d["model"], "data": {k: d["data"][k] for k in keep_data}}


def _flat_differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _flat_differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k} ({va!r} -> {vb!r})")
    return out


def resume(source: str | ckpt.Checkpoint, cfg: Config, state: RunState, players: Players, runner: StepRunner,
           log: Callable[[str], Any], meter: LossMeter | None = None) -> None:
    """Continue a run exactly where a checkpoint left it: `source` is that checkpoint (resume_rules.plan_resume picks
    and loads it) or a path (its run's last checkpoint). `cfg` holds the options to go on with (resume_rules)."""
    c = source if isinstance(source, ckpt.Checkpoint) else ckpt.load_checkpoint(
        ckpt.resolve_checkpoint(source, prefer="last"), map_location=players.device)
    stored = ckpt.stored_config(c)
    differ = _flat_differences(model_signature(stored), model_signature(cfg))
    if differ:
        raise UserError(f"--resume {c.path}: the model options differ from the checkpoint's: {', '.join(differ)}; "
                        "use --load_checkpoint to start a new phase from its weights")
    load_weights(players, c, strict=True, log=log)
    ts = c.train_state
    restore_progress(state, players, c)
    for scaler, key in ((runner.scaler_g, "scaler_g"), (runner.scaler_d, "scaler_d")):
        if ts.get(key):  # empty: saved without fp16 (a run that changes --precision starts its scaler afresh)
            scaler.load_state_dict(ts[key])
    for ctrl, key in ((players.q_gen, "q_gen"), (players.q_disc, "q_disc"), (players.q_lkl, "q_lkl")):
        if ctrl is not None and ts.get(key) is not None:
            ctrl.load_state_dict(ts[key])
    state.best_metric, state.best_step = ts["best_metric"], ts["best_step"]
    state.rollbacks, state.lr_factor, state.nonfinite_total = ts["rollbacks"], ts["lr_factor"], ts["nonfinite_total"]
    state.last_val = dict(ts["last_val"])
    state.val_history = list(ts.get("val_history", []))  # (checkpoints from before the stop rules have none)
    state.health = dict(ts.get("health") or {})
    if players.q_gen is not None and ts.get("scales") is not None:
        state.scales = tuple(float(x) for x in ts["scales"])
    elif stored.train.q_controller_enabled and players.q_gen is None:  # Q-control turned off: back to the bases
        apply_lr_momentum_scales(players.opt_g, state.lr_factor)
        apply_lr_momentum_scales(players.opt_d, state.lr_factor)
    if stored.train.val_primary_metric != cfg.train.val_primary_metric:  # another metric: the old best means nothing
        state.best_metric, state.best_step = None, -1
    if meter is not None and ts.get("meter") is not None:
        meter.load_state_dict(ts["meter"])
    runner.consecutive_nonfinite.fill_(int(ts.get("consecutive_nonfinite", 0)))
    ckpt.restore_rng_state(ts["rng"])
    log(f"resumed {c.path} at step {state.step} (epoch {state.epoch + 1}, batch {state.batch_in_epoch})")


def load_phase(path: str, cfg: Config, state: RunState, players: Players, log: Callable[[str], Any]) -> None:
    """Start a new phase from the weights at `path` (its best checkpoint in a run dir); everything else is this run's."""
    c = ckpt.load_checkpoint(ckpt.resolve_checkpoint(path, prefer="best"), map_location=players.device)
    stored = ckpt.stored_config(c).model.backbone
    if stored != cfg.model.backbone:
        # a non-strict load would keep only the WuBu and D weights and start the conv backbone from scratch
        raise UserError(f"{c.path} was trained with --backbone {stored}, this run builds --backbone "
                        f"{cfg.model.backbone} (the launcher and quickstart presets build plain since 2026-12-02): "
                        f"add --backbone {stored} to go on from it")
    load_weights(players, c, strict=cfg.train.load_strict, log=log)
    log(f"new phase from {c.path} (step {c.step}): this run's lambda_kl {state.lambda_kl:g}, "
        f"LR G/D {cfg.train.learning_rate_gen:g}/{cfg.train.learning_rate_disc:g}")


def check_rollback(run_dir: Path, s: RunState, consecutive: int) -> None:
    """TrainingStopped when a rollback after non-finite steps cannot help: a second time, or no checkpoint yet."""
    if s.rollbacks >= 1:
        raise TrainingStopped(
            f"{consecutive} consecutive non-finite steps at step {s.step}, again after a rollback with halved learning "
            f"rates: stopping. Lower --learning_rate_gen/--learning_rate_disc or --lambda_kl, or run with "
            f"--detect_anomaly to find the operation")
    if not (run_dir / ckpt.LAST_POINTER).exists():
        raise TrainingStopped(f"{consecutive} consecutive non-finite steps at step {s.step} and no checkpoint to "
                              f"roll back to: lower the learning rates (--learning_rate_gen/--learning_rate_disc)")


def rollback(run_dir: Path, state: RunState, players: Players, runner: StepRunner, log: Callable[[str], Any]) -> None:
    """Back to the run's last checkpoint after non-finite steps: weights and progress restored, learning rates halved
    (the caller re-applies them), the runner's non-finite counters folded into the state and reset."""
    c = ckpt.load_checkpoint(ckpt.resolve_checkpoint(run_dir, prefer="last"), map_location=players.device)
    load_weights(players, c, strict=True, log=log)
    restore_progress(state, players, c)
    state.rollbacks += 1
    state.lr_factor *= 0.5
    state.nonfinite_total += int(runner.nonfinite_steps.item())
    runner.nonfinite_steps.zero_()
    runner.consecutive_nonfinite.zero_()
