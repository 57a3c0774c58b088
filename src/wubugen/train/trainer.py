"""The training loop: data -> steps -> logging, Q-control, validation, samples, checkpoints. Rank 0 writes.

Two ways to start from a checkpoint (SPEC D17/D18 fixed):
  * `--resume DIR` continues a run exactly: weights, optimizers, scalers, Q-controllers, RNG states, step, epoch, data
    position and lambda_kl come back, and the run ends bit-identical to an uninterrupted one (on the CPU);
  * `--load_checkpoint PATH` starts a new phase from those weights: this run's flags win (lambda_kl, learning rates,
    FiLM on/off), steps and epochs count for this run, and tensors that do not match are listed by name.
"""
from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from wubugen.config import Config, config_from_dict
from wubugen.data import build_datasets, make_loader, to_uint8
from wubugen.data.loader import split_batch
from wubugen.errors import UserError
from wubugen.eval.loop import metric_pass
from wubugen.eval.metrics import is_better, load_lpips, lpips_unavailable_message
from wubugen.models.discriminator import build_discriminator
from wubugen.models.vaegan import build_model
from wubugen.track import build_tracker
from wubugen.track.media import clip_grid, save_clips
from wubugen.track.report import plot_losses
from wubugen.train import checkpoint as ckpt
from wubugen.train.distributed import DistInfo, all_reduce_sum, barrier
from wubugen.train.optim import apply_lr_momentum_scales, build_optimizer
from wubugen.train.qcontrol import LambdaKLController, LRMomentumController
from wubugen.train.step import (EMA, LOSS_KEYS, StepRunner, compile_player, ema_state_by_name, resolve_precision,
                                speed_layout)

HIGHER_IS_BETTER = {"avg_val_psnr": True, "avg_val_ssim": True, "avg_val_recon_mse": False, "avg_val_lpips": False}


class TrainingStopped(UserError):
    """The run cannot go on (e.g. non-finite steps again after a rollback)."""

    exit_code = 3


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
    nonfinite_total: int = 0
    last_val: dict[str, float | None] = field(default_factory=dict)


