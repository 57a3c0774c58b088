"""Decoding footage: videos through PyAV, numbered frames through Pillow, clip arrays through NumPy. (Encoding and
atomic writes live in `wubugen.media`.)

Every reader yields frames already fitted to the output size (by the resize policy) and channel count, as uint8 arrays
of shape (H, W, C), so each frame is resized exactly once, when the cache is built (the original resized every frame on
every access). Readers stream: a video is never held in memory as a whole (the original loaded it whole).

Input conversions (documented behaviour, not errors):
* grayscale sources are replicated to 3 channels when `num_channels` is 3; colour sources become luma when it is 1;
* alpha (RGBA/LA images, yuva/bgra video, transparent GIF/palette pixels) is composited over black, with a note;
* 16-bit images are scaled to 8 bits; the container's display rotation (phone footage) and EXIF orientation are applied.
Only input that cannot give frames at all is an error (`DecodeError`, a `UserError` naming the file and the reason).
"""
from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import av.logging
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image, ImageOps, UnidentifiedImageError

from wubugen.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from wubugen.config import Config

RESIZE_POLICIES = ("center_crop", "stretch", "pad")

# A decoded frame count this far below what the container declares means the file was cut short. A small shortfall is
# tolerated (and noted) because some muxers count a frame or two that no decoder returns.
_TRUNCATION_TOLERANCE_FRAMES = 2
_TRUNCATION_TOLERANCE_FRACTION = 0.02
# When only a duration is declared (Matroska, GIF), decoding less than this share of it means truncation.
_MIN_DURATION_COVERAGE = 0.9


class DecodeError(UserError):
    """A source that cannot be used. The message is one line: `<path>: <reason>`."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class FrameFormat:
    """The pixel settings of the cache: everything that changes the stored pixels."""

    height: int
    width: int
    channels: int  # 1 or 3
    resize: str  # one of RESIZE_POLICIES

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"resize policy must be one of {RESIZE_POLICIES}, not {self.resize!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, not {self.channels}")

    @classmethod
    def from_config(cls, cfg: Config) -> FrameFormat:
        d = cfg.data
        return cls(d.image_h, d.image_w, d.num_channels, d.resize)


@dataclass
class SourceProps:
    """What a reader learned about its source while decoding (filled in as it goes)."""

    width: int = 0  # of the first frame, as displayed (after rotation)
    height: int = 0
    fps: float | None = None
    codec: str = ""
    pix_fmt: str = ""
    declared_frames: int | None = None
    clip_starts: list[int] = field(default_factory=lambda: [0])  # first frame of each clip (arrays hold several)
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


# --------------------------------------------------------------------------------------------------------------------
# Resize policy
# --------------------------------------------------------------------------------------------------------------------
def scaled_size(src_w: int, src_h: int, fmt: FrameFormat) -> tuple[int, int]:
    """(w, h) to scale a src_w x src_h frame to before `place` crops or pads it to fmt's size.

    center_crop: cover the output and keep the aspect ratio; stretch: the output size; pad: fit inside, keep the ratio.
    """
    out_w, out_h = fmt.width, fmt.height
    if fmt.resize == "stretch":
        return out_w, out_h
    if fmt.resize == "center_crop":
        s = max(out_w / src_w, out_h / src_h)
        return max(out_w, round(src_w * s)), max(out_h, round(src_h * s))
    s = min(out_w / src_w, out_h / src_h)
    return min(out_w, max(1, round(src_w * s))), min(out_h, max(1, round(src_h * s)))


def place(img: np.ndarray, fmt: FrameFormat) -> np.ndarray:
    """Centre-crop (center_crop) or zero-pad to black (pad) an (h, w, C) image scaled by `scaled_size` to fmt's size."""
    h, w = img.shape[:2]
    if (h, w) == (fmt.height, fmt.width):
        return img
    if fmt.resize == "pad":
        out = np.zeros((fmt.height, fmt.width, img.shape[2]), dtype=img.dtype)
        y0, x0 = (fmt.height - h) // 2, (fmt.width - w) // 2
        out[y0:y0 + h, x0:x0 + w] = img
        return out
    y0, x0 = (h - fmt.height) // 2, (w - fmt.width) // 2
    return img[y0:y0 + fmt.height, x0:x0 + fmt.width]


