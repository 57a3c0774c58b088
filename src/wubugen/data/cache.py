"""The decoded-frame cache: each source decoded once into a memory-mapped uint8 file.

Key: sha256 of (format version, the source's content fingerprint, image_h, image_w, resize, num_channels), so an entry
is rebuilt only when the footage or a setting that changes pixels changes (window, split and augmentation settings do
not). Content fingerprint: sha256 of the bytes of files up to 64 MiB; larger files hash their size, first and last MiB
and 14 spread 64 KiB chunks (bounded start-up cost on large datasets; any re-encode or edit changes those). A frame
folder's fingerprint covers its file names and each image's fingerprint.

File layout (`<cache_dir>/frames/<key>.frames`): the frames as uint8 (N, C, H, W) from offset 0, then a UTF-8 JSON
trailer (frame count, shape, source properties, per-frame differences for scene cuts), its length as 8 little-endian
bytes, and an 8-byte magic. Frames stream to a temporary file that is renamed into place only after the whole source
decoded cleanly, so a failed or interrupted decode never leaves a cache file behind.

Several processes (DDP ranks, or two runs) may build at once: with `lock=True` a per-entry `fcntl.flock` makes one of
them decode while the others wait and then read its result. Without fcntl (Windows) entries are still never half
written (atomic rename); two processes may then decode the same source twice.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wubugen.data.sources import Source, frame_reader
from wubugen.data.video_io import DecodeError, FrameFormat, SourceProps
from wubugen.errors import UserError
from wubugen.media import atomic_output

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

CACHE_VERSION = 1  # bump when decoding or resizing changes pixels
_MAGIC = b"WBGFRM01"
_TRAILER = struct.Struct("<Q8s")
_FULL_HASH_LIMIT = 64 << 20
_CHUNK = 1 << 20
_SPREAD_CHUNK = 64 << 10
_SPREAD_COUNT = 14


# --------------------------------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------------------------------
def file_fingerprint(path: Path) -> str:
    """Content hash of one file (see module docstring for files over 64 MiB)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        if size <= _FULL_HASH_LIMIT:
            for block in iter(lambda: f.read(_CHUNK * 4), b""):
                h.update(block)
        else:
            h.update(f.read(_CHUNK))
            for i in range(1, _SPREAD_COUNT + 1):
                f.seek(size * i // (_SPREAD_COUNT + 1))
                h.update(f.read(_SPREAD_CHUNK))
            f.seek(size - _CHUNK)
            h.update(f.read(_CHUNK))
    return h.hexdigest()


def fingerprint(source: Source) -> str:
    """Content hash of a source: its file's, or for a frame folder, its images' names and hashes in order."""
    if source.kind != "frames":
        return source.kind + ":" + file_fingerprint(source.path)
    h = hashlib.sha256()
    for f in source.files:
        h.update(f.name.encode() + b"\0" + file_fingerprint(f).encode() + b"\n")
    return "frames:" + h.hexdigest()


def cache_key(content: str, fmt: FrameFormat) -> str:
    settings = {"v": CACHE_VERSION, "content": content, "h": fmt.height, "w": fmt.width, "c": fmt.channels,
                "resize": fmt.resize}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]


# --------------------------------------------------------------------------------------------------------------------
# Entries
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CacheEntry:
    path: Path
    frames: int
    shape: tuple[int, int, int]  # (C, H, W)
    meta: dict[str, Any]  # source properties, "diffs" (N floats: mean |frame_i - frame_{i-1}|, 0-255), "clip_starts"

    def open(self) -> np.memmap:
        """The frames, memory-mapped read-only: uint8 (N, C, H, W)."""
        return np.memmap(self.path, dtype=np.uint8, mode="r", shape=(self.frames, *self.shape))

    @property
    def diffs(self) -> np.ndarray:
        return np.asarray(self.meta["diffs"], dtype=np.float32)


def frames_dir(cache_dir: str | os.PathLike[str]) -> Path:
    return Path(cache_dir) / "frames"


def entry_path(cache_dir: str | os.PathLike[str], key: str) -> Path:
    return frames_dir(cache_dir) / f"{key}.frames"


