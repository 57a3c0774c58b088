"""What a run shows people: validation passes, image strips and fixed-noise samples during training, and the end of a
run's samples, loss report and summary. None of it moves the training RNG streams (exact resume depends on that)."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from wubugen.config import config_toml
from wubugen.eval.loop import metric_pass
from wubugen.eval.metrics import LPIPSMetric
from wubugen.media import atomic_write_text, clip_grid, save_clips, to_uint8
from wubugen.track.base import Tracker
from wubugen.track.report import plot_losses
from wubugen.train.distributed import DistInfo, all_reduce_sum
from wubugen.train.players import Players
from wubugen.train.step import StepRunner


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


def eval_weights(players: Players):
    """The weights validation and sampling use: the EMA's when it is on."""
    return players.ema.swapped_into(players.model) if players.ema is not None else contextlib.nullcontext()


def rng_fork(device: torch.device):
    """Validation, samples and logging must not move the training RNG streams."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def pairs_grid(target: Tensor, recon: Tensor) -> np.ndarray:
    """A PNG-ready grid whose rows alternate ground truth and reconstruction. (N, T, C, H, W) each in [-1, 1]."""
    pairs = torch.stack([target.float(), recon.float()], 1).flatten(0, 1)
    return clip_grid(to_uint8(pairs).cpu())


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
    if ev.copy_last is not None:
        base = ev.copy_last.compute(all_reduce_sum(ev.copy_last.sums(), dist))
        result.update({f"copy_last_{k}": v for k, v in base.items() if v is not None})
    if ev.shown is not None and dist.is_main:  # keep=num_val_samples_to_log: None when that is 0
        tracker.log_images("samples/val_reconstruction_samples", pairs_grid(*ev.shown), step,
                           caption="rows: ground truth, reconstruction (from mu)")
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
                z = noise if noise is not None else torch.randn((num, *model.latent_shape()), generator=gen)
                frames = model.sample(num, noise=z.to(players.device))
        model.train()
    return to_uint8(frames.float()).cpu()


def log_fixed_noise(players: Players, runner: StepRunner, data, fixed_noise: Tensor | None, tracker: Tracker,
                    step: int) -> None:
    n = players.cfg.log.num_val_samples_to_log
    if n <= 0:
        return
    clips = sample_clips(players, runner, data, n, fixed_noise)
    caption = "prior samples, fixed noise" if players.cfg.model.task == "reconstruct" else "context + predicted frames"
    tracker.log_images("samples/fixed_noise_generated", clip_grid(clips), step, caption=caption)


def log_train_recon(players: Players, runner: StepRunner, batch: Tensor, tracker: Tracker, step: int) -> None:
    n = players.cfg.log.num_val_samples_to_log
    model = players.model
    with torch.no_grad(), rng_fork(players.device):
        model.eval()
        clip = runner.prepare(batch[:n])
        with players.precision.autocast():
            out = model(clip, sample_posterior=False)
        model.train()
    tracker.log_images("samples/train_recon", pairs_grid(out.target, out.recon), step,
                       caption="rows: ground truth, reconstruction")


def finish_run(players: Players, runner: StepRunner, data, run_dir: Path, summary: dict[str, Any], step: int) -> None:
    """The end of a run (rank 0): final samples as PNG/GIF/MP4, the loss report and summary.json."""
    n = players.cfg.log.demo_num_samples
    if n > 0:
        clips = sample_clips(players, runner, data, n)
        for suffix in (".png", ".gif", ".mp4"):
            save_clips(run_dir / "samples" / f"final_step{step:08d}{suffix}", clips, fps=8)
    metrics_file = run_dir / "metrics.jsonl"
    if metrics_file.exists():
        plot_losses(metrics_file, run_dir / "report.png")
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
