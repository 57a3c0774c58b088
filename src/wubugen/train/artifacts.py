"""What a run shows people: validation passes, image strips and fixed-noise samples during training, and the end of a
run's samples, loss report and summary. None of it moves the training RNG streams (exact resume depends on that)."""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from wubugen.config import config_toml
from wubugen.eval.loop import metric_pass
from wubugen.eval.metrics import LPIPSMetric, sample_diversity
from wubugen.eval.prior import encode_dataset
from wubugen.media import atomic_write_text, labelled_grid, labelled_video, save_clips, to_uint8
from wubugen.models.prior import fit_latent_prior, prior_noise
from wubugen.track.base import Tracker
from wubugen.track.runinfo import is_plan_root
from wubugen.track.report import plot_losses
from wubugen.train.distributed import DistInfo, all_reduce_sum
from wubugen.train.players import Players
from wubugen.train.step import StepRunner

PRIOR_RANK = 64  # principal directions of the aggregate prior of logged samples (fitted on 128 windows by default)


def announce(players: Players, runner: StepRunner, data, run_dir: Path, per_epoch: int, total: int) -> None:
    """The run's first words (rank 0): its config.toml in the run dir, and one line on data, model and device."""
    cfg, p = players.cfg, players
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(config_toml(cfg))
    n_g = sum(x.numel() for x in p.model.parameters())
    n_d = sum(x.numel() for x in p.disc.parameters())
    graphs = ""
    if runner.graphs_on:
        motion = p.model.motion
        graphs = (", no CUDA graphs (the flow net runs inside the step)"
                  if motion is not None and not motion.uses_cache else ", CUDA graphs")
    val = len(data.val) if data.val is not None else 0
    print(f"wubugen train: {len(data.train)} training windows, {val} validation windows, "
          f"{per_epoch} batches/epoch, {total} steps; model {n_g / 1e6:.2f} M + D {n_d / 1e6:.2f} M params; "
          f"{p.device} {str(p.precision.dtype or 'fp32').replace('torch.', '')}"
          f"{', compiled' if cfg.train.compile else ''}{graphs}; run dir {run_dir}")
    if cfg.train.compile:
        # the first step waits for torch.compile without a word otherwise (2 minutes on an H200 with a cold cache)
        cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "inductor's default cache")
        print(f"compiling at the first steps: minutes on a cold cache, seconds on a repeat run of this configuration "
              f"(kernels cached in {cache})")


def eval_weights(players: Players):
    """The weights validation and sampling use: the EMA's when it is on."""
    return players.ema.swapped_into(players.model) if players.ema is not None else contextlib.nullcontext()


def rng_fork(device: torch.device):
    """Validation, samples and logging must not move the training RNG streams."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def _u8(x: Tensor) -> Tensor:
    return to_uint8(x.float()).cpu()


def strip(context: Tensor, target: Tensor, recon: Tensor, task: str) -> np.ndarray:
    """A labelled PNG-ready strip, one row per clip: context | target | reconstruction (or prediction), frames scaled
    up to be seen. (N, T_i, C, H, W) each in [-1, 1]."""
    made = "prediction" if task == "predict" else "reconstruction"
    return labelled_grid([("context", _u8(context)), ("target", _u8(target)), (made, _u8(recon))])


def strip_video(context: Tensor, target: Tensor, recon: Tensor) -> np.ndarray:
    """The real window beside the context followed by the model's frames, as (T, H, W, 3) video frames."""
    return labelled_video([("real", _u8(torch.cat([context, target], 1))),
                           ("model", _u8(torch.cat([context, recon.to(context.dtype)], 1)))])


def log_strips(tracker: Tracker, name: str, shown: tuple[Tensor, Tensor, Tensor], task: str, step: int) -> None:
    """A labelled strip as samples/<name> and its video as videos/<name>."""
    made = "prediction" if task == "predict" else "reconstruction"
    tracker.log_images(f"samples/{name}", strip(*shown, task), step, caption=f"context | target | {made}")
    tracker.log_video(f"videos/{name}", strip_video(*shown), step, fps=4)


