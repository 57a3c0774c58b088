"""`build_datasets`: from the config to training and validation datasets, through discovery, the cache and the split.

1. Find the sources (`sources.discover`); with no data path, render the synthetic demo footage once and use that.
2. Fingerprint each source's content; the same footage found twice is used once.
3. Decode every source not yet cached (`cache.get_or_build`), several files at once in threads, with a progress bar.
   Unusable sources (unreadable, corrupted, truncated, too short for one window) are skipped with one warning listing
   them, or, with `strict_data` or when nothing usable is left, raised as a one-line UserError.
4. Cut windows (`windows`), never across files, clips or (optionally) scene cuts.
5. Split (`split`): a separate validation path, or a fraction of whole files or of time blocks with a guard.

Every rank of a DDP job gets the same split. Ranks share the decoding: each starts at a different file and takes a file
lock per cache entry, so no source is decoded twice and none is read half-written. No torch.distributed calls here.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wubugen.data.cache import CacheEntry, cache_key, fingerprint, get_or_build
from wubugen.data.dataset import WindowDataset
from wubugen.data.sources import Source, discover, relative_name
from wubugen.data.split import SplitResult, split
from wubugen.data.synthetic import ensure_demo
from wubugen.data.video_io import DecodeError, FrameFormat, ffmpeg_error_logging
from wubugen.data.windows import WindowSpec, WindowTable, count_windows, segments, window_starts
from wubugen.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from wubugen.config import Config

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class SourceInfo:
    path: str
    name: str  # relative to the searched folder, for tables
    kind: str  # video, frames, array
    role: str  # train, val, train+val (time split), or unused (every window fell in a guard gap)
    frames: int
    width: int  # as stored in the file, before resizing
    height: int
    fps: float | None
    codec: str
    pix_fmt: str
    windows: int  # before the split
    train_windows: int
    val_windows: int
    scene_cuts: int
    notes: list[str]
    cache_file: str


@dataclass
class DataInfo:
    """What build_datasets found and decided: printed by `wubugen data inspect`, logged by the trainer."""

    train_path: str
    val_path: str | None
    demo: bool
    image_h: int
    image_w: int
    channels: int
    resize: str
    window_frames: int
    frame_skip: int
    window_stride: int
    window_span: int
    scene_cut_threshold: float
    split_mode: str
    split_seed: int
    val_fraction: float
    val_block_size: int
    train_windows: int = 0
    val_windows: int = 0
    guard_dropped: int = 0
    sources: list[SourceInfo] = field(default_factory=list)
    unusable: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}
    duplicates: list[dict[str, str]] = field(default_factory=list)  # {"path", "same_as"}
    ignored_files: int = 0
    cache_dir: str = ""
    cache_built: int = 0
    cache_reused: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line for logs."""
        src = "synthetic demo footage" if self.demo else self.train_path
        n_train = sum(1 for s in self.sources if s.train_windows)
        n_val = sum(1 for s in self.sources if s.val_windows)
        parts = [
            f"data: {src}",
            f"{self.train_windows} training windows from {n_train} sources",
            f"{self.val_windows} validation windows from {n_val} ({self.split_mode} split)",
            f"{self.window_frames} frames x skip {self.frame_skip} at {self.image_h}x{self.image_w}x{self.channels}",
        ]
        if self.unusable:
            parts.append(f"{len(self.unusable)} unusable files skipped")
        return "; ".join(parts)


@dataclass
class DataBundle:
    train: WindowDataset
    val: WindowDataset | None
    info: DataInfo


@dataclass
class _Ready:
    """A usable source: its cache entry and windows."""

    source: Source
    content: str
    entry: CacheEntry
    starts: np.ndarray
    scene_cuts: int