def set_seed(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, cfg: Config, dist: DistInfo, device: torch.device):
        self.cfg, self.dist, self.device = cfg, dist, device
        t = cfg.train
        self.run_dir = Path(t.checkpoint_dir)
        self.is_main = dist.is_main
        self.log = print if self.is_main else (lambda *a, **k: None)
        if t.detect_anomaly:
            torch.autograd.set_detect_anomaly(True)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed clip shapes: cuDNN picks its fastest kernels once
        self.precision = resolve_precision(cfg, device)
        if t.precision == "fp16" and device.type != "cuda":
            self.log("note: fp16 autocast needs CUDA; training in fp32 on the CPU")

        # the same seed on every rank: identical initial weights; per-rank noise comes after (below)
        set_seed(t.seed)
        self.model = build_model(cfg).to(device)
        self.disc = build_discriminator(cfg).to(device)
        speed_layout(cfg, self.model, self.disc, device, self.precision)  # before DDP, EMA and the optimizers see them
        self.model_ddp: nn.Module = self.model
        self.disc_ddp: nn.Module = self.disc
        if dist.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.model_ddp = DDP(self.model, device_ids=ids)
            self.disc_ddp = DDP(self.disc, device_ids=ids)
        if t.compile:
            # the training step's players go through torch.compile; checkpoints, validation and sampling use the
            # plain modules (same parameters), so saved weights keep their names
            self.model_ddp = compile_player(self.model_ddp, t.compile_mode)
            self.disc_ddp = compile_player(self.disc_ddp, t.compile_mode)
        self.opt_g = build_optimizer(t.optimizer, [p for p in self.model.parameters() if p.requires_grad],
                                     t.learning_rate_gen, t)
        self.opt_d = build_optimizer(t.optimizer, list(self.disc.parameters()), t.learning_rate_disc, t)
        self.ema = EMA(self.model, t.ema_decay) if t.ema_decay > 0 else None
        self.runner = StepRunner(cfg, self.model, self.disc, self.model_ddp, self.disc_ddp, self.opt_g, self.opt_d,
                                 self.precision, device, self.ema)
        if t.compile:
            self.runner.disc = compile_player(self.disc, t.compile_mode)  # the frozen-D pass of the generator's adversarial term
        self.q_gen = self.q_disc = self.q_lkl = None
        if t.q_controller_enabled:
            self.q_gen = LRMomentumController("gen", seed=t.seed + 1)
            self.q_disc = LRMomentumController("disc", seed=t.seed + 2)
            if t.lambda_kl_update_interval > 0 and not t.min_lambda_kl_q_control <= t.lambda_kl <= t.max_lambda_kl_q_control:
                self.log(f"note: lambda_kl {t.lambda_kl:g} is outside [--min_lambda_kl_q_control, "
                         f"--max_lambda_kl_q_control]: its Q-controller stays off")
            elif t.lambda_kl_update_interval > 0:
                self.q_lkl = LambdaKLController(t.lambda_kl, t.lambda_kl_band, t.min_lambda_kl_q_control,
                                                t.max_lambda_kl_q_control, seed=t.seed + 3,
                                                higher_is_better=HIGHER_IS_BETTER[t.val_primary_metric])
        self.state = RunState(lambda_kl=t.lambda_kl)
        self.scales = (1.0, 1.0, 1.0, 1.0)  # the Q-controllers' latest LR/momentum scales (G, D)
        self.lpips = None
        if t.use_lpips_for_verification:
            self.lpips = load_lpips(t.lpips_weights, device)
            if self.lpips is None:
                self.log(f"note: LPIPS unavailable: {lpips_unavailable_message(t.lpips_weights)}")

        self.data = build_datasets(cfg, dist.rank, dist.world_size)
        # --- motion branch: frozen flow is computed once per source (on this device) and served with the frames ---
        if self.model.motion is not None and self.model.motion.uses_cache:
            from wubugen.flow.cache import attach_flow_cache

            report = attach_flow_cache(self.data, cfg, self.model.motion.flow, rank=dist.rank,
                                       world_size=dist.world_size)
            self.log(report.summary(self.model.motion.flow))
        self.fixed_noise: Tensor | None = None
        self._announced = False

        if t.resume:
            self._resume(t.resume)
        elif t.load_checkpoint:
            self._load_phase(t.load_checkpoint)
        # per-rank stream for the reparameterisation noise and dropout (after weights are identical everywhere)
        if not t.resume:
            torch.manual_seed(t.seed + 1000 * dist.rank)
        g = torch.Generator().manual_seed(t.seed + 7)
        if cfg.model.task == "reconstruct":
            self.fixed_noise = torch.randn((max(1, cfg.log.num_val_samples_to_log), *self.model.latent_shape()),
                                           generator=g)
        self.tracker = build_tracker(self.run_dir, cfg.log, cfg.to_dict(), self.is_main,
                                     resume_step=self.state.step if t.resume else None)

    # ------------------------------------------------------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------------------------------------------------------
    def _modules(self) -> dict[str, Any]:
        mods: dict[str, Any] = {"model": self.model, "disc": self.disc}
        if self.ema is not None:
            mods["ema"] = self.ema.state_dict()
        return mods

    def _train_state(self) -> dict[str, Any]:
        s = self.state
        return {
            "step": s.step, "epoch": s.epoch, "batch_in_epoch": s.batch_in_epoch, "lambda_kl": s.lambda_kl,
            "best_metric": s.best_metric, "best_step": s.best_step, "rollbacks": s.rollbacks, "lr_factor": s.lr_factor,
            "nonfinite_total": s.nonfinite_total + int(self.runner.nonfinite_steps.item()),
            "last_val": {k: v for k, v in s.last_val.items()},
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "scaler_g": self.runner.scaler_g.state_dict(), "scaler_d": self.runner.scaler_d.state_dict(),
            "q_gen": self.q_gen.state_dict() if self.q_gen else None,
            "q_disc": self.q_disc.state_dict() if self.q_disc else None,
            "q_lkl": self.q_lkl.state_dict() if self.q_lkl else None,
            "rng": ckpt.capture_rng_state(),
        }

    def save(self, best: bool = False) -> Path | None:
        path = None
        if self.is_main:
            meta = {"config": self.cfg.to_dict(), "metrics": self.state.last_val, "lambda_kl": self.state.lambda_kl,
                    "task": self.cfg.model.task}
            path = ckpt.save_checkpoint(self.run_dir, self.state.step, self._modules(), self._train_state(), meta,
                                        self.cfg.train.keep_last_checkpoints, best=best)
        barrier(self.dist)  # no rank reads a checkpoint before it is complete
        return path

    def _load_weights(self, c: ckpt.Checkpoint, strict: bool) -> None:
        for name, module in (("model", self.model), ("disc", self.disc)):
            if name not in c.weights:
                raise UserError(f"checkpoint {c.path} has no {name} weights")
            report = ckpt.load_module_weights(module, c.weights[name], strict, name=name)
            if not report.clean:
                self.log(report.summary())
        if self.ema is not None:
            state = ema_state_by_name(c.weights.get("ema", {}), self.model)
            if all(n in state and state[n].shape == p.shape for n, p in zip(self.ema.names, self.ema.params)):
                self.ema.load_state_dict(state)
            else:  # no EMA in the checkpoint (or another model's): start it from the loaded weights
                self.ema = EMA(self.model, self.cfg.train.ema_decay)
                self.runner.ema = self.ema

    def _resume(self, path: str) -> None:
        c = ckpt.load_checkpoint(ckpt.resolve_checkpoint(path, prefer="last"), map_location=self.device)
        stored = config_from_dict(c.meta["config"])
        if _model_signature(stored) != _model_signature(self.cfg):
            raise UserError(f"--resume {path}: the checkpoint's model options differ from this run's; "
                            "use --load_checkpoint to start a new phase from its weights")
        self._load_weights(c, strict=True)
        ts = c.train_state
        self._restore_progress(ts)
        self.runner.scaler_g.load_state_dict(ts["scaler_g"])
        self.runner.scaler_d.load_state_dict(ts["scaler_d"])
        for ctrl, key in ((self.q_gen, "q_gen"), (self.q_disc, "q_disc"), (self.q_lkl, "q_lkl")):
            if ctrl is not None and ts.get(key) is not None:
                ctrl.load_state_dict(ts[key])
        s = self.state
        s.best_metric, s.best_step = ts["best_metric"], ts["best_step"]
        s.rollbacks, s.lr_factor, s.nonfinite_total = ts["rollbacks"], ts["lr_factor"], ts["nonfinite_total"]
        s.last_val = dict(ts["last_val"])
        ckpt.restore_rng_state(ts["rng"])
        self.log(f"resumed {c.path} at step {s.step} (epoch {s.epoch + 1}, batch {s.batch_in_epoch})")

    def _restore_progress(self, ts: dict[str, Any]) -> None:
        """Optimizer states, data position and lambda_kl: what a resume and a rollback both bring back."""
        self.opt_g.load_state_dict(ts["opt_g"])
        self.opt_d.load_state_dict(ts["opt_d"])
        s = self.state
        s.step, s.epoch, s.batch_in_epoch, s.lambda_kl = ts["step"], ts["epoch"], ts["batch_in_epoch"], ts["lambda_kl"]

    def _load_phase(self, path: str) -> None:
        c = ckpt.load_checkpoint(ckpt.resolve_checkpoint(path, prefer="best"), map_location=self.device)
        self._load_weights(c, strict=self.cfg.train.load_strict)
        self.log(f"new phase from {c.path} (step {c.step}): this run's lambda_kl {self.state.lambda_kl:g}, "
                 f"LR G/D {self.cfg.train.learning_rate_gen:g}/{self.cfg.train.learning_rate_disc:g}")

    # ------------------------------------------------------------------------------------------------------------------
    # the loop
    # ------------------------------------------------------------------------------------------------------------------
    def _graphs_label(self) -> str:
        if not self.runner.graphs_on:
            return ""
        if self.model.motion is not None and not self.model.motion.uses_cache:
            return ", no CUDA graphs (the flow net runs inside the step)"
        return ", CUDA graphs"

    def total_steps(self, batches_per_epoch: int) -> int:
        t = self.cfg.train
        if t.max_steps > 0:  # a step budget overrides --epochs
            return t.max_steps
        return t.epochs * (batches_per_epoch // t.grad_accum_steps)

    def fit(self) -> dict[str, Any]:
        cfg, t, s = self.cfg, self.cfg.train, self.state
        probe = make_loader(self.data.train, cfg, True, self.dist.rank, self.dist.world_size, epoch=0)
        per_epoch = self.batches_per_epoch = len(probe)
        del probe
        total = self.total_steps(per_epoch)
        if self.is_main and not self._announced:
            self._announced = True
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.toml").write_text(cfg.to_toml())
            n_g = sum(p.numel() for p in self.model.parameters())
            n_d = sum(p.numel() for p in self.disc.parameters())
            self.log(f"wubugen train: {len(self.data.train)} training windows, "
                     f"{len(self.data.val) if self.data.val is not None else 0} validation windows, "
                     f"{per_epoch} batches/epoch, {total} steps; model {n_g / 1e6:.2f} M + D {n_d / 1e6:.2f} M params; "
                     f"{self.device} {str(self.precision.dtype or 'fp32').replace('torch.', '')}"
                     f"{', compiled' if t.compile else ''}{self._graphs_label()}; "
                     f"run dir {self.run_dir}")
        bar = tqdm(total=total, initial=s.step, desc="train", unit="step", disable=not (self.is_main and cfg.log.progress),
                   dynamic_ncols=True, file=sys.stdout)
        log_sums = torch.zeros(len(LOSS_KEYS), device=self.device)
        q_sums = torch.zeros(len(LOSS_KEYS), device=self.device)
        lkl_sums = torch.zeros(len(LOSS_KEYS), device=self.device)
        n_log = n_q = n_lkl = 0
        health_every = max(1, min(cfg.log.log_interval, max(1, t.max_consecutive_nonfinite // 2)))
        t_start = time.perf_counter()
        stop = s.step >= total
        while not stop:
            loader = make_loader(self.data.train, cfg, True, self.dist.rank, self.dist.world_size, epoch=s.epoch,
                                 start_batch=s.batch_in_epoch)
            micro: list[Tensor] = []
            micro_flow: list[Tensor | None] = []  # motion branch: cached flows (None: the model computes flow)
            for batch in loader:
                batch, flow = split_batch(batch)
                micro.append(batch)
                micro_flow.append(flow)
                s.batch_in_epoch += 1
                if len(micro) < t.grad_accum_steps:
                    continue
                adv_on = s.step >= t.gan_start_step
                losses, _, gn_g, gn_d = self.runner.run(micro, s.lambda_kl, adv_on, micro_flow)
                micro, micro_flow = [], []
                s.step += 1
                log_sums += losses
                q_sums += losses
                lkl_sums += losses
                n_log += 1
                n_q += 1
                n_lkl += 1
                bar.update(1)
                if s.step % health_every == 0:
                    self._check_health()
                if self.q_gen is not None and s.step % t.q_control_interval == 0:
                    self._q_control(q_sums / n_q)
                    q_sums.zero_()
                    n_q = 0
                if self.q_lkl is not None and s.step % t.lambda_kl_update_interval == 0:
                    self._lambda_kl_control(lkl_sums / n_lkl)
                    lkl_sums.zero_()
                    n_lkl = 0
                if s.step % cfg.log.log_interval == 0:
                    self._log_train(log_sums / n_log, gn_g, gn_d, bar)
                    log_sums.zero_()
                    n_log = 0
                if cfg.log.wandb_log_train_recon_interval > 0 and s.step % cfg.log.wandb_log_train_recon_interval == 0:
                    self._log_train_recon(batch)
                if (cfg.log.wandb_log_fixed_noise_samples_interval > 0
                        and s.step % cfg.log.wandb_log_fixed_noise_samples_interval == 0):
                    self._log_fixed_noise()
                if t.val_interval > 0 and s.step % t.val_interval == 0:
                    self._validate_and_checkpoint()
                elif t.save_interval > 0 and s.step % t.save_interval == 0:
                    self.save()
                if s.step >= total:
                    stop = True
                    break
            if not stop:  # a whole epoch done (a partial accumulation is dropped, as the original)
                s.epoch += 1
                s.batch_in_epoch = 0
                if t.val_interval <= 0:
                    self._validate_and_checkpoint()
        bar.close()
        elapsed = time.perf_counter() - t_start
        self._check_health(final=True)
        if not (t.val_interval > 0 and s.step % t.val_interval == 0) or s.step == 0:
            self._validate_and_checkpoint()
        summary = self._finish(elapsed)
        return summary

    # ------------------------------------------------------------------------------------------------------------------
    def _apply_lrs(self, g_lr_scale: float, g_mom_scale: float, d_lr_scale: float, d_mom_scale: float) -> None:
        """Q-controller scales times the rollback factor, on the base learning rates (never compounding)."""
        self.scales = (g_lr_scale, g_mom_scale, d_lr_scale, d_mom_scale)
        f = self.state.lr_factor
        apply_lr_momentum_scales(self.opt_g, g_lr_scale * f, g_mom_scale)
        apply_lr_momentum_scales(self.opt_d, d_lr_scale * f, d_mom_scale)

    def _reduced(self, sums: Tensor) -> dict[str, float]:
        v = all_reduce_sum(sums.clone(), self.dist) / self.dist.world_size
        return dict(zip(LOSS_KEYS, v.tolist()))

    def _q_control(self, avg: Tensor) -> None:
        losses = self._reduced(avg)
        losses["lambda_kl"] = self.state.lambda_kl
        g_lr = self.opt_g.param_groups[0]
        d_lr = self.opt_d.param_groups[0]
        gs = self.q_gen.decide(losses, g_lr["lr"], g_lr.get("momentum"))
        ds = self.q_disc.decide(losses, d_lr["lr"], d_lr.get("momentum"))
        self._apply_lrs(gs[0], gs[1], ds[0], ds[1])

    def _lambda_kl_control(self, avg: Tensor) -> None:
        losses = self._reduced(avg)
        metric = self.state.last_val.get(self.cfg.train.val_primary_metric)
        self.state.lambda_kl = float(self.q_lkl.decide(losses, metric))

    def _check_health(self, final: bool = False) -> None:
        consecutive = int(self.runner.consecutive_nonfinite.item())
        if consecutive < self.cfg.train.max_consecutive_nonfinite or final:
            return
        s = self.state
        if s.rollbacks >= 1:
            raise TrainingStopped(
                f"{consecutive} consecutive non-finite steps at step {s.step}, again after a rollback with halved learning "
                f"rates: stopping. Lower --learning_rate_gen/--learning_rate_disc or --lambda_kl, or run with "
                f"--detect_anomaly to find the operation")
        last = self.run_dir / ckpt.LAST_POINTER
        if not last.exists():
            raise TrainingStopped(f"{consecutive} consecutive non-finite steps at step {s.step} and no checkpoint to "
                                  f"roll back to: lower the learning rates (--learning_rate_gen/--learning_rate_disc)")
        bad_step = s.step
        c = ckpt.load_checkpoint(ckpt.resolve_checkpoint(self.run_dir, prefer="last"), map_location=self.device)
        self._load_weights(c, strict=True)
        self._restore_progress(c.train_state)
        s.rollbacks += 1
        s.lr_factor *= 0.5
        s.nonfinite_total += int(self.runner.nonfinite_steps.item())
        self.runner.nonfinite_steps.zero_()
        self.runner.consecutive_nonfinite.zero_()
        self._apply_lrs(*self.scales)
        msg = (f"{consecutive} consecutive non-finite steps at step {bad_step}: rolled back to step {s.step}, "
               f"learning rates halved (factor {s.lr_factor:g})")
        self.log(f"warning: {msg}")
        self.tracker.log_scalars({"train/rollbacks": s.rollbacks, "train/lr_factor": s.lr_factor}, s.step)
        raise _Rollback(msg)

    def _log_train(self, avg: Tensor, gn_g: Tensor, gn_d: Tensor, bar) -> None:
        losses = self._reduced(avg)
        s = self.state
        values: dict[str, float | None] = {f"train/{k}": v for k, v in losses.items()}
        values.update({
            "train/lr_gen": self.opt_g.param_groups[0]["lr"], "train/lr_disc": self.opt_d.param_groups[0]["lr"],
            "train/lambda_kl": s.lambda_kl,
            "train/nonfinite_steps": s.nonfinite_total + int(self.runner.nonfinite_steps.item()),
            "epoch_frac": s.epoch + s.batch_in_epoch / max(1, self.batches_per_epoch),
        })
        if self.cfg.log.log_grad_norm:
            values["train/grad_norm_gen"] = float(gn_g)
            values["train/grad_norm_disc"] = float(gn_d)
        for name, ctrl in (("q_ctrl_gen", self.q_gen), ("q_ctrl_disc", self.q_disc), ("q_ctrl_lkl", self.q_lkl)):
            if ctrl is not None:
                values.update({f"{name}/{k}": v for k, v in ctrl.info().items()})
        self.tracker.log_scalars(values, s.step)
        if self.is_main:
            bar.set_postfix_str(f"G:{losses['loss_g_total']:.3f} D:{losses['loss_d_total']:.3f} "
                                f"Rec:{losses['loss_recon']:.4f} KL:{losses['loss_kl']:.3f} LKL:{s.lambda_kl:.1e}")

    # ------------------------------------------------------------------------------------------------------------------
    # validation, samples
    # ------------------------------------------------------------------------------------------------------------------
    def _eval_weights(self):
        """The weights validation and sampling use: the EMA's when it is on."""
        return self.ema.swapped_into(self.model) if self.ema is not None else contextlib.nullcontext()

    def _rng_fork(self):
        """Validation, samples and logging must not move the training RNG streams (exact resume depends on it)."""
        return torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])

    @torch.no_grad()
    def validate(self) -> dict[str, float | None]:
        cfg = self.cfg
        if self.data.val is None or len(self.data.val) == 0:
            return {}
        loader = make_loader(self.data.val, cfg, False, self.dist.rank, self.dist.world_size)
        with self._eval_weights():
            self.model.eval()
            ev = metric_pass(self.model, loader, cfg, self.device, self.lpips, prepare=self.runner.prepare,
                             prepare_flow=self.runner.prepare_flow, autocast=self.precision.autocast,
                             max_batches=cfg.train.val_max_batches, keep=cfg.log.num_val_samples_to_log)
            self.model.train()
        result = ev.metrics.compute(all_reduce_sum(ev.metrics.sums(), self.dist))
        if ev.copy_last is not None:
            base = ev.copy_last.compute(all_reduce_sum(ev.copy_last.sums(), self.dist))
            result.update({f"copy_last_{k}": v for k, v in base.items() if v is not None})
        if ev.shown is not None and self.is_main:  # keep=num_val_samples_to_log: None when that is 0
            self.tracker.log_images("samples/val_reconstruction_samples", _pairs_grid(*ev.shown), self.state.step,
                                    caption="rows: ground truth, reconstruction (from mu)")
        return result

    def _validate_and_checkpoint(self) -> None:
        t, s = self.cfg.train, self.state
        with self._rng_fork():
            metrics = self.validate()
        best = False
        if metrics:
            s.last_val = metrics
            primary = metrics.get(t.val_primary_metric)
            if primary is not None and is_better(t.val_primary_metric, primary, s.best_metric):
                s.best_metric, s.best_step, best = primary, s.step, True
            self.tracker.log_scalars({f"val/{k}": v for k, v in metrics.items()}, s.step)
            shown = ", ".join(f"{k.replace('avg_val_', '')} {v:.4f}" for k, v in metrics.items()
                              if v is not None and k.startswith("avg_val"))
            self.log(f"validation at step {s.step}: {shown}" + ("  (best)" if best else ""))
        self._log_fixed_noise()
        self.save(best=best)

    @torch.no_grad()
    def _sample_clips(self, num: int, noise: Tensor | None = None) -> Tensor | None:
        """uint8 (N, T, C, H, W): prior samples (reconstruct) or predictions of validation contexts (predict)."""
        model = self.model
        with self._eval_weights(), self._rng_fork():
            model.eval()
            with self.precision.autocast():
                if self.cfg.model.task == "predict":
                    source = self.data.val if self.data.val is not None and len(self.data.val) else self.data.train
                    clip = self.runner.prepare(torch.stack([split_batch(source[i])[0]
                                                            for i in range(min(num, len(source)))]))
                    frames = model.sample(num, context_clip=clip[:, : self.cfg.data.num_input_frames])
                    frames = torch.cat([clip[:, : self.cfg.data.num_input_frames], frames.float()], 1)
                else:
                    gen = torch.Generator().manual_seed(self.cfg.train.seed + 11)
                    z = noise if noise is not None else torch.randn((num, *model.latent_shape()), generator=gen)
                    frames = model.sample(num, noise=z.to(self.device))
            model.train()
        return to_uint8(frames.float()).cpu()

    def _log_fixed_noise(self) -> None:
        if not self.is_main or self.cfg.log.num_val_samples_to_log <= 0:
            return
        clips = self._sample_clips(self.cfg.log.num_val_samples_to_log, self.fixed_noise)
        caption = "prior samples, fixed noise" if self.cfg.model.task == "reconstruct" else "context + predicted frames"
        self.tracker.log_images("samples/fixed_noise_generated", clip_grid(clips), self.state.step, caption=caption)

    def _log_train_recon(self, batch: Tensor) -> None:
        if not self.is_main:
            return
        n = self.cfg.log.num_val_samples_to_log
        with torch.no_grad(), self._rng_fork():
            self.model.eval()
            clip = self.runner.prepare(batch[:n])
            with self.precision.autocast():
                out = self.model(clip, sample_posterior=False)
            self.model.train()
        self.tracker.log_images("samples/train_recon", _pairs_grid(out.target, out.recon), self.state.step,
                                caption="rows: ground truth, reconstruction")

    def _finish(self, elapsed: float) -> dict[str, Any]:
        s = self.state
        summary = {"steps": s.step, "epochs_completed": s.epoch, "seconds": round(elapsed, 1),
                   "best_metric": s.best_metric, "best_step": s.best_step, "val": s.last_val,
                   "nonfinite_steps": s.nonfinite_total + int(self.runner.nonfinite_steps.item()),
                   "rollbacks": s.rollbacks, "lambda_kl": s.lambda_kl}
        if self.is_main:
            n = self.cfg.log.demo_num_samples
            if n > 0:
                clips = self._sample_clips(n)
                out = self.run_dir / "samples"
                for suffix in (".png", ".gif", ".mp4"):
                    save_clips(out / f"final_step{s.step:08d}{suffix}", clips, fps=8)
            metrics_file = self.run_dir / "metrics.jsonl"
            if metrics_file.exists():
                plot_losses(metrics_file, self.run_dir / "report.png")
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            self.log(f"done: {s.step} steps in {elapsed:.0f} s; " +
                     ", ".join(f"{k} {v:.4f}" for k, v in s.last_val.items() if isinstance(v, float)) +
                     f"; checkpoints, samples and report in {self.run_dir}")
        self.tracker.finish()
        return summary


class _Rollback(Exception):
    """Raised inside the loop after a rollback; `train()` restarts the loop from the restored position."""


def _pairs_grid(target: Tensor, recon: Tensor):
    """A PNG-ready grid whose rows alternate ground truth and reconstruction. (N, T, C, H, W) each in [-1, 1]."""
    pairs = torch.stack([target.float(), recon.float()], 1).flatten(0, 1)
    return clip_grid(to_uint8(pairs).cpu())


def _model_signature(cfg: Config) -> dict[str, Any]:
    """The options that decide the model's tensors (and data shape): a resume must match them exactly."""
    d = cfg.to_dict()
    keep_data = ("image_h", "image_w", "num_channels", "num_input_frames", "num_predict_frames")
    return {"model": d["model"], "data": {k: d["data"][k] for k in keep_data}}


def train(cfg: Config, dist: DistInfo, device: torch.device) -> dict[str, Any]:
    trainer = Trainer(cfg, dist, device)
    while True:
        try:
            return trainer.fit()
        except _Rollback:
            continue