def _composite_over_black(rgba: np.ndarray, props: SourceProps) -> np.ndarray:
    """(h, w, 4) -> (h, w, 3): colour times alpha, i.e. transparent pixels become black."""
    alpha = rgba[..., 3:4]
    if alpha.min() < 255:
        props.note("alpha composited over black")
        return ((rgba[..., :3].astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)
    return np.ascontiguousarray(rgba[..., :3])


def _to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """(h, w) gray or (h, w, 3) RGB -> (h, w, channels)."""
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == channels:
        return img
    if channels == 1:
        return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)[:, :, None]
    return np.repeat(img, 3, axis=2)


def fit_frame(img: np.ndarray, fmt: FrameFormat) -> np.ndarray:
    """Any (h, w) or (h, w, 1|3) uint8 image -> (fmt.height, fmt.width, fmt.channels) by the resize policy.

    INTER_AREA when shrinking (no aliasing), bicubic when enlarging.
    """
    h, w = img.shape[:2]
    sw, sh = scaled_size(w, h, fmt)
    if (sw, sh) != (w, h):
        interp = cv2.INTER_AREA if sw * sh < w * h else cv2.INTER_CUBIC
        img = cv2.resize(np.ascontiguousarray(img), (sw, sh), interpolation=interp)
    return _to_channels(place(img if img.ndim == 3 else img[:, :, None], fmt), fmt.channels)


# --------------------------------------------------------------------------------------------------------------------
# FFmpeg error capture
# --------------------------------------------------------------------------------------------------------------------
# PyAV drops FFmpeg's log by default, and with it the only sign of a corrupt or truncated stream (FFmpeg conceals
# damaged macroblocks and stops quietly at a cut). Decoders therefore run with the log level at ERROR and capture it.
# The level is process-wide, so it is raised while any decoder runs and restored when the last one finishes.
_level_lock = threading.Lock()
_level_users = 0
_level_saved: int | None = None


@contextlib.contextmanager
def ffmpeg_error_logging() -> Iterator[None]:
    """Keep FFmpeg's log level at ERROR (or more verbose, if already so) while the block runs."""
    global _level_users, _level_saved
    with _level_lock:
        if _level_users == 0:
            _level_saved = av.logging.get_level()
            if _level_saved is None or _level_saved < av.logging.ERROR:
                av.logging.set_level(av.logging.ERROR)
        _level_users += 1
    try:
        yield
    finally:
        with _level_lock:
            _level_users -= 1
            if _level_users == 0:
                av.logging.set_level(_level_saved)


def _log_errors(logs: Sequence[Any]) -> list[str]:
    return [msg.strip() for level, _name, msg in logs if level <= av.logging.ERROR and msg.strip()]


# --------------------------------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------------------------------
def _av_reason(exc: Exception) -> str:
    if isinstance(exc, av.error.InvalidDataError):
        return "not a readable video (invalid data: truncated, corrupted or not a video)"
    if isinstance(exc, av.error.EOFError):
        return "no video frames (the file ends before the first)"
    text = getattr(exc, "strerror", None) or str(exc)
    return f"cannot decode ({text})"


def _format_kind(fmt: av.VideoFormat) -> tuple[bool, bool]:
    """(has_alpha, is_gray) of a decoded frame's pixel format. Palette formats may carry alpha."""
    comps = fmt.components
    has_alpha = fmt.has_palette or any(c.is_alpha for c in comps)
    colour = [c for c in comps if not c.is_alpha]
    is_gray = not fmt.has_palette and len(colour) == 1
    return has_alpha, is_gray


