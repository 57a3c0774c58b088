"""Sample media: clip grids (PNG), GIF and MP4, written atomically.

Every array here is uint8. Clips are (N, T, C, H, W) as the model produces them (after `to_uint8`); frames for GIF/MP4
are (T, H, W, C) as image libraries want them. C is 1 (grey, repeated to RGB on output) or 3.
An output file is written under a temporary name in the same directory and renamed into place, so a crash never
leaves a half-written PNG/GIF/MP4 under the final name.
"""
from __future__ import annotations

import contextlib
import io
import os
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from wubugen.errors import UserError

SEPARATOR_PX = 2
SEPARATOR_VALUE = 255  # white lines between clips and frames
CLIP_SUFFIXES = (".png", ".gif", ".mp4")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix); on success fsync it and rename it to `path`.

    On an exception the temporary file is removed and the exception propagates.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{final.suffix}")
    try:
        yield tmp
        with open(tmp, "r+b") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def to_uint8(x: Tensor) -> Tensor:
    """Model output in [-1, 1] (any shape) -> uint8 in [0, 255] on the CPU, rounded."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def _as_numpy_u8(x: Tensor | np.ndarray, ndim: int, what: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if a.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 (use to_uint8 for [-1, 1] tensors), got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{what} must have {ndim} dimensions, got shape {a.shape}")
    return a


def _rgb_last(a: np.ndarray) -> np.ndarray:
    """(..., H, W, C) with C in {1, 3} -> (..., H, W, 3)."""
    if a.shape[-1] == 3:
        return a
    if a.shape[-1] == 1:
        return np.repeat(a, 3, axis=-1)
    raise ValueError(f"frames need 1 or 3 channels, got {a.shape[-1]}")


def _join(parts: list[np.ndarray], axis: int) -> np.ndarray:
    """Concatenate along `axis` with SEPARATOR_PX-wide separator lines between the parts."""
    sep_shape = list(parts[0].shape)
    sep_shape[axis] = SEPARATOR_PX
    sep = np.full(sep_shape, SEPARATOR_VALUE, dtype=np.uint8)
    out: list[np.ndarray] = []
    for i, p in enumerate(parts):
        if i:
            out.append(sep)
        out.append(p)
    return np.concatenate(out, axis=axis)


def clip_grid(clips: Tensor | np.ndarray) -> np.ndarray:
    """(N, T, C, H, W) uint8 -> (N*H + (N-1)*2, T*W + (T-1)*2, 3) uint8: one row per clip, one column per frame."""
    a = _rgb_last(_as_numpy_u8(clips, 5, "clips").transpose(0, 1, 3, 4, 2))  # (N, T, H, W, 3)
    rows = [_join(list(clip), axis=1) for clip in a]
    return _join(rows, axis=0)


def tile_clips(clips: Tensor | np.ndarray) -> np.ndarray:
    """(N, T, C, H, W) uint8 -> (T, H, N*W + (N-1)*2, 3) uint8: the N clips side by side in every frame."""
    a = _rgb_last(_as_numpy_u8(clips, 5, "clips").transpose(0, 1, 3, 4, 2))  # (N, T, H, W, 3)
    return _join(list(a), axis=2)


def save_png(path: str | os.PathLike[str], img: Tensor | np.ndarray) -> Path:
    """img: (H, W, C) uint8, C in {1, 3}."""
    a = _rgb_last(_as_numpy_u8(img, 3, "image"))
    with atomic_output(path) as tmp:
        Image.fromarray(a).save(tmp, format="PNG")
    return Path(path)


def gif_bytes(frames: Tensor | np.ndarray, fps: int = 8) -> bytes:
    """frames: (T, H, W, C) uint8 -> an animated GIF that loops forever."""
    a = _rgb_last(_as_numpy_u8(frames, 4, "frames"))
    if len(a) == 0:
        raise ValueError("a GIF needs at least one frame")
    images = [Image.fromarray(f) for f in a]
    buf = io.BytesIO()
    images[0].save(
        buf, format="GIF", save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0,
        disposal=1, optimize=False,
    )
    return buf.getvalue()


def save_gif(path: str | os.PathLike[str], frames: Tensor | np.ndarray, fps: int = 8) -> Path:
    """frames: (T, H, W, C) uint8. Loops forever."""
    data = gif_bytes(frames, fps)
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def _mp4_codec(av) -> str:
    # PyAV wheels ship libx264; a build without it still has FFmpeg's own mpeg4 encoder.
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def save_mp4(path: str | os.PathLike[str], frames: Tensor | np.ndarray, fps: int = 8) -> Path:
    """frames: (T, H, W, C) uint8. H.264 yuv420p (mpeg4 if libx264 is missing); odd sizes padded to even by edge repeat."""
    a = _rgb_last(_as_numpy_u8(frames, 4, "frames"))
    if len(a) == 0:
        raise ValueError("an MP4 needs at least one frame")
    t, h, w, _ = a.shape
    # yuv420p subsamples chroma by 2 in both directions, so the encoders need even sizes
    a = np.pad(a, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    import av  # here, not at the top: metrics, plots, PNGs and GIFs work where PyAV is not installed (a bare GPU image)

    codec = _mp4_codec(av)
    with atomic_output(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=int(fps))
            stream.width, stream.height = a.shape[2], a.shape[1]
            stream.pix_fmt = "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": "17", "preset": "medium"}  # samples are small; keep them sharp
            else:
                stream.bit_rate = 4_000_000
            for f in a:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
            container.mux(stream.encode(None))  # flush the encoder
    return Path(path)


def save_clips(path: str | os.PathLike[str], clips: Tensor | np.ndarray, fps: int = 8) -> Path:
    """clips: (N, T, C, H, W) uint8. `.png`: a clip grid; `.gif` / `.mp4`: the clips side by side, animated."""
    suffix = Path(path).suffix.lower()
    if suffix == ".png":
        return save_png(path, clip_grid(clips))
    if suffix == ".gif":
        return save_gif(path, tile_clips(clips), fps)
    if suffix == ".mp4":
        return save_mp4(path, tile_clips(clips), fps)
    raise UserError(f"cannot write clips to {path}: use a {', '.join(CLIP_SUFFIXES)} file name")
