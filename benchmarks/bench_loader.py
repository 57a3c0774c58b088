"""Loader throughput from the frame cache: clips per second at 64x64 and 256x256 with 13-frame windows.

    python benchmarks/bench_loader.py                      # real footage in ../shared/data (else the demo footage)
    python benchmarks/bench_loader.py --sizes 64 256 --batch 4 --workers 4 --seconds 20 --step_clips_per_s 40

For each size it builds (or reuses) the cache, then iterates training loaders (shuffled, a new loader per epoch as the
trainer does) for --seconds and reports clips/s and MB/s. On a CUDA machine each batch is also copied to the GPU and
normalised there (pinned memory, non_blocking), which is the whole path the trainer sees. With --step_clips_per_s (what
one training step consumes: batch size x steps per second at the launcher configuration) it prints the ratio; the
loader should feed at least 10x that.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from wubugen.config import build_config
from wubugen.data import build_datasets, make_loader, to_model_range

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "videos" / "train"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA) if DEFAULT_DATA.is_dir() else None,
                   help="footage (default: ../shared/data/videos/train if present, else the synthetic demo)")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="square frame sizes")
    p.add_argument("--input_frames", type=int, default=10)
    p.add_argument("--predict_frames", type=int, default=3)
    p.add_argument("--batch", type=int, default=4, help="per-rank batch (launcher: 4)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, min(4, os.cpu_count() or 1)],
                   help="DataLoader worker counts to try (0: load in the main process)")
    p.add_argument("--seconds", type=float, default=10.0, help="measuring time per size")
    p.add_argument("--augment", action="store_true", help="with flips and random crops")
    p.add_argument("--cache_dir", default=None, help="reuse a cache here (default: a temporary folder)")
    p.add_argument("--step_clips_per_s", type=float, default=None,
                   help="clips/s one training step consumes at the launcher configuration, for the ratio")
    return p.parse_args(argv)


def measure(args: argparse.Namespace, size: int, workers: int, cache_dir: str) -> dict[str, float]:
    overrides = {
        "video_data_path": args.data, "cache_dir": cache_dir, "image_h": size, "image_w": size,
        "num_input_frames": args.input_frames, "num_predict_frames": args.predict_frames, "batch_size": args.batch,
        "num_workers": workers, "validation_split_fraction": 0, "augment_flip": args.augment,
        "augment_random_crop": args.augment, "demo_num_clips": 16, "demo_clip_frames": 120,
    }
    cfg = build_config(overrides={k: v for k, v in overrides.items() if v is not None})
    t0 = time.perf_counter()
    bundle = build_datasets(cfg)
    build_s = time.perf_counter() - t0
    ds = bundle.train
    device = torch.device("cuda") if torch.cuda.is_available() else None
    clip_bytes = cfg.window_frames * cfg.data.num_channels * size * size

    clips, epoch, warm = 0, 0, 3
    start = None
    while True:
        loader = make_loader(ds, cfg, train=True, epoch=epoch)
        for batch in loader:
            if device is not None:
                x = to_model_range(batch.frames.to(device, non_blocking=True))
                x.sum().item()  # wait for the copy and the kernel: count only delivered batches
            if warm:
                warm -= 1
                if warm == 0:
                    start = time.perf_counter()
                continue
            clips += batch.frames.shape[0]
            if time.perf_counter() - start >= args.seconds:
                elapsed = time.perf_counter() - start
                return {"size": size, "workers": workers, "windows": len(ds), "build_s": build_s,
                        "decoded": bundle.info.cache_built,
                        "clips_per_s": clips / elapsed, "mb_per_s": clips * clip_bytes / elapsed / 1e6}
        epoch += 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    frames = args.input_frames + args.predict_frames
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu only (no copy to a GPU)"
    print(f"loader benchmark: {args.data or 'synthetic demo footage'}")
    print(f"  {frames}-frame windows, batch {args.batch}, {os.cpu_count()} CPUs, {device}, "
          f"augment {'on' if args.augment else 'off'}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory(prefix="wubugen_bench_") as tmp:
        cache_dir = args.cache_dir or tmp
        rows = [measure(args, size, w, cache_dir) for size in args.sizes for w in args.workers]
    header = f"{'size':>9} {'workers':>7} {'windows':>8} {'cache build s':>14} {'clips/s':>9} {'MB/s':>8}"
    if args.step_clips_per_s:
        header += f" {'step clips/s':>13} {'ratio':>7}"
    print(header)
    for r in rows:
        line = (f"{r['size']:>4}x{r['size']:<4} {r['workers']:>7} {r['windows']:>8} {r['build_s']:>9.1f} "
                f"({r['decoded']:>2.0f}) "
                f"{r['clips_per_s']:>9.1f} {r['mb_per_s']:>8.1f}")
        if args.step_clips_per_s:
            line += f" {args.step_clips_per_s:>13.1f} {r['clips_per_s'] / args.step_clips_per_s:>6.1f}x"
        print(line)
    print("  (cache build: seconds to decode into the cache, files decoded in brackets; 0 = reused)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