def read_video(
    path: str | os.PathLike[str],
    fmt: FrameFormat,
    props: SourceProps | None = None,
    *,
    max_frames: int | None = None,
    all_cores: bool = True,
) -> Iterator[np.ndarray]:
    """Yield the frames of a video file as (fmt.height, fmt.width, fmt.channels) uint8 arrays.

    `all_cores`: this file decodes alone, so FFmpeg's slice threads and the scaler may use every core and log lines
    from any thread count as this file's; callers decoding several files at once in threads pass False.
    Raises DecodeError for unreadable, corrupted (FFmpeg reports errors) or truncated input, and for zero frames.
    `max_frames`: stop after that many frames (the end-of-file checks are then skipped).
    """
    props = props if props is not None else SourceProps()
    n = 0
    with ffmpeg_error_logging(), av.logging.Capture(local=not all_cores) as logs:
        try:
            container = av.open(os.fspath(path), mode="r")
        except (av.error.FFmpegError, OSError) as e:
            raise DecodeError(path, _av_reason(e)) from None
        with container:
            if not container.streams.video:
                raise DecodeError(path, "no video stream")
            stream = container.streams.video[0]
            # Never frame threads: they decode ahead of us and log from their own threads, while PyAV frees a codec
            # context (joining them) with the GIL held. A frame thread logging an error then waits for the GIL
            # forever (PyAV 18: an early stop hung locally; a CI run hung in a bad-input test, where pytest-timeout
            # could not fire either). Slice threads work only inside decode calls, which release the GIL.
            stream.thread_type = "SLICE"
            cc = stream.codec_context
            props.codec = cc.name
            props.pix_fmt = cc.pix_fmt or ""
            rate = stream.average_rate or stream.guessed_rate
            props.fps = float(rate) if rate else None
            props.declared_frames = stream.frames or None
            reformatter = VideoReformatter()
            first_pts: int | None = None
            last_pts: int | None = None
            decoding = container.decode(stream)
            # closed on every way out (an error mid-file included): a decoder left to the garbage collector can be
            # freed in a forked DataLoader worker, where FFmpeg's slice threads do not exist, and hang there
            try:
                while True:
                    try:
                        frame = next(decoding)
                    except StopIteration:
                        break
                    except av.error.FFmpegError as e:
                        raise DecodeError(path, f"{_av_reason(e)} after {n} frames") from None
                    errors = _log_errors(logs)
                    if errors:
                        raise DecodeError(path, f"corrupted or truncated (FFmpeg: {errors[-1]}) at frame {n}")
                    if frame.pts is not None:
                        first_pts = frame.pts if first_pts is None else min(first_pts, frame.pts)
                        last_pts = frame.pts if last_pts is None else max(last_pts, frame.pts)
                    yield _convert_video_frame(frame, reformatter, fmt, props, all_cores)
                    n += 1
                    if max_frames is not None and n >= max_frames:
                        return
            finally:
                decoding.close()
            errors = _log_errors(logs)
            if errors:
                raise DecodeError(path, f"corrupted or truncated (FFmpeg: {errors[-1]})")
            if n == 0:
                raise DecodeError(path, "no video frames")
            _check_complete(path, n, stream, container, first_pts, last_pts, props)


