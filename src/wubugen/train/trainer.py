"""The training loop, as orchestration only: data -> steps -> cadences (health, Q-control, logs, media, validation,
checkpoints). The players are built in players.py, the objective lives in losses.py, one step in step.py, saving and
restoring progress in state.py, what people look at in artifacts.py. Rank 0 writes.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from wubugen.config import Config
from wubugen.data import build_datasets, make_loader
from wubugen.data.batch import ClipBatch
from wubugen.errors import Interrupted
from wubugen.eval.metrics import is_better, load_lpips, lpips_unavailable_message
from wubugen.track import build_tracker
from wubugen.train import artifacts
from wubugen import checkpoint as ckpt
from wubugen.train import state as run_state
from wubugen.train.distributed import DistInfo, all_reduce_sum, barrier
from wubugen.train.health import Health
from wubugen.train.meter import LossMeter
from wubugen.train.optim import apply_lr_momentum_scales
from wubugen.train.players import build_players, set_seed
from wubugen.train.signals import StopControl, StopSignals, stopped_message
from wubugen.train.state import RunState
from wubugen.train.step import LOSS_KEYS, StepRunner
from wubugen.train.stopping import StopRule, end_reason


class Trainer:
    def __init__(self, cfg: Config, dist: DistInfo, device: torch.device, resume_from: ckpt.Checkpoint | None = None):
        """resume_from: the checkpoint `--resume` continues from (resume_rules.plan_resume), else its run's last."""
        self.cfg, self.dist, self.device = cfg, dist, device
        t = cfg.train
        self.signals = StopSignals(announce=dist.is_main, lead="\n" if cfg.log.progress else "")
        self.control = StopControl(self.signals, dist, device, t.max_seconds, t.save_every_minutes,
                                   t_created=time.perf_counter())  # --max_seconds counts from here (set-up included)
        self._saved_step, self._stop_signal = -1, 0
        self.run_dir, self.is_main = Path(t.checkpoint_dir), dist.is_main
        self.report = artifacts.LiveReport(self.run_dir, cfg.log.report_every_minutes, dist.is_main)
        self.log = (lambda m: tqdm.write(str(m), file=sys.stdout)) if self.is_main else (lambda *a, **k: None)
        if t.detect_anomaly:
            torch.autograd.set_detect_anomaly(True)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed clip shapes: cuDNN picks its fastest kernels once
        if t.precision == "fp16" and device.type != "cuda":
            self.log("note: fp16 autocast needs CUDA; training in fp32 on the CPU")
        set_seed(t.seed)  # the same seed on every rank: identical initial weights; per-rank noise comes after (below)
        self.players = p = build_players(cfg, device, dist, log=self.log)
        self.runner = StepRunner(p)
        self.state = RunState(lambda_kl=t.lambda_kl)
        self.meter = LossMeter(("log", "q", "lkl"), len(LOSS_KEYS), device)
        self.lpips = None
        if t.use_lpips_for_verification:
            self.lpips = load_lpips(t.lpips_weights, device)
            if self.lpips is None:
                self.log(f"note: LPIPS unavailable: {lpips_unavailable_message(t.lpips_weights)}")
        self.data = build_datasets(cfg, dist.rank, dist.world_size)
        motion = p.model.motion
        if motion is not None and motion.uses_cache:  # frozen flow: computed once per source and served with the frames
            from wubugen.data.flow_cache import attach_flow_cache

            report = attach_flow_cache(self.data, cfg, motion.flow, rank=dist.rank, world_size=dist.world_size)
            self.log(report.summary(motion.flow))
        if t.resume:
            run_state.resume(resume_from or t.resume, cfg, self.state, p, self.runner, self.log, self.meter)
        elif t.load_checkpoint:
            run_state.load_phase(t.load_checkpoint, cfg, self.state, p, self.log)
        if not t.resume:  # per-rank stream for the posterior noise and dropout (after weights are identical everywhere)
            torch.manual_seed(t.seed + 1000 * dist.rank)
        self.fixed_noise: Tensor | None = None
        if cfg.model.task == "reconstruct":
            g = torch.Generator().manual_seed(t.seed + 7)
            self.fixed_noise = torch.randn((max(1, cfg.log.num_val_samples_to_log), *p.model.latent_shape()),
                                           generator=g)
        self.tracker = build_tracker(self.run_dir, cfg.log, cfg.to_dict(), self.is_main,
                                     resume_step=self.state.step if t.resume else None)
        self.health = Health(cfg, p, self.state, self.tracker, self.log, lambda: self._apply_lrs(*self.state.scales))
        self.stop_rule, self._val_step, self._announced = StopRule.from_config(t), -1, False
        if t.resume:  # a run the stop rule ended stays ended (under the rule it resumes with)
            self.state.end_reason = self.stop_rule.check(self.state.val_history)

    # ------------------------------------------------------------------------------------------------------------------
    def save(self, best: bool = False) -> Path | None:
        path = None
        if self.is_main:
            s = self.state
            s.health = self.health.state_dict()
            meta = {"config": self.cfg.to_dict(), "metrics": s.last_val, "lambda_kl": s.lambda_kl,
                    "task": self.cfg.model.task}
            path = ckpt.save_checkpoint(self.run_dir, s.step, self.players.modules_to_save(),
                                        run_state.train_state(s, self.players, self.runner, self.meter), meta,
                                        self.cfg.train.keep_last_checkpoints, best=best)
        barrier(self.dist)  # no rank reads a checkpoint before it is complete
        self._saved_step = self.state.step
        self.control.saved()
        return path

    def total_steps(self, batches_per_epoch: int) -> int:
        t = self.cfg.train
        if t.max_steps > 0:  # a step budget overrides --epochs
            return t.max_steps
        return t.epochs * (batches_per_epoch // t.grad_accum_steps)

    # ------------------------------------------------------------------------------------------------------------------
    # the loop
    # ------------------------------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        cfg, t, s = self.cfg, self.cfg.train, self.state
        probe = make_loader(self.data.train, cfg, True, self.dist.rank, self.dist.world_size, epoch=0)
        self.batches_per_epoch = len(probe)
        del probe
        total = self.total_steps(self.batches_per_epoch)
        if self.is_main and not self._announced:
            self._announced = True
            artifacts.announce(self.players, self.runner, self.data, self.run_dir, self.batches_per_epoch, total)
        bar = tqdm(total=total, initial=s.step, desc="train", unit="step", disable=not (self.is_main and cfg.log.progress),
                   dynamic_ncols=True, file=sys.stdout)
        t_start, outcome = time.perf_counter(), "steps_done"
        with self.signals:  # SIGINT/SIGTERM: the step finishes, a checkpoint is written, the run stops (signals.py)
            while s.step < total and s.end_reason is None:
                outcome = self._run_epoch(total, self.meter, bar)
                if outcome in ("steps_done", "stopped"):
                    break
                if outcome == "rolled_back":  # the loop goes on from the restored position, with fresh windows
                    bar.n = s.step
                    self.meter = LossMeter(("log", "q", "lkl"), len(LOSS_KEYS), self.device)
                elif outcome == "epoch_done":  # a partial accumulation is dropped, as the original
                    s.epoch += 1
                    s.batch_in_epoch = 0
                    if t.val_interval <= 0 and self._validate_and_checkpoint():
                        break
            bar.close()
            if outcome == "stopped":  # every rank agreed on the step (StopControl.poll)
                self._stop(self._stop_signal)
        elapsed = time.perf_counter() - t_start
        if (not (t.val_interval > 0 and s.step % t.val_interval == 0) or s.step == 0) and self._val_step != s.step:
            self._validate_and_checkpoint()
        if s.end_reason is None:
            s.end_reason = end_reason("length", f"{s.step} of {total} steps") if s.step >= total else end_reason(
                "time", f"--max_seconds {t.max_seconds:g} reached at step {s.step}")
        return self._finish(elapsed)

    def _run_epoch(self, total: int, meter: LossMeter, bar) -> str:
        """Steps through the rest of the current epoch. -> 'epoch_done', 'steps_done', 'rolled_back' or 'stopped'."""
        cfg, t, s, log = self.cfg, self.cfg.train, self.state, self.cfg.log
        p = self.players
        health_every = max(1, min(log.log_interval, max(1, t.max_consecutive_nonfinite // 2)))
        loader = make_loader(self.data.train, cfg, True, self.dist.rank, self.dist.world_size, epoch=s.epoch,
                             start_batch=s.batch_in_epoch)
        micro: list[ClipBatch] = []
        for batch in loader:
            micro.append(batch)
            s.batch_in_epoch += 1
            if len(micro) < t.grad_accum_steps:
                continue
            losses, _, gn_g, gn_d = self.runner.run(micro, s.lambda_kl, p.loss.adversarial_on(s.step))
            micro = []
            s.step += 1
            meter.add(losses)
            bar.update(1)
            if s.step % health_every == 0 and self._rolled_back():
                return "rolled_back"
            if p.q_gen is not None and s.step % t.q_control_interval == 0:
                self._q_control(meter.take("q"))
            if p.q_lkl is not None and s.step % t.lambda_kl_update_interval == 0:
                losses_lkl = self._reduced(meter.take("lkl"))
                s.lambda_kl = float(p.q_lkl.decide(losses_lkl, s.last_val.get(t.val_primary_metric)))
            if s.step % log.log_interval == 0:
                self._log_train(meter.take("log"), gn_g, gn_d, bar)
            if self.is_main and log.wandb_log_train_recon_interval > 0 and s.step % log.wandb_log_train_recon_interval == 0:
                artifacts.log_train_recon(p, self.runner, batch.frames, self.tracker, s.step)
            if (self.is_main and log.wandb_log_fixed_noise_samples_interval > 0
                    and s.step % log.wandb_log_fixed_noise_samples_interval == 0):
                artifacts.log_fixed_noise(p, self.runner, self.data, self.fixed_noise, self.tracker, s.step)
            if t.val_interval > 0 and s.step % t.val_interval == 0:
                if self._validate_and_checkpoint():
                    return "steps_done"
            elif t.save_interval > 0 and s.step % t.save_interval == 0:
                self.save()
            if s.step >= total:
                return "steps_done"
            # a signal, --max_seconds, --save_every_minutes: host-side reads; under DDP decided on synced steps only
            signum, out_of_time, save_due = self.control.poll(s.step % health_every == 0)
            if signum:
                self._stop_signal = signum
                return "stopped"
            if out_of_time:
                return "steps_done"
            if save_due and self._saved_step != s.step:
                self.save()
        return "epoch_done"

    def _stop(self, signum: int) -> None:
        """After SIGINT/SIGTERM: a checkpoint of the step reached (unless just written), then stop (exit 128 + signum)."""
        if self._saved_step != self.state.step:
            self.save()
        self.tracker.finish()
        raise Interrupted(stopped_message(signum, self.state.step, self.run_dir) if self.is_main else "", 128 + signum)

    # ------------------------------------------------------------------------------------------------------------------
    def _apply_lrs(self, g_lr_scale: float, g_mom_scale: float, d_lr_scale: float, d_mom_scale: float) -> None:
        """Q-controller scales times the rollback factor, on the base learning rates (never compounding)."""
        self.state.scales = (g_lr_scale, g_mom_scale, d_lr_scale, d_mom_scale)
        f, (fg, fd) = self.state.lr_factor, self.health.lr_factors()  # the rollback's and the health remedies'
        apply_lr_momentum_scales(self.players.opt_g, g_lr_scale * f * fg, g_mom_scale)
        apply_lr_momentum_scales(self.players.opt_d, d_lr_scale * f * fd, d_mom_scale)

    def _reduced(self, means: Tensor) -> dict[str, float]:
        v = all_reduce_sum(means.clone(), self.dist) / self.dist.world_size
        return dict(zip(LOSS_KEYS, v.tolist()))

    def _q_control(self, means: Tensor) -> None:
        p = self.players
        losses = self._reduced(means)
        losses["lambda_kl"] = self.state.lambda_kl
        g_lr, d_lr = p.opt_g.param_groups[0], p.opt_d.param_groups[0]
        gs = p.q_gen.decide(losses, g_lr["lr"], g_lr.get("momentum"))
        ds = p.q_disc.decide(losses, d_lr["lr"], d_lr.get("momentum"))
        self._apply_lrs(gs[0], gs[1], ds[0], ds[1])

    def _rolled_back(self) -> bool:
        """After --max_consecutive_nonfinite non-finite steps in a row: back to the last checkpoint with halved
        learning rates (once; a second time stops the run). -> True when the run was rolled back."""
        consecutive = int(self.runner.consecutive_nonfinite.item())
        if consecutive < self.cfg.train.max_consecutive_nonfinite:
            return False
        s = self.state
        run_state.check_rollback(self.run_dir, s, consecutive)  # a second time, or nothing to go back to: stop
        bad_step = s.step
        run_state.rollback(self.run_dir, s, self.players, self.runner, self.log)
        self._apply_lrs(*s.scales)
        self.health.rolled_back(consecutive, bad_step)
        self.tracker.log_scalars({"train/rollbacks": s.rollbacks, "train/lr_factor": s.lr_factor}, s.step)
        return True

    def _log_train(self, means: Tensor, gn_g: Tensor, gn_d: Tensor, bar) -> None:
        s = self.state
        values = artifacts.train_values(self.players, s, self.runner, self._reduced(means), gn_g, gn_d,
                                        self.batches_per_epoch)
        self.tracker.log_scalars(values, s.step)
        if self.is_main:
            bar.set_postfix_str(artifacts.progress_text(values))
        self.health.observe_log(values, s.step)  # the guide's troubleshooting rules over what was just logged

    def _validate_and_checkpoint(self) -> bool:
        """Validation, the fixed-noise samples (unless they have an interval of their own) and a checkpoint.
        -> True when the stop rule ends the run here (a plateau or threshold of the primary metric)."""
        t, s, fn_every = self.cfg.train, self.state, self.cfg.log.wandb_log_fixed_noise_samples_interval
        with artifacts.rng_fork(self.device):
            metrics = artifacts.validate(self.players, self.runner, self.data.val, self.dist, self.lpips,
                                         self.tracker, s.step)
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
            s.val_history.append(primary)
            self.health.observe_val(metrics, s.step)
            s.end_reason = self.stop_rule.check(s.val_history)
        if self.is_main and fn_every <= 0:  # with an interval of their own they are logged there, once per interval
            artifacts.log_fixed_noise(self.players, self.runner, self.data, self.fixed_noise, self.tracker, s.step)
        if s.end_reason is not None:
            self.log(f"stop rule ({s.end_reason['kind']}): {s.end_reason['detail']}: the run ends at step {s.step}")
        self._val_step = s.step
        self.save(best=best)
        self.report.maybe(self.log)  # the page, while the run trains (every --report_every_minutes)
        return s.end_reason is not None

    def _finish(self, elapsed: float) -> dict[str, Any]:
        s = self.state
        summary = {"steps": s.step, "epochs_completed": s.epoch, "seconds": round(elapsed, 1),
                   "best_metric": s.best_metric, "best_step": s.best_step, "val": s.last_val,
                   "nonfinite_steps": s.nonfinite_total + int(self.runner.nonfinite_steps.item()),
                   "rollbacks": s.rollbacks, "lambda_kl": s.lambda_kl, "end_reason": s.end_reason,
                   "health": self.health.summary()}
        if self.is_main:
            artifacts.finish_run(self.players, self.runner, self.data, self.run_dir, summary, s.step)
            self.report.maybe(self.log, final=True)
            self.log(f"done: {s.step} steps in {elapsed:.0f} s; " +
                     ", ".join(f"{k} {v:.4f}" for k, v in s.last_val.items() if isinstance(v, float)) +
                     f"; checkpoints, samples and report in {self.run_dir}")
        self.tracker.finish()
        return summary


def train(cfg: Config, dist: DistInfo, device: torch.device, resume_from: ckpt.Checkpoint | None = None) -> dict[str, Any]:
    return Trainer(cfg, dist, device, resume_from).fit()
