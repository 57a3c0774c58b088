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
from wubugen.config import Config
from wubugen.errors import UserError
from wubugen.media import atomic_write_text


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _sample_cmd(args: argparse.Namespace) -> int:
    from wubugen.data import read_clip, to_model_range
    from wubugen.media import save_clips, to_uint8

    out = Path(args.out)
    if out.suffix.lower() not in (".mp4", ".gif", ".png"):
        raise UserError(f"--out {out}: choose a .mp4, .gif or .png file")
    if args.num < 1:
        raise UserError("--num must be at least 1")
    device = _device(args.device)
    cfg, model, c = load_trained(args.checkpoint, device, prefer=args.which)
    g = torch.Generator().manual_seed(args.seed)
    with torch.no_grad(), _autocast(device):
        if args.context:
            clip = read_clip(args.context, cfg)  # uint8 (T, C, H, W), the window at the start of the video
            clip = to_model_range(clip[None].to(device)).expand(args.num, -1, -1, -1, -1)
            if cfg.model.task == "predict":
                torch.manual_seed(args.seed)
                enc, _ = model.split(clip)
                mu, logvar, context = model.encode(enc)
                z = model.reparameterize(mu, logvar, sample=args.num > 1)
                frames = torch.cat([clip[:, : cfg.data.num_input_frames], model.decode(z, context).float()], 1)
            else:  # reconstruct: the window's last frames rebuilt from its posterior mean
                frames = torch.cat([clip[:, : cfg.data.num_input_frames], model(clip, sample_posterior=False).recon.float()], 1)
        else:
            if cfg.model.task == "predict":
                raise UserError("this checkpoint was trained for --task predict: give --context VIDEO to predict from")
            frames = model.sample(args.num, generator=g)
    clips = to_uint8(frames.float()).cpu()
    save_clips(out, clips, fps=args.fps)
    print(f"wrote {out} ({clips.shape[0]} clips of {clips.shape[1]} frames, {clips.shape[-2]}x{clips.shape[-1]}) "
          f"from {c.path}")
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


def register(sub) -> None:
    p = sub.add_parser("sample", help="write samples of a trained model as MP4, GIF or a PNG grid")
    p.add_argument("--checkpoint", required=True, help="checkpoint dir, run dir (its best) or pointer file")
    p.add_argument("--num", type=int, default=4)
    p.add_argument("--out", required=True, help="output file: .mp4, .gif or .png")
    p.add_argument("--context", default=None, help="a video (or frame folder) whose first window is the context")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--which", choices=("best", "last"), default="best", help="in a run dir: the best or the last")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_sample_cmd)

    e = sub.add_parser("evaluate", help="PSNR/SSIM/LPIPS of a trained model on footage; prints a table, writes JSON")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", required=True, help="video file, folder, frame folder or list file")
    e.add_argument("--out", default="evaluation.json")
    e.add_argument("--batch_size", type=int, default=8)
    e.add_argument("--max_batches", type=int, default=0)
    e.add_argument("--lpips_weights", default=None, help="AlexNet backbone weights for LPIPS (else the torch hub cache)")
    e.add_argument("--which", choices=("best", "last"), default="best")
    e.add_argument("--device", default="auto")
    e.set_defaults(func=_evaluate_cmd)
