"""`wubugen sample` and `wubugen evaluate`: use a trained checkpoint."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from wubugen.checkpoint import load_trained
from wubugen.config import Config, HelpFormatter
from wubugen.errors import UserError
from wubugen.eval.metrics import NEAR_DUPLICATE_PSNR, sample_diversity
from wubugen.media import atomic_write_text
from wubugen.models.prior import prior_noise


def _device(name: str) -> torch.device:
    from wubugen.eval.device import resolve_device

    return resolve_device(name)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


SAMPLE_BATCH = 32  # clips generated at a time: what memory holds, whatever --num is
DIVERSITY_MAX_CLIPS = 256  # up to this many prior samples, `wubugen sample` also says how far apart they are


def _sample_batches(args: argparse.Namespace, cfg: Config, model, device: torch.device):
    """uint8 (n, T, C, H, W) clips on the CPU, SAMPLE_BATCH at a time, --num in all (the noise streams run on across
    batches, so --num up to SAMPLE_BATCH gives the clips one batch gave before)."""
    from wubugen.data import read_clip, to_model_range
    from wubugen.media import to_uint8

    g = torch.Generator().manual_seed(args.seed)
    clip = None
    if args.context:
        clip = to_model_range(read_clip(args.context, cfg)[None].to(device))  # the window at the start of the video
        if cfg.model.task == "predict":
            torch.manual_seed(args.seed)
    elif cfg.model.task == "predict":
        raise UserError("this checkpoint was trained for --task predict: give --context VIDEO to predict from")
    t_in = cfg.data.num_input_frames
    prior = getattr(args, "latent_prior", None)  # a fitted aggregate-posterior prior, or None for N(0, I)
    for start in range(0, args.num, SAMPLE_BATCH):
        n = min(SAMPLE_BATCH, args.num - start)
        with torch.no_grad(), _autocast(device):
            if clip is not None:
                batch = clip.expand(n, -1, -1, -1, -1)
                if cfg.model.task == "predict":
                    enc, _ = model.split(batch)
                    mu, logvar, context = model.encode(enc)
                    z = model.reparameterize(mu, logvar, sample=args.num > 1)
                    frames = torch.cat([batch[:, :t_in], model.decode(z, context, batch[:, :t_in]).float()], 1)
                else:  # reconstruct: the window's last frames rebuilt from its posterior mean
                    frames = torch.cat([batch[:, :t_in], model(batch, sample_posterior=False).recon.float()], 1)
            else:  # noise drawn on the CPU from the seeded generator (the same clips on any device)
                frames = model.sample(n, noise=prior_noise(prior, n, model.latent_shape(), g))
        yield to_uint8(frames.float()).cpu()


def _latent_prior(args: argparse.Namespace, cfg: Config, model, device: torch.device, step_dir: Path,
                  prior_samples: bool):
    """--prior: aggregate (fitted on the training footage's latents, eval/prior.py), normal (N(0, I)), or auto
    (aggregate for prior samples of a reconstruct-task model, N(0, I) with a note when its footage is not readable).
    prior_samples: the clips are decoded from prior latents (reconstruct task, no --context)."""
    from wubugen.eval.prior import prior_for

    if args.prior == "normal" or not prior_samples:
        if args.prior == "aggregate":
            raise UserError("--prior aggregate is for prior samples of a reconstruct-task model (no --context)")
        return None
    try:
        return prior_for(cfg, model, device, step_dir, data_path=args.prior_data, windows=args.prior_windows,
                         rank=args.prior_rank, autocast=lambda: _autocast(device),
                         log=lambda m: print(m, file=sys.stderr))
    except UserError as e:
        if args.prior == "aggregate":
            raise
        print(f"note: sampling from N(0, I): {e}", file=sys.stderr)
        return None


def _sample_cmd(args: argparse.Namespace) -> int:
    from wubugen.media import max_clips, save_clips, write_clip_grid_stream

    out = Path(args.out)
    if out.suffix.lower() not in (".mp4", ".gif", ".png"):
        raise UserError(f"--out {out}: choose a .mp4, .gif or .png file")
    if args.num < 1:
        raise UserError("--num must be at least 1")
    if args.prior_windows < 2 or args.prior_rank < 0:
        raise UserError("--prior_windows must be at least 2 and --prior_rank at least 0")
    device = _device(args.device)
    cfg, model, c = load_trained(args.checkpoint, device, prefer=args.which)
    h, w = cfg.data.image_h, cfg.data.image_w
    most = max_clips(out, h, w)
    if args.num > most:
        layout = "stacked in a grid" if out.suffix.lower() == ".png" else "side by side"
        raise UserError(f"--num {args.num}: a {out.suffix.lower()} holds at most {most} clips of {h}x{w} {layout}; "
                        f"lower --num, write several files (--seed), or write a .png grid (up to "
                        f"{max_clips('x.png', h, w)} clips, written in batches)")
    prior_samples = not args.context and cfg.model.task == "reconstruct"
    args.latent_prior = _latent_prior(args, cfg, model, device, Path(c.path), prior_samples)
    shape: list[tuple[int, ...]] = []
    kept: list[torch.Tensor] = []  # for the diversity line: a few dozen clips are held, a big grid is not

    def seen(b: torch.Tensor) -> torch.Tensor:
        shape.append(tuple(b.shape))
        if prior_samples and args.num <= DIVERSITY_MAX_CLIPS:
            kept.append(b)
        return b

    batches = (seen(b) for b in _sample_batches(args, cfg, model, device))
    if out.suffix.lower() == ".png":  # a grid, band by band: memory holds one batch
        write_clip_grid_stream(out, batches, args.num)
    else:  # side by side in every frame: --num is bounded by the format's width, so are the clips held
        save_clips(out, torch.cat(list(batches)), fps=args.fps)
    t_out, (ch, cw) = shape[0][1], shape[0][-2:]
    source = "" if not prior_samples else (", aggregate prior" if args.latent_prior is not None else ", N(0, I) prior")
    print(f"wrote {out} ({args.num} clips of {t_out} frames, {ch}x{cw}{source}) from {c.path}")
    if len(kept) and args.num >= 2:
        d = sample_diversity(torch.cat(kept))
        print(f"closest pair of samples: {d['max_pairwise_psnr']:.2f} dB PSNR; {d['near_duplicate_pairs']} pairs above "
              f"{NEAR_DUPLICATE_PSNR:g} dB (near copies)")
    return 0


def evaluate(cfg: Config, model, data_path: str, device: torch.device, batch_size: int, max_batches: int = 0,
             lpips_weights: str | None = None) -> dict:
    from wubugen.data import build_datasets, make_loader, to_model_range
    from wubugen.eval.loop import metric_pass
    from wubugen.eval.metrics import load_lpips

    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, video_data_path=data_path, validation_video_path=None,
                                                            validation_split_fraction=0.0, augment_flip=False,
                                                            augment_random_crop=False),
                              train=dataclasses.replace(cfg.train, batch_size=batch_size))
    ds = build_datasets(cfg).train
    t0 = time.perf_counter()
    ev = metric_pass(model, make_loader(ds, cfg, False), cfg, device, load_lpips(lpips_weights, device),
                     prepare=lambda b: to_model_range(b.to(device)),
                     prepare_flow=lambda f: None if f is None else f.to(device),
                     autocast=lambda: _autocast(device), max_batches=max_batches)
    result = {"clips": ev.clips, "seconds": round(time.perf_counter() - t0, 2), **ev.metrics.compute()}
    if ev.copy_last is not None:
        result["copy_last_frame"] = {k: v for k, v in ev.copy_last.compute().items() if k != "avg_val_lpips"}
    return result


def _evaluate_cmd(args: argparse.Namespace) -> int:
    device = _device(args.device)
    cfg, model, c = load_trained(args.checkpoint, device, prefer=args.which)
    result = evaluate(cfg, model, args.data, device, args.batch_size, args.max_batches, args.lpips_weights)
    result["checkpoint"] = str(c.path)
    result["data"] = args.data
    rows = [("PSNR (dB)", "avg_val_psnr"), ("SSIM", "avg_val_ssim"), ("LPIPS", "avg_val_lpips"), ("MSE [0,1]", "avg_val_recon_mse")]
    print(f"{'metric':<12} {'model':>10}" + (f" {'copy-last':>10}" if "copy_last_frame" in result else ""))
    for label, key in rows:
        v = result.get(key)
        cell = "unavailable" if v is None else f"{v:.4f}"
        extra = ""
        if "copy_last_frame" in result:
            b = result["copy_last_frame"].get(key)
            extra = f" {'-' if b is None else f'{b:.4f}':>10}"
        print(f"{label:<12} {cell:>10}{extra}")
    print(f"{result['clips']} clips from {args.data}")
    out = atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


SAMPLE_EXAMPLES = """examples:
  wubugen sample --checkpoint runs/quickstart --out samples.gif
  wubugen sample --checkpoint runs/phase1 --which last --num 8 --out grid.png
  wubugen sample --checkpoint runs/phase1 --prior normal --out noise.png   # N(0, I) instead of the fitted prior
  wubugen sample --checkpoint runs/predict --context clip.mp4 --num 4 --out predicted.mp4   # a predict-task model"""

EVALUATE_EXAMPLES = """examples:
  wubugen evaluate --checkpoint runs/phase1 --data footage/val/
  wubugen evaluate --checkpoint runs/phase2a --data footage/val/ --max_batches 50 --out phase2a.json"""

CHECKPOINT_HELP = "a run directory (its best or last checkpoint, see --which), a checkpoint directory or a pointer file"
WHICH_HELP = "in a run directory: the best checkpoint (by its --val_primary_metric) or the last"
DEVICE_HELP = "auto (cuda when available, else cpu), cpu, cuda or cuda:N"


def register(sub) -> None:
    p = sub.add_parser(
        "sample", help="write samples of a trained model as MP4, GIF or a PNG grid", formatter_class=HelpFormatter,
        description="Decode prior samples of a trained model (reconstruct task; drawn from a Gaussian fitted to the "
                    "latents of its training windows unless --prior normal), or, with --context, the frames it makes "
                    "from the first window of a video: the context frames followed by the generated ones.",
        epilog=SAMPLE_EXAMPLES)
    p.add_argument("--checkpoint", required=True, metavar="PATH", help=CHECKPOINT_HELP)
    p.add_argument("--num", type=int, default=4, metavar="N", help="clips to write")
    p.add_argument("--out", required=True, metavar="PATH",
                   help="output file: .mp4 or .gif (the clips side by side, animated) or .png (a grid of frames)")
    p.add_argument("--context", default=None, metavar="PATH",
                   help="a video or frame folder whose first window is the context (needed for the predict task)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the prior samples and posterior noise")
    p.add_argument("--fps", type=int, default=8, metavar="N", help="frames per second of a .mp4 or .gif")
    p.add_argument("--which", choices=("best", "last"), default="best", help=WHICH_HELP)
    p.add_argument("--device", default="auto", metavar="DEVICE", help=DEVICE_HELP)
    p.add_argument("--prior", choices=("auto", "aggregate", "normal"), default="auto",
                   help="where prior samples come from: aggregate, a Gaussian fitted to the latents of the run's "
                        "training windows (stored beside the checkpoint and reused); normal, N(0, I), which a model "
                        "trained at a low KL weight decodes to noise; auto, aggregate when the footage is readable")
    p.add_argument("--prior_data", default=None, metavar="PATH",
                   help="footage to fit the aggregate prior on (default: the run's --video_data_path)")
    p.add_argument("--prior_windows", type=int, default=256, metavar="N", help="windows the aggregate prior is fitted on")
    p.add_argument("--prior_rank", type=int, default=128, metavar="K",
                   help="principal directions of the aggregate prior (the rest keeps only its per-value variance)")
    p.set_defaults(func=_sample_cmd)

    e = sub.add_parser(
        "evaluate", help="PSNR/SSIM/LPIPS of a trained model on footage; prints a table, writes JSON",
        formatter_class=HelpFormatter, epilog=EVALUATE_EXAMPLES,
        description="Reconstruct every window of the footage with a trained model (its own frame size, window and "
                    "task) and report PSNR, SSIM, LPIPS and MSE; for the predict task also the baseline of repeating "
                    "the last context frame.")
    e.add_argument("--checkpoint", required=True, metavar="PATH", help=CHECKPOINT_HELP)
    e.add_argument("--data", required=True, metavar="PATH",
                   help="the footage: a video file, a folder (searched recursively), a frame folder or a list file")
    e.add_argument("--out", default="evaluation.json", metavar="PATH", help="the JSON report")
    e.add_argument("--batch_size", type=int, default=8, metavar="N", help="clips per batch")
    e.add_argument("--max_batches", type=int, default=0, metavar="N", help="batches to evaluate (0: all)")
    e.add_argument("--lpips_weights", default=None, metavar="PATH",
                   help="AlexNet weights for LPIPS (default: the torch hub cache; without them LPIPS is unavailable)")
    e.add_argument("--which", choices=("best", "last"), default="best", help=WHICH_HELP)
    e.add_argument("--device", default="auto", metavar="DEVICE", help=DEVICE_HELP)
    e.set_defaults(func=_evaluate_cmd)
