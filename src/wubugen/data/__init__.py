"""Video data: footage of any common kind, decoded once into a cache, cut into windows, split without leakage.

The trainer uses:
    bundle = build_datasets(cfg, rank, world_size)         # bundle.train, bundle.val (or None), bundle.info
    loader = make_loader(bundle.train, cfg, train=True, rank=rank, world_size=world_size, epoch=e, start_batch=k)
    x = to_model_range(batch.to(device, non_blocking=True))  # uint8 (B, T, C, H, W) -> float [-1, 1]
Media code uses write_video / write_gif / to_uint8, and `wubugen sample --context` uses read_clip.
"""
from wubugen.data.dataset import WindowDataset
from wubugen.data.loader import make_loader, to_model_range, to_uint8
from wubugen.data.pipeline import DataBundle, DataInfo, SourceInfo, build_datasets
from wubugen.data.video_io import DecodeError, read_clip, write_gif, write_video

__all__ = [
    "DataBundle",
    "DataInfo",
    "DecodeError",
    "SourceInfo",
    "WindowDataset",
    "build_datasets",
    "make_loader",
    "read_clip",
    "to_model_range",
    "to_uint8",
    "write_gif",
    "write_video",
]