def load_entry(path: Path) -> CacheEntry | None:
    """The entry at `path`, or None if there is none. A file without a valid trailer (not ours) is an error."""
    if not path.exists():
        return None
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size < _TRAILER.size:
            raise UserError(f"{path}: damaged cache file (too short); delete it")
        f.seek(size - _TRAILER.size)
        length, magic = _TRAILER.unpack(f.read(_TRAILER.size))
        if magic != _MAGIC or length > size - _TRAILER.size:
            raise UserError(f"{path}: not a wubugen cache file or damaged; delete it")
        f.seek(size - _TRAILER.size - length)
        meta = json.loads(f.read(length).decode("utf-8"))
    shape = tuple(meta["shape"])
    if meta["frames"] * int(np.prod(shape)) != size - _TRAILER.size - length:
        raise UserError(f"{path}: damaged cache file (size does not match its frames); delete it")
    return CacheEntry(path, meta["frames"], (shape[0], shape[1], shape[2]), meta)


@contextlib.contextmanager
def build_lock(cache_dir: str | os.PathLike[str], name: str, enabled: bool) -> Iterator[None]:
    """Exclusive lock `<cache_dir>/locks/<name>.lock` across processes (released when the holder exits or dies)."""
    if not enabled or fcntl is None:
        yield
        return
    lock_dir = Path(cache_dir) / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_dir / f"{name}.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def touch(path: Path) -> None:
    """Mark an entry as used now (its mtime: `wubugen data cache --prune_days` removes the long unused). A read-only
    cache just keeps its old times."""
    try:
        os.utime(path)
    except OSError:
        pass


def get_or_build(
    source: Source,
    key: str,
    fmt: FrameFormat,
    cache_dir: str | os.PathLike[str],
    *,
    min_frames: int = 1,
    lock: bool = False,
    all_cores: bool = True,
) -> tuple[CacheEntry, bool]:
    """(entry, built_now). Decodes `source` into the cache unless an entry for `key` exists.

    Raises DecodeError when the source is unusable, including when it has fewer than `min_frames` frames; nothing is
    written then.
    """
    path = entry_path(cache_dir, key)
    entry = load_entry(path)
    if entry is not None:
        touch(path)
        return entry, False
    with build_lock(cache_dir, key, lock):
        entry = load_entry(path)  # another process may have built it while we waited
        if entry is not None:
            return entry, False
        return _build(source, path, fmt, min_frames, all_cores), True


def _build(source: Source, path: Path, fmt: FrameFormat, min_frames: int, all_cores: bool) -> CacheEntry:
    props = SourceProps()
    diffs: list[float] = []
    prev: np.ndarray | None = None
    n = 0
    # streamed to a temporary file, renamed into place only once the whole source decoded (see wubugen.media)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        for frame in frame_reader(source, fmt, props, all_cores=all_cores):
            chw = np.ascontiguousarray(frame.transpose(2, 0, 1))
            f.write(chw.tobytes())
            cur = chw.astype(np.int16)
            diffs.append(0.0 if prev is None else round(float(np.abs(cur - prev).mean()), 3))
            prev = cur
            n += 1
        if n < min_frames:
            raise DecodeError(source.path, f"{n} frames, fewer than the {min_frames} one window needs")
        meta = {
            "version": CACHE_VERSION,
            "source": str(source.path),
            "kind": source.kind,
            "frames": n,
            "shape": [fmt.channels, fmt.height, fmt.width],
            "resize": fmt.resize,
            "width": props.width,
            "height": props.height,
            "fps": props.fps,
            "codec": props.codec,
            "pix_fmt": props.pix_fmt,
            "declared_frames": props.declared_frames,
            "clip_starts": props.clip_starts,
            "notes": props.notes,
            "diffs": diffs,
        }
        blob = json.dumps(meta).encode("utf-8")
        f.write(blob)
        f.write(_TRAILER.pack(len(blob), _MAGIC))
    return CacheEntry(path, n, (fmt.channels, fmt.height, fmt.width), meta)