@torch.no_grad()
def validate(players: Players, runner: StepRunner, val, dist: DistInfo, lpips: LPIPSMetric | None,
             tracker: Tracker, step: int) -> dict[str, float | None]:
    """Metrics of the whole validation set (reduced across ranks), and its first reconstructions as a strip."""
    from wubugen.data import make_loader

    cfg = players.cfg
    if val is None or len(val) == 0:
        return {}
    model = players.model
    loader = make_loader(val, cfg, False, dist.rank, dist.world_size)
    with eval_weights(players):
        model.eval()
        ev = metric_pass(model, loader, cfg, players.device, lpips, prepare=runner.prepare,
                         prepare_flow=runner.prepare_flow, autocast=players.precision.autocast,
                         max_batches=cfg.train.val_max_batches, keep=cfg.log.num_val_samples_to_log)
        model.train()
    result = ev.metrics.compute(all_reduce_sum(ev.metrics.sums(), dist))
    result.update(ev.colour.compute(all_reduce_sum(ev.colour.sums(), dist)))
    if ev.copy_last is not None:
        base = ev.copy_last.compute(all_reduce_sum(ev.copy_last.sums(), dist))
        result.update({f"copy_last_{k}": v for k, v in base.items() if v is not None})
    if ev.shown is not None and dist.is_main:  # keep=num_val_samples_to_log: None when that is 0
        log_strips(tracker, "val_reconstruction_samples", ev.shown, cfg.model.task, step)
    return result


@torch.no_grad()
def sample_clips(players: Players, runner: StepRunner, data, num: int, noise: Tensor | None = None) -> Tensor:
    """uint8 (N, T, C, H, W): prior samples (reconstruct) or predictions of validation contexts (predict)."""
    cfg, model = players.cfg, players.model
    with eval_weights(players), rng_fork(players.device):
        model.eval()
        with players.precision.autocast():
            if cfg.model.task == "predict":
                source = data.val if data.val is not None and len(data.val) else data.train
                clip = runner.prepare(torch.stack([source[i] for i in range(min(num, len(source)))]))
                frames = model.sample(num, context_clip=clip[:, : cfg.data.num_input_frames])
                frames = torch.cat([clip[:, : cfg.data.num_input_frames], frames.float()], 1)
            else:
                gen = torch.Generator().manual_seed(cfg.train.seed + 11)
                prior = None
                if cfg.log.sample_prior == "aggregate" and len(data.train) >= 2:
                    # the same draws every time (fixed noise), through a prior refitted to the current latents
                    prior = fit_latent_prior(encode_dataset(model, data.train, cfg.log.sample_prior_windows,
                                                            players.device, players.precision.autocast,
                                                            cfg.train.seed), rank=PRIOR_RANK)
                z = noise if prior is None and noise is not None else prior_noise(prior, num, model.latent_shape(), gen)
                frames = model.sample(num, noise=z.to(players.device))
        model.train()
    return to_uint8(frames.float()).cpu()


def log_fixed_noise(players: Players, runner: StepRunner, data, fixed_noise: Tensor | None, tracker: Tracker,
                    step: int) -> None:
    n = players.cfg.log.num_val_samples_to_log
    if n <= 0:
        return
    clips = sample_clips(players, runner, data, n, fixed_noise)
    if players.cfg.model.task == "reconstruct":
        prior = players.cfg.log.sample_prior
        groups, caption = [(f"samples (fixed noise, {prior} prior)", clips)], f"prior samples, fixed noise, {prior} prior"
    else:
        t_in = players.cfg.data.num_input_frames
        groups, caption = [("context", clips[:, :t_in]), ("prediction", clips[:, t_in:])], "context | predicted frames"
    tracker.log_images("samples/fixed_noise_generated", labelled_grid(groups), step, caption=caption)
    tracker.log_video("videos/fixed_noise_generated", labelled_video([("samples", clips)]), step, fps=4)


def log_train_recon(players: Players, runner: StepRunner, batch: Tensor, tracker: Tracker, step: int) -> None:
    n = players.cfg.log.num_val_samples_to_log
    model = players.model
    with torch.no_grad(), rng_fork(players.device):
        model.eval()
        clip = runner.prepare(batch[:n])
        with players.precision.autocast():
            out = model(clip, sample_posterior=False)
        model.train()
    shown = (clip[:, :players.cfg.data.num_input_frames], out.target, out.recon)
    log_strips(tracker, "train_recon", shown, players.cfg.model.task, step)


