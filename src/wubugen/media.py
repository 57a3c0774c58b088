"""Media output, in one place: atomic file writes, float -> uint8 conversion, and every encoder (MP4 and other video
containers through PyAV, GIF through Pillow, PNG images and clip grids).

A bottom layer: it imports NumPy, Pillow, torch and (inside the video encoder only) PyAV, and of wubugen only
`wubugen.errors`, so the data pipeline, the trackers, the trainer, the evaluation commands and the caches all use it.
PyAV is imported where a video is encoded because metrics, plots, PNGs and GIFs must work where it is not installed
(a bare GPU image). Decoding stays in `wubugen.data.video_io`.

Atomic writes: an output is written under a hidden temporary name beside it (`.<stem>.tmp-<pid>-<hex><suffix>`, same
suffix, so encoders that pick a format from the name still do), fsynced, renamed into place with `os.replace`, and the
directory is fsynced so the rename survives a power cut. A crash or an exception never leaves a half-written file under
the final name; an exception removes the temporary file.

Arrays: clips are (N, T, C, H, W) uint8 as the model produces them (after `to_uint8`); frames for GIF and video are
(T, H, W, C) uint8 as image libraries want them; C is 1 (grey) or 3.
"""
from __future__ import annotations

import contextlib
import io
import os
import uuid
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from wubugen.errors import UserError

SEPARATOR_PX = 2
SEPARATOR_VALUE = 255  # white lines between clips and frames
CLIP_SUFFIXES = (".png", ".gif", ".mp4")
VIDEO_MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi", ".webm": "webm"}


