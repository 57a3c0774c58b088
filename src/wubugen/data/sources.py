"""Finding footage: what `--video_data_path` names, as a list of sources (each one video, frame folder or clip array).

A path may be
* a video file (any container FFmpeg reads; the suffix is not checked when the file is named directly),
* a folder, searched recursively: every video file (by suffix) is a source, and the images directly inside one folder
  are one source of numbered frames, in natural order (frame2 before frame10). Hidden entries are skipped; other files
  are counted as ignored. `.npy` files in folders are ignored (they are often not footage): name them directly,
* a text file (`.txt`, `.lst`, `.list`) listing any of these, one per line; `#` starts a comment, relative paths are
  relative to the list file. A listed path that does not exist is an error (it is a typo, not bad footage),
* a `.npy` array of clips, uint8 (N, T, H, W[, C]) or (T, H, W[, C]) (what `wubugen data moving-mnist` writes).
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from wubugen.data.video_io import (DecodeError, FrameFormat, SourceProps, natural_key, read_clip_array, read_frame_folder,
                                   read_video)
from wubugen.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from wubugen.config import Config

VIDEO_SUFFIXES = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .gif .mpg .mpeg .m2v .ts .m2ts .mts .wmv .flv .3gp .3g2 .ogv .y4m .mxf .dv".split()
)
IMAGE_SUFFIXES = frozenset(".png .jpg .jpeg .bmp .webp .tif .tiff".split())
LIST_SUFFIXES = frozenset(".txt .lst .list".split())
ARRAY_SUFFIXES = frozenset({".npy"})

SourceKind = Literal["video", "frames", "array"]


@dataclass(frozen=True)
class Source:
    """One stream of frames. For `frames`, `path` is the folder and `files` its images in order."""

    path: Path
    kind: SourceKind
    files: tuple[Path, ...] = ()

    @property
    def name(self) -> str:
        return str(self.path)


@dataclass
class Discovery:
    sources: list[Source] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)  # files in searched folders that are not footage


def frame_reader(
    source: Source, fmt: FrameFormat, props: SourceProps, *, max_frames: int | None = None, all_cores: bool = True
) -> Iterator[np.ndarray]:
    """The frames of `source` as (H, W, C) uint8 arrays, fitted to `fmt` (see video_io)."""
    if source.kind == "video":
        return read_video(source.path, fmt, props, max_frames=max_frames, all_cores=all_cores)
    if source.kind == "frames":
        return read_frame_folder(source.files, fmt, props, max_frames=max_frames)
    return read_clip_array(source.path, fmt, props, max_frames=max_frames)


def discover(path: str, *, what: str = "video data path") -> Discovery:
    """All sources under `path`, in a stable order. Raises UserError for a missing path or one with no footage.

    Whether a found file is usable is only known when it is decoded (see cache.build_entry).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{path}: {what} does not exist")
    found = Discovery()
    _add(p, found, seen_lists=set(), seen_dirs=set(), explicit=True)
    if not found.sources:
        if p.is_dir():
            extra = f" ({len(found.ignored)} other files ignored)" if found.ignored else ""
            raise UserError(f"{path}: folder holds no videos or frame folders{extra}")
        raise UserError(f"{path}: list names no videos or frame folders")
    # Same footage reached twice (a list naming a folder and a file inside it) is used once.
    unique: dict[tuple[str, Path], Source] = {}
    for s in found.sources:
        unique.setdefault((s.kind, s.path.resolve()), s)
    found.sources = list(unique.values())
    return found