def finish_run(players: Players, runner: StepRunner, data, run_dir: Path, summary: dict[str, Any], step: int) -> None:
    """The end of a run (rank 0): final samples as PNG/GIF/MP4 (prior samples add how far apart they are to `summary`),
    the loss report and summary.json."""
    n = players.cfg.log.demo_num_samples
    if n > 0:
        clips = sample_clips(players, runner, data, n)
        for suffix in (".png", ".gif", ".mp4"):
            save_clips(run_dir / "samples" / f"final_step{step:08d}{suffix}", clips, fps=8)
        if n >= 2 and players.cfg.model.task == "reconstruct":  # prior samples (predictions follow their contexts)
            summary["samples"] = sample_diversity(clips)  # into the caller's summary too (fit() returns it)
    metrics_file = run_dir / "metrics.jsonl"
    if metrics_file.exists():
        plot_losses(metrics_file, run_dir / "report.png")
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")


def train_values(players: Players, state, runner: StepRunner, losses: dict[str, float], gn_g: Tensor, gn_d: Tensor,
                 batches_per_epoch: int) -> dict[str, float | None]:
    """What the trainer logs every --log_interval steps (the guide's keys, DESIGN §5): the interval's mean losses,
    learning rates, lambda_kl, non-finite steps, the controllers' values (one host read, here)."""
    p, s = players, state
    values: dict[str, float | None] = {f"train/{k}": v for k, v in losses.items()}
    values.update({
        "train/lr_gen": p.opt_g.param_groups[0]["lr"], "train/lr_disc": p.opt_d.param_groups[0]["lr"],
        "train/lambda_kl": s.lambda_kl,
        "train/nonfinite_steps": s.nonfinite_total + int(runner.nonfinite_steps.item()),
        "epoch_frac": s.epoch + s.batch_in_epoch / max(1, batches_per_epoch),
    })
    if p.cfg.log.log_grad_norm:
        values["train/grad_norm_gen"] = float(gn_g)
        values["train/grad_norm_disc"] = float(gn_d)
    for name, ctrl in (("q_ctrl_gen", p.q_gen), ("q_ctrl_disc", p.q_disc), ("q_ctrl_lkl", p.q_lkl)):
        if ctrl is not None:
            values.update({f"{name}/{k}": v for k, v in ctrl.info().items()})
    return values


def progress_text(values: dict[str, float | None]) -> str:
    """The progress bar's postfix: the guide's console names (G, D, D_real, D_fake, Adv, Rec, KL) and lambda_kl."""
    v = values
    return (f"G:{v['train/loss_g_total']:.3f} D:{v['train/loss_d_total']:.3f} "
            f"D_real:{v['train/loss_d_real']:.3f} D_fake:{v['train/loss_d_fake']:.3f} Adv:{v['train/loss_g_adv']:.3f} "
            f"Rec:{v['train/loss_recon']:.4f} KL:{v['train/loss_kl']:.3f} LKL:{v['train/lambda_kl']:.1e}")


class LiveReport:
    """The HTML report (track/html_report.py) kept up to date while a run trains, so the page exists before the run
    ends: rewritten at a validation once --report_every_minutes passed since the last write, and at the end of a run
    that wrote one. A phase of `wubugen phases` writes its plan's report (every phase on one page), any other run its
    own. Throttled because the page re-plots every curve: about a second for a plan, which short runs should not pay."""

    def __init__(self, run_dir: Path, minutes: float, is_main: bool):
        self.run_dir = run_dir
        self.every = minutes * 60.0 if is_main else 0.0
        self.last = time.perf_counter()
        self.written = False

    def target(self) -> Path:
        parent = self.run_dir.resolve().parent
        return parent if is_plan_root(parent) else self.run_dir

    def maybe(self, log, final: bool = False) -> Path | None:
        """Write the report when due (or, with `final`, when one was written before). -> its path, or None."""
        due = time.perf_counter() - self.last >= self.every
        if self.every <= 0 or not (self.written if final else due):
            return None
        from wubugen.track.html_report import write_report

        try:
            path = write_report(self.target())
        except Exception as e:  # noqa: BLE001 - a report is never worth a training run
            log(f"note: the HTML report was not written: {type(e).__name__}: {e}")
            return None
        self.last, self.written = time.perf_counter(), True
        return path