# --------------------------------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------------------------------
def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a written file's data to the disk."""
    with open(path, "r+b") as f:  # writable: Windows refuses to fsync a read-only handle
        os.fsync(f.fileno())


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename or a new entry in directory `path` durable (POSIX only; Windows has no directory handles)."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix) to write; when the block succeeds, fsync it, move it onto
    `path` and fsync the directory. On an exception the temporary file is removed and the exception propagates.

    The parent directory is created if needed. The block must close what it opened on the temporary path.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{final.suffix}")
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except OSError as e:  # a full disk, a read-only folder: the error names the file meant (writes through handles don't)
        if e.filename is None and e.errno is not None:  # (an errno-less OSError keeps its message)
            e.filename = str(final)
        raise
    finally:
        tmp.unlink(missing_ok=True)  # only still there if the block failed


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` atomically (see `atomic_output`)."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (see `atomic_output`)."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


# --------------------------------------------------------------------------------------------------------------------
# uint8 conversion and checks
# --------------------------------------------------------------------------------------------------------------------
class NotUint8Error(TypeError, ValueError):
    """An array for a media file that is not uint8 (both a TypeError and a ValueError, as callers caught either)."""


def to_uint8(x: Tensor) -> Tensor:
    """float in [-1, 1] (clamped) -> uint8 [0, 255], rounded, on x's device: the inverse of `to_model_range`."""
    return ((x.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def _numpy(x: Tensor | np.ndarray, what: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if a.dtype != np.uint8:
        raise NotUint8Error(f"{what} must be uint8 (use to_uint8 for [-1, 1] tensors), got {a.dtype}")
    return a


def _as_uint8_array(x: Tensor | np.ndarray, ndim: int, what: str) -> np.ndarray:
    """A uint8 NumPy array of `ndim` dimensions (a tensor is copied to the CPU); other input is an error."""
    a = _numpy(x, what)
    if a.ndim != ndim:
        raise ValueError(f"{what} must have {ndim} dimensions, got shape {a.shape}")
    return a


def _as_thwc_uint8(frames: Tensor | np.ndarray) -> np.ndarray:
    """Frames to encode: uint8 (T, H, W, C), C in {1, 3}, at least one frame."""
    a = _numpy(frames, "frames")
    if a.ndim != 4 or a.shape[-1] not in (1, 3):
        raise ValueError(f"frames must be (T, H, W, C) with C in 1, 3; got shape {tuple(a.shape)}")
    if len(a) == 0:
        raise ValueError("no frames to write")
    return a


def _rgb_last(a: np.ndarray) -> np.ndarray:
    """(..., H, W, C) with C in {1, 3} -> (..., H, W, 3)."""
    if a.shape[-1] == 3:
        return a
    if a.shape[-1] == 1:
        return np.repeat(a, 3, axis=-1)
    raise ValueError(f"frames need 1 or 3 channels, got {a.shape[-1]}")


# --------------------------------------------------------------------------------------------------------------------
# Clip layouts
# --------------------------------------------------------------------------------------------------------------------
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
    a = _rgb_last(_as_uint8_array(clips, 5, "clips").transpose(0, 1, 3, 4, 2))  # (N, T, H, W, 3)
    rows = [_join(list(clip), axis=1) for clip in a]
    return _join(rows, axis=0)


MIN_FRAME_PX = 128  # labelled strips scale frames up (nearest) until they are at least this big
GROUP_GAP_PX = 10
LABEL_PX = 22
LABEL_BG, LABEL_FG, GAP_VALUE = 255, 30, 200


def upscale_factor(h: int, w: int, min_px: int = MIN_FRAME_PX) -> int:
    """The integer factor that makes an h x w frame at least `min_px` on its short side (1 for big frames)."""
    return max(1, -(-min_px // max(1, min(h, w))))


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:  # pragma: no cover - older Pillow: the small bitmap font
        return ImageFont.load_default()


def labelled_grid(groups: list[tuple[str, Tensor | np.ndarray]], scale: int | None = None) -> np.ndarray:
    """Clips in labelled column groups, one row per clip: groups = [(label, (N, T_i, C, H, W) uint8), ...] with the
    same N, C, H, W (e.g. context | target | reconstruction). A group's frames sit side by side under its label,
    groups apart by a wider grey gap; frames are scaled up by `scale` (nearest neighbour; default: until a frame is at
    least MIN_FRAME_PX on its short side), so 32 or 64 px clips can be seen. -> (H', W', 3) uint8."""
    from PIL import Image, ImageDraw

    arrays = [_rgb_last(_as_uint8_array(c, 5, f"clips of {label!r}").transpose(0, 1, 3, 4, 2)) for label, c in groups]
    if not arrays:
        raise ValueError("no clips to lay out")
    n, _, h, w, _ = arrays[0].shape
    if any(a.shape[0] != n or a.shape[2:] != (h, w, 3) for a in arrays):
        raise ValueError("every group needs the same number of clips and frame size")
    k = scale or upscale_factor(h, w)
    font = _font(LABEL_PX - 8)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    blocks = []
    for (label, _), a in zip(groups, arrays):
        a = a.repeat(k, axis=2).repeat(k, axis=3)  # (N, T, kH, kW, 3)
        block = _join([_join(list(clip), axis=1) for clip in a], axis=0)
        left, _, right, _ = measure.textbbox((0, 0), label, font=font)
        extra = max(0, right - left + 8 - block.shape[1])  # a label wider than its frames: pad them on both sides
        if extra:
            block = np.pad(block, ((0, 0), (extra // 2, extra - extra // 2), (0, 0)), constant_values=LABEL_BG)
        blocks.append(block)
    gap = np.full((blocks[0].shape[0], GROUP_GAP_PX, 3), GAP_VALUE, np.uint8)
    body = np.concatenate([x for i, b in enumerate(blocks) for x in ((gap, b) if i else (b,))], axis=1)
    header = Image.new("RGB", (body.shape[1], LABEL_PX), (LABEL_BG,) * 3)
    draw = ImageDraw.Draw(header)
    x = 0
    for (label, _), b in zip(groups, blocks):
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        draw.text((x + max(0, (b.shape[1] - (right - left)) // 2), (LABEL_PX - (bottom - top)) // 2 - top), label,
                  fill=(LABEL_FG,) * 3, font=font)
        x += b.shape[1] + GROUP_GAP_PX
    return np.concatenate([np.asarray(header), body], axis=0)


def labelled_video(groups: list[tuple[str, Tensor | np.ndarray]], scale: int | None = None) -> np.ndarray:
    """`labelled_grid` frame by frame: every group (N, T, C, H, W) with the same T -> (T, H', W', 3) uint8 frames."""
    lengths = {np.asarray(c).shape[1] if not isinstance(c, Tensor) else c.shape[1] for _, c in groups}
    if len(lengths) != 1:
        raise ValueError(f"every group of a video needs the same number of frames, got {sorted(lengths)}")
    (t,) = lengths
    return np.stack([labelled_grid([(label, c[:, i:i + 1]) for label, c in groups], scale) for i in range(t)])


def tile_clips(clips: Tensor | np.ndarray) -> np.ndarray:
    """(N, T, C, H, W) uint8 -> (T, H, N*W + (N-1)*2, 3) uint8: the N clips side by side in every frame."""
    a = _rgb_last(_as_uint8_array(clips, 5, "clips").transpose(0, 1, 3, 4, 2))  # (N, T, H, W, 3)
    return _join(list(a), axis=2)


# --------------------------------------------------------------------------------------------------------------------
# PNG
# --------------------------------------------------------------------------------------------------------------------
def save_png(path: str | os.PathLike[str], img: Tensor | np.ndarray) -> Path:
    """img: (H, W, C) uint8, C in {1, 3}; written as RGB, atomically."""
    a = _rgb_last(_as_uint8_array(img, 3, "image"))
    with atomic_output(path) as tmp:
        Image.fromarray(a).save(tmp, format="PNG")
    return Path(path)


# --------------------------------------------------------------------------------------------------------------------
# GIF (Pillow)
# --------------------------------------------------------------------------------------------------------------------
def _encode_gif(fp: Any, frames: np.ndarray, duration_ms: int, **options: Any) -> None:
    """The GIF encoder: (T, H, W, C) uint8 frames (C = 1: greyscale images, 3: RGB) into `fp`, looping forever."""
    images = [Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f) for f in frames]
    images[0].save(fp, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0, **options)


def write_gif(path: str | os.PathLike[str], frames: Tensor | np.ndarray, fps: float) -> Path:
    """Write (T, H, W, C) uint8 frames (C = 1 stays greyscale) as a looping GIF through Pillow, atomically."""
    arr = _as_thwc_uint8(frames)
    with atomic_output(path) as tmp:
        _encode_gif(tmp, arr, round(1000 / fps))
    return Path(path)


def gif_bytes(frames: Tensor | np.ndarray, fps: int = 8) -> bytes:
    """Sample frames: (T, H, W, C) uint8 -> an RGB animated GIF that loops forever, every frame kept whole."""
    a = _rgb_last(_as_thwc_uint8(frames))
    buf = io.BytesIO()
    _encode_gif(buf, a, max(1, round(1000 / fps)), disposal=1, optimize=False)
    return buf.getvalue()


def save_gif(path: str | os.PathLike[str], frames: Tensor | np.ndarray, fps: int = 8) -> Path:
    """Sample frames: (T, H, W, C) uint8 -> `gif_bytes` written to `path`, atomically."""
    return atomic_write_bytes(path, gif_bytes(frames, fps))


# --------------------------------------------------------------------------------------------------------------------
# Video (PyAV)
# --------------------------------------------------------------------------------------------------------------------
def _muxer_for(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in VIDEO_MUXERS:
        raise UserError(f"{path}: cannot write video with suffix {suffix!r} (use .mp4, .mkv, .mov, .avi or .gif)")
    return VIDEO_MUXERS[suffix]


def _encode_video(path: Path, frames: np.ndarray, rate: int | Fraction, *, muxer: str, crf: int, pix_fmt: str,
                  bit_rate: int) -> Path:
    """The video encoder: (T, H, W, 3) uint8 frames to `path` in container `muxer`, atomically.

    H.264 through libx264 at `crf`, or FFmpeg's own MPEG-4 Part 2 encoder at `bit_rate` when this FFmpeg build lacks
    libx264 (PyAV wheels ship it). yuv420p (what players accept) subsamples chroma by 2 in both directions, so an odd
    last row or column is repeated; pix_fmt="yuv444p" keeps odd sizes and full colour resolution (libx264 only).
    """
    import av  # here, not at the top: see the module docstring

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    if pix_fmt == "yuv420p" or codec != "libx264":
        pix_fmt = "yuv420p"
        ph, pw = frames.shape[1] % 2, frames.shape[2] % 2
        if ph or pw:
            frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    with atomic_output(path) as tmp, av.open(os.fspath(tmp), mode="w", format=muxer) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": "medium"}
        else:
            stream.bit_rate = bit_rate
        for img in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")))
        out.mux(stream.encode())  # flush the encoder
    return path


def write_video(
    path: str | os.PathLike[str],
    frames: np.ndarray | Tensor,
    fps: float,
    *,
    crf: int = 18,
    pix_fmt: str = "yuv420p",
) -> Path:
    """Write (T, H, W, C) uint8 frames (C = 1 or 3) to a video file, atomically.

    `.gif` goes through Pillow (`write_gif`). Other suffixes (.mp4, .m4v, .mkv, .mov, .avi, .webm) get H.264 through
    libx264 with `crf`, or MPEG-4 Part 2 when this FFmpeg build lacks libx264. yuv420p (what players accept) needs even
    sizes, so an odd last row or column is repeated; pass pix_fmt="yuv444p" to keep odd sizes and full colour resolution
    (libx264 only). `fps` may be fractional (12.5, 30000/1001).
    """
    arr = _as_thwc_uint8(frames)
    path = Path(path)
    if path.suffix.lower() == ".gif":
        return write_gif(path, arr, fps)
    muxer = _muxer_for(path)
    return _encode_video(path, _rgb_last(arr), Fraction(fps).limit_denominator(1001), muxer=muxer, crf=crf,
                         pix_fmt=pix_fmt, bit_rate=8_000_000)


def save_mp4(path: str | os.PathLike[str], frames: Tensor | np.ndarray, fps: int = 8) -> Path:
    """Sample frames: (T, H, W, C) uint8 -> an MP4 (H.264 yuv420p at crf 17, or mpeg4 if libx264 is missing; odd sizes
    padded to even by edge repeat), atomically."""
    a = _rgb_last(_as_thwc_uint8(frames))
    return _encode_video(Path(path), a, int(fps), muxer="mp4", crf=17, pix_fmt="yuv420p",  # samples are small: sharp
                         bit_rate=4_000_000)


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


# --------------------------------------------------------------------------------------------------------------------
# Many clips: what each format holds, and a PNG grid written band by band (bounded memory for any number of clips)
# --------------------------------------------------------------------------------------------------------------------
GIF_MAX_SIDE = 65535  # 16-bit logical screen size
PNG_MAX_SIDE = 2**31 - 1


def max_clips(path: str | os.PathLike[str], clip_h: int, clip_w: int) -> int:
    """How many clips of clip_h x clip_w px `save_clips` / `write_clip_grid_stream` can put into the file format of
    `path`: a PNG grid stacks them (one per row), a GIF or MP4 puts them side by side in every frame."""
    suffix = Path(path).suffix.lower()
    if suffix == ".png":
        side, size = PNG_MAX_SIDE, clip_h
    elif suffix == ".gif":
        side, size = GIF_MAX_SIDE, clip_w
    else:
        import av  # as in _encode_video

        side = 16384 if "libx264" in av.codecs_available else 8190  # libx264's limit; MPEG-4 part 2 has 13 bits
        size = clip_w + clip_w % 2
    return max(0, (side + SEPARATOR_PX) // (size + SEPARATOR_PX))


class _PngBands:
    """An 8-bit RGB PNG of a known size written in bands of rows (filter 0, zlib-streamed IDAT chunks)."""

    def __init__(self, f: Any, width: int, height: int):
        import struct
        import zlib

        if not (0 < width <= PNG_MAX_SIDE and 0 < height <= PNG_MAX_SIDE):
            raise ValueError(f"a PNG is at most {PNG_MAX_SIDE} px a side, not {width}x{height}")
        self._f, self._struct, self._zlib = f, struct, zlib
        self.width, self.rows_left = width, height
        self._z = zlib.compressobj(6)
        f.write(b"\x89PNG\r\n\x1a\n")
        self._chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))

    def _chunk(self, kind: bytes, data: bytes) -> None:
        if kind == b"IDAT" and not data:
            return
        crc = self._zlib.crc32(kind + data) & 0xFFFFFFFF
        self._f.write(self._struct.pack(">I", len(data)) + kind + data + self._struct.pack(">I", crc))

    def write(self, rows: np.ndarray) -> None:
        """rows: (h, width, 3) uint8."""
        if rows.shape[1:] != (self.width, 3) or rows.dtype != np.uint8 or len(rows) > self.rows_left:
            raise ValueError(f"rows of shape {rows.shape} do not fit a {self.width}-wide PNG with {self.rows_left} rows left")
        raw = np.concatenate([np.zeros((len(rows), 1), np.uint8), rows.reshape(len(rows), -1)], axis=1)
        self._chunk(b"IDAT", self._z.compress(raw.tobytes()))
        self.rows_left -= len(rows)

    def close(self) -> None:
        if self.rows_left:
            raise ValueError(f"PNG incomplete: {self.rows_left} rows missing")
        self._chunk(b"IDAT", self._z.flush())
        self._chunk(b"IEND", b"")


def write_clip_grid_stream(path: str | os.PathLike[str], batches: Iterator[Tensor | np.ndarray], num: int) -> Path:
    """`clip_grid` of `num` clips that arrive in batches ((n, T, C, H, W) uint8 each), written as a PNG band by band:
    memory holds one batch, whatever `num` is. Atomic, as every output here."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        png, done = None, 0
        for batch in batches:
            band = clip_grid(batch)
            n = len(batch)
            if png is None:
                clip_h = (band.shape[0] - SEPARATOR_PX * (n - 1)) // n
                png = _PngBands(f, band.shape[1], num * clip_h + SEPARATOR_PX * (num - 1))
            else:
                png.write(np.full((SEPARATOR_PX, band.shape[1], 3), SEPARATOR_VALUE, np.uint8))
            png.write(band)
            done += n
        if png is None or done != num:
            raise ValueError(f"expected {num} clips, got {done}")
        png.close()
    return Path(path)