def _add(p: Path, found: Discovery, *, seen_lists: set[Path], seen_dirs: set[Path], explicit: bool) -> None:
    suffix = p.suffix.lower()
    if p.is_dir():
        _scan_dir(p, found, seen_dirs)
    elif suffix in LIST_SUFFIXES:
        _read_list(p, found, seen_lists, seen_dirs)
    elif suffix in IMAGE_SUFFIXES:
        if explicit:
            raise UserError(f"{p}: a single image is not footage; give the folder of numbered frames")
        found.sources.append(Source(p.parent, "frames", (p,)))
    elif suffix in ARRAY_SUFFIXES:
        found.sources.append(Source(p, "array"))
    else:
        # Named directly: try it whatever the suffix (FFmpeg sniffs the content); a non-video is reported at decode.
        found.sources.append(Source(p, "video"))


def _read_list(p: Path, found: Discovery, seen_lists: set[Path], seen_dirs: set[Path]) -> None:
    real = p.resolve()
    if real in seen_lists:
        raise UserError(f"{p}: list includes itself")
    seen_lists.add(real)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{p}: not a text list of paths (not UTF-8 text)") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        q = Path(entry).expanduser()
        q = q if q.is_absolute() else p.parent / q
        if not q.exists():
            raise UserError(f"{p}:{lineno}: {entry} does not exist")
        _add(q, found, seen_lists=seen_lists, seen_dirs=seen_dirs, explicit=True)
    seen_lists.discard(real)


def _scan_dir(root: Path, found: Discovery, seen_dirs: set[Path]) -> None:
    real = root.resolve()
    if real in seen_dirs:  # symlink loops, or a folder reached twice
        return
    seen_dirs.add(real)
    entries = sorted((e for e in root.iterdir() if not e.name.startswith(".")), key=natural_key)
    images = [e for e in entries if e.is_file() and e.suffix.lower() in IMAGE_SUFFIXES]
    if images:
        found.sources.append(Source(root, "frames", tuple(images)))
    for e in entries:
        if e.is_dir():
            _scan_dir(e, found, seen_dirs)
        elif e.suffix.lower() in VIDEO_SUFFIXES:
            found.sources.append(Source(e, "video"))
        elif e.suffix.lower() not in IMAGE_SUFFIXES:
            found.ignored.append(e)


def describe_kind(source: Source) -> str:
    if source.kind == "frames":
        return f"{len(source.files)} images"
    return source.kind


def relative_name(source: Source, root: str | os.PathLike[str] | None) -> str:
    """The source's path relative to the searched root when inside it (for tables), else the full path."""
    if root is not None:
        r = Path(root)
        if r.is_dir():
            try:
                rel = source.path.relative_to(r)
            except ValueError:
                return str(source.path)
            return str(rel) if str(rel) != "." else source.path.name
    return str(source.path)


# --------------------------------------------------------------------------------------------------------------------
# One clip, straight from a file (no cache)
# --------------------------------------------------------------------------------------------------------------------
def read_clip(
    path_or_dir: str | os.PathLike[str], cfg: Config, *, num_frames: int | None = None, start: int = 0
) -> torch.Tensor:
    """The first clip of a video file, frame folder or clip array, as uint8 (T, C, H, W), T = num_frames.

    Frames are taken every `cfg.data.frame_skip` frames from frame `start`; num_frames defaults to cfg.window_frames.
    Raises UserError when the source is unusable or too short.
    """
    import torch

    t = cfg.window_frames if num_frames is None else num_frames
    skip = cfg.data.frame_skip
    need = start + (t - 1) * skip + 1
    found = discover(str(path_or_dir), what="clip path")
    if len(found.sources) != 1:
        raise UserError(f"{path_or_dir}: holds {len(found.sources)} videos; give one video file or frame folder")
    source = found.sources[0]
    fmt = FrameFormat.from_config(cfg)
    frames = list(frame_reader(source, fmt, SourceProps(), max_frames=need))
    if len(frames) < need:
        raise DecodeError(source.path, f"{len(frames)} frames, fewer than the {need} this clip needs")
    clip = np.stack(frames[start:need:skip])  # (T, H, W, C)
    return torch.from_numpy(np.ascontiguousarray(clip.transpose(0, 3, 1, 2)))