def _check_complete(path, n: int, stream, container, first_pts, last_pts, props: SourceProps) -> None:
    """Compare what was decoded with what the container declares (frame count, else duration)."""
    declared = props.declared_frames
    if declared:
        short = declared - n
        if short > max(_TRUNCATION_TOLERANCE_FRAMES, _TRUNCATION_TOLERANCE_FRACTION * declared):
            raise DecodeError(path, f"truncated: decoded {n} of the {declared} frames the container declares")
        if short > 0:
            props.note(f"decoded {n} of {declared} declared frames")
        return
    # No frame count (Matroska, some AVI/GIF): compare decoded time with the declared duration of this stream, or of
    # the file when it holds only this stream (another stream may be longer than the video).
    if stream.duration and stream.time_base:
        declared_s = float(stream.duration * stream.time_base)
    elif container.duration and len(container.streams) == 1:
        declared_s = container.duration / av.time_base
    else:
        return
    if first_pts is None or last_pts is None or not props.fps or declared_s <= 0:
        return
    decoded_s = float((last_pts - first_pts) * stream.time_base) + 1.0 / props.fps
    if decoded_s < _MIN_DURATION_COVERAGE * declared_s:
        raise DecodeError(path, f"truncated: decoded {decoded_s:.2f} s of the {declared_s:.2f} s the container states")