# --------------------------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------------------------
def build_datasets(cfg: Config, rank: int = 0, world_size: int = 1) -> DataBundle:
    """Training and validation datasets for `cfg.data` (see module docstring). Raises UserError for bad input."""
    d = cfg.data
    fmt = FrameFormat.from_config(cfg)
    spec = WindowSpec(cfg.window_frames, d.frame_skip, d.window_stride)
    lock = world_size > 1
    progress = bool(cfg.log.progress) and rank == 0
    demo = d.video_data_path is None
    train_root = str(ensure_demo(cfg, lock=lock)) if demo else d.video_data_path
    train_found = discover(train_root)
    val_found = discover(d.validation_video_path, what="validation video path") if d.validation_video_path else None

    info = DataInfo(
        train_path=train_root, val_path=d.validation_video_path, demo=demo, image_h=d.image_h, image_w=d.image_w,
        channels=d.num_channels, resize=d.resize, window_frames=spec.frames, frame_skip=spec.skip,
        window_stride=spec.stride, window_span=spec.span, scene_cut_threshold=d.scene_cut_threshold, split_mode="none",
        split_seed=cfg.train.seed, val_fraction=d.validation_split_fraction, val_block_size=d.val_block_size,
        cache_dir=str(Path(d.cache_dir).resolve()), ignored_files=len(train_found.ignored),
    )
    train = _prepare(train_found.sources, train_root, fmt, spec, cfg, info, rank=rank, world_size=world_size,
                     progress=progress)
    val: list[_Ready] = []
    if val_found is not None:
        info.ignored_files += len(val_found.ignored)
        val = _prepare(val_found.sources, d.validation_video_path, fmt, spec, cfg, info, rank=rank,
                       world_size=world_size, progress=progress)
        train_content = {r.content: r for r in train}
        for r in val:
            if r.content in train_content:
                raise UserError(
                    f"{r.source.path}: validation footage is also in the training data "
                    f"(same content as {train_content[r.content].source.path}); keep the two sets apart"
                )

    if val_found is not None:
        result = SplitResult("path", [r.starts for r in train], [np.zeros(0, np.int64) for _ in train])
        val_starts = [r.starts for r in val]
    else:
        result = split(
            [r.starts for r in train], [r.content for r in train], [r.entry.frames for r in train],
            fraction=d.validation_split_fraction, mode=d.val_split_mode, block=d.val_block_size, span=spec.span,
            seed=cfg.train.seed,
        )
        val_starts = result.val
    info.split_mode = result.mode
    info.guard_dropped = result.guard_dropped

    train_ds = WindowDataset(
        [r.entry for r in train], WindowTable.concat(result.train), spec, names=[str(r.source.path) for r in train],
        seed=cfg.train.seed, flip=d.augment_flip, random_crop=d.augment_random_crop,
    )
    val_sources = val if val_found is not None else train
    val_table = WindowTable.concat(val_starts)
    val_ds = (
        WindowDataset([r.entry for r in val_sources], val_table, spec, names=[str(r.source.path) for r in val_sources])
        if len(val_table) else None
    )
    info.train_windows, info.val_windows = len(train_ds), len(val_table)
    for r, n_tr, n_va in zip(train, map(len, result.train), map(len, result.val)):
        info.sources.append(_source_info(r, train_root, n_tr, n_va))
    for r in val:
        info.sources.append(_source_info(r, d.validation_video_path, 0, len(r.starts)))
    return DataBundle(train_ds, val_ds, info)


