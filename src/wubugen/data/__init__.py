"""Video data: footage of any common kind, decoded once into a cache, cut into windows, split without leakage.

The trainer uses:
    bundle = build_datasets(cfg, rank, world_size)         # bundle.train, bundle.val (or None), bundle.info
    loader = make_loader(bundle.train, cfg, train=True, rank=rank, world_size=world_size, epoch=e, start_batch=k)
    x = to_model_range(batch.frames.to(device, non_blocking=True))  # ClipBatch: uint8 (B, T, C, H, W) -> [-1, 1]
Media code uses write_video / write_gif / to_uint8 (defined in `wubugen.media`, re-exported here so old imports keep
working), and `wubugen sample --context` uses read_clip.

Names are imported on first use, so the model and training step (which need only `to_model_range`) import without the
video decoders (PyAV, OpenCV), e.g. on a GPU machine that trains from tensors.
"""
from importlib import import_module

_EXPORTS = {
    "WindowDataset": "wubugen.data.dataset",
    "make_loader": "wubugen.data.loader",
    "to_model_range": "wubugen.data.loader",
    "DataBundle": "wubugen.data.pipeline",
    "DataInfo": "wubugen.data.pipeline",
    "SourceInfo": "wubugen.data.pipeline",
    "build_datasets": "wubugen.data.pipeline",
    "DecodeError": "wubugen.data.video_io",
    "read_clip": "wubugen.data.sources",
    "to_uint8": "wubugen.media",
    "write_gif": "wubugen.media",
    "write_video": "wubugen.media",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'wubugen.data' has no attribute {name!r}")