def _convert_video_frame(
    frame: av.VideoFrame, reformatter: VideoReformatter, fmt: FrameFormat, props: SourceProps, all_cores: bool
) -> np.ndarray:
    rotation = frame.rotation  # counter-clockwise degrees the display matrix asks for (phone footage)
    k = 0
    if rotation:
        if rotation % 90:
            props.note(f"display rotation {rotation} deg ignored (not a multiple of 90)")
        else:
            k = (rotation // 90) % 4
            props.note(f"display rotation {rotation} deg applied")
    src_w, src_h = (frame.height, frame.width) if k % 2 else (frame.width, frame.height)
    if not props.width:
        props.width, props.height = src_w, src_h
    sw, sh = scaled_size(src_w, src_h, fmt)
    if k % 2:
        sw, sh = sh, sw  # scale before rotating
    has_alpha, is_gray = _format_kind(frame.format)
    if has_alpha:
        out_fmt = "rgba"
    elif fmt.channels == 1:
        out_fmt = "gray"
    else:
        out_fmt = "rgb24"
        if is_gray:
            props.note("grayscale source replicated to 3 channels")
    img = reformatter.reformat(
        frame, width=sw, height=sh, format=out_fmt, interpolation="AREA", threads=0 if all_cores else 1
    ).to_ndarray()
    if has_alpha:
        img = _composite_over_black(img, props)
    if k:
        img = np.rot90(img, k)
    return np.ascontiguousarray(_to_channels(place(img if img.ndim == 3 else img[:, :, None], fmt), fmt.channels))


_NUM_RE = re.compile(r"(\d+)")


def natural_key(path: Path) -> list[Any]:
    """Sort key treating digit runs as numbers: frame2.png before frame10.png."""
    return [int(t) if t.isdigit() else t.lower() for t in _NUM_RE.split(path.name)]


def _image_array(img: Image.Image, props: SourceProps) -> np.ndarray:
    """A loaded PIL image -> (h, w) gray or (h, w, 3) RGB uint8 (alpha composited, 16-bit scaled)."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        props.note("16-bit frames scaled to 8 bits")
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode != "F" and arr.max() > 255 else 255.0
        return np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8)
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    elif mode in ("1", "L"):
        if mode == "1":
            img = img.convert("L")
        props.note("grayscale source")
        return np.asarray(img)
    elif mode not in ("RGB", "RGBA"):
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV
    arr = np.asarray(img)
    if arr.shape[2] == 4:
        return _composite_over_black(arr, props)
    return arr


def read_image(path: Path, fmt: FrameFormat, props: SourceProps, *, folder: Path | None = None) -> np.ndarray:
    """One image file -> (fmt.height, fmt.width, fmt.channels) uint8. Errors name `folder` (its source) when given."""
    try:
        with Image.open(path) as img:
            orientation = img.getexif().get(0x0112, 1)
            w, h = img.size
            disp_w, disp_h = (h, w) if orientation in (5, 6, 7, 8) else (w, h)  # EXIF orientations 5-8 swap axes
            if not props.width:
                props.width, props.height = disp_w, disp_h
            if img.format == "JPEG":
                # Decode JPEGs at a reduced DCT scale that still covers the output: 1920x1080 frames for a 64x64
                # cache decode 8x faster.
                need_w, need_h = scaled_size(disp_w, disp_h, fmt)
                if orientation in (5, 6, 7, 8):
                    need_w, need_h = need_h, need_w
                img.draft(img.mode if img.mode in ("L", "RGB") else "RGB", (need_w, need_h))
            img.load()
            if orientation != 1:
                img = ImageOps.exif_transpose(img)
                props.note("EXIF orientation applied")
            arr = _image_array(img, props)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        # Pillow signals truncated/corrupt data with OSError/SyntaxError/ValueError depending on the plugin.
        if folder is not None:
            raise DecodeError(folder, f"frame {path.name} is an unreadable image ({e})") from None
        raise DecodeError(path, f"unreadable image ({e})") from None
    return np.ascontiguousarray(fit_frame(arr, fmt))


def read_frame_folder(
    files: Sequence[Path], fmt: FrameFormat, props: SourceProps | None = None, *, max_frames: int | None = None
) -> Iterator[np.ndarray]:
    """Yield the numbered frames `files` (already in order) as (H, W, C) uint8 arrays."""
    props = props if props is not None else SourceProps()
    exts = sorted({f.suffix.lower().lstrip(".") for f in files})
    props.codec = "+".join(exts)
    props.declared_frames = len(files)
    for i, f in enumerate(files):
        if max_frames is not None and i >= max_frames:
            return
        yield read_image(f, fmt, props, folder=f.parent)


def open_clip_array(path: str | os.PathLike[str]) -> tuple[np.ndarray, str]:
    """A .npy of clips, memory-mapped, as (N, T, H, W, C) plus a description of the layout.

    Accepted layouts (uint8): (T, H, W), (T, H, W, C) with C in 1, 3, 4, (N, T, H, W) and (N, T, H, W, C).
    """
    try:
        arr = np.load(os.fspath(path), mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DecodeError(path, f"not a readable .npy array ({e})") from None
    if arr.dtype != np.uint8:
        raise DecodeError(path, f"clip arrays must be uint8, not {arr.dtype}")
    shape = arr.shape
    if arr.ndim == 3:
        arr, layout = arr[None, :, :, :, None], "(T, H, W)"
    elif arr.ndim == 4 and shape[-1] in (1, 3, 4):
        arr, layout = arr[None], "(T, H, W, C)"
    elif arr.ndim == 4:
        arr, layout = arr[..., None], "(N, T, H, W)"
    elif arr.ndim == 5 and shape[-1] in (1, 3, 4):
        layout = "(N, T, H, W, C)"
    else:
        raise DecodeError(path, f"array of shape {shape} is not a clip array ((N,) T, H, W (, C) uint8)")
    return arr, layout


def read_clip_array(
    path: str | os.PathLike[str], fmt: FrameFormat, props: SourceProps | None = None, *, max_frames: int | None = None
) -> Iterator[np.ndarray]:
    """Yield every frame of every clip of a .npy clip array; props.clip_starts marks where each clip begins."""
    props = props if props is not None else SourceProps()
    arr, layout = open_clip_array(path)
    n_clips, t = arr.shape[:2]
    props.codec = f"npy {layout}"
    props.height, props.width = arr.shape[2:4]
    props.declared_frames = n_clips * t
    props.clip_starts = [i * t for i in range(n_clips)]
    if arr.shape[-1] == 1:
        props.note("grayscale source")
    n = 0
    for clip in arr:
        for frame in clip:
            if max_frames is not None and n >= max_frames:
                return
            img = np.asarray(frame)
            if img.shape[2] == 4:
                img = _composite_over_black(img, props)
            yield np.ascontiguousarray(fit_frame(img[:, :, 0] if img.shape[2] == 1 else img, fmt))
            n += 1