def _prepare(sources: list[Source], root: str, fmt: FrameFormat, spec: WindowSpec, cfg: Config, info: DataInfo, *,
             rank: int, world_size: int, progress: bool) -> list[_Ready]:
    """Fingerprint, cache and window `sources`; record unusable ones in `info` (or raise)."""
    d = cfg.data
    failures: list[tuple[Source, DecodeError]] = []
    threads = max(1, min(len(sources), os.cpu_count() or 1, 8))

    with ThreadPoolExecutor(threads) as pool:
        contents = list(pool.map(_fingerprint_or_error, sources))
    unique: list[tuple[Source, str]] = []
    first_with: dict[str, Source] = {}
    for s, c in zip(sources, contents):
        if isinstance(c, DecodeError):
            failures.append((s, c))
        elif c in first_with:
            info.duplicates.append({"path": str(s.path), "same_as": str(first_with[c].path)})
        else:
            first_with[c] = s
            unique.append((s, c))

    # Ranks start at different files so that, with the per-entry locks, they decode different files concurrently.
    n = len(unique)
    offset = rank * n // world_size
    order = list(range(offset, n)) + list(range(offset))
    lock = world_size > 1
    entries: dict[int, CacheEntry] = {}
    keys = [cache_key(c, fmt) for _, c in unique]
    # FFmpeg's worker threads log from threads we cannot attribute to a file, so they are used only for a single file.
    all_cores = n == 1
    built = 0

    def work(i: int) -> tuple[int, CacheEntry | DecodeError, bool]:
        try:
            entry, now = get_or_build(unique[i][0], keys[i], fmt, d.cache_dir, min_frames=spec.span, lock=lock,
                                      all_cores=all_cores)
        except DecodeError as e:  # an unusable source: reported below, the others go on
            return i, e, False
        return i, entry, now

    from tqdm.auto import tqdm

    with ffmpeg_error_logging(), ThreadPoolExecutor(threads) as pool:
        bar = tqdm(total=n, desc=f"decoding {Path(root).name or root}", unit="file", disable=None if progress else True,
                   leave=False)
        for future in as_completed([pool.submit(work, i) for i in order]):
            i, result, now = future.result()
            bar.update(1)
            if isinstance(result, DecodeError):
                failures.append((unique[i][0], result))
            else:
                entries[i] = result
                built += now
        bar.close()
    info.cache_built += built
    info.cache_reused += len(entries) - built

    ready: list[_Ready] = []
    for i, (source, content) in enumerate(unique):
        if i not in entries:
            continue
        entry = entries[i]
        segs = segments(entry.frames, entry.meta.get("clip_starts"), entry.diffs, d.scene_cut_threshold)
        cuts = len(segs) - len(entry.meta.get("clip_starts") or [0])
        starts = window_starts(segs, spec)
        if len(starts) == 0:
            if count_windows(entry.frames, spec) == 0:
                reason = f"{entry.frames} frames, fewer than the {spec.span} one window needs"
            else:
                longest = max(b - a for a, b in segs)
                reason = (f"its longest stretch without a scene cut or clip boundary has {longest} frames, fewer "
                          f"than the {spec.span} one window needs")
            failures.append((source, DecodeError(source.path, reason)))
            continue
        ready.append(_Ready(source, content, entry, starts, max(0, cuts)))

    if failures:
        position = {id(s): k for k, s in enumerate(sources)}
        failures.sort(key=lambda f: position[id(f[0])])
        info.unusable.extend({"path": str(s.path), "reason": e.reason} for s, e in failures)
        if d.strict_data:
            raise failures[0][1]
        if not ready:
            if len(failures) == 1:
                raise failures[0][1]
            first = failures[0][1]
            raise UserError(f"{root}: none of its {len(failures)} files is usable (first: {first}); "
                            f"`wubugen data inspect {root}` lists every reason")
        listing = "; ".join(f"{s.path} ({e.reason})" for s, e in failures)
        log.warning("skipped %d unusable file(s) in %s: %s", len(failures), root, listing)
    return ready


def _fingerprint_or_error(source: Source) -> str | DecodeError:
    try:
        return fingerprint(source)
    except OSError as e:  # unreadable (permissions, I/O error): an unusable source, reported with the others
        return DecodeError(getattr(e, "filename", None) or source.path, f"cannot read ({e.strerror or e})")


def _source_info(r: _Ready, root: str | None, n_train: int, n_val: int) -> SourceInfo:
    m = r.entry.meta
    role = "train+val" if n_train and n_val else "val" if n_val else "train" if n_train else "unused"
    return SourceInfo(
        path=str(r.source.path), name=relative_name(r.source, root), kind=r.source.kind, role=role,
        frames=r.entry.frames, width=int(m.get("width") or 0), height=int(m.get("height") or 0), fps=m.get("fps"),
        codec=str(m.get("codec", "")), pix_fmt=str(m.get("pix_fmt", "")), windows=len(r.starts),
        train_windows=n_train, val_windows=n_val, scene_cuts=r.scene_cuts, notes=list(m.get("notes", [])),
        cache_file=str(r.entry.path),
    )
