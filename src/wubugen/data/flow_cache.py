"""The flow cache: frozen optical flow computed once per frame-cache entry and memory-mapped beside the frame cache.

A frozen flow net is a function of the frames alone, so each source's flow is computed once (the original ran
RAFT pair by pair in every step) and stored at `<cache_dir>/flow/<key>.npy`: float16 (P, 2, H, W), where flow i goes from
frame i to frame i + frame_skip of the cached frames, for every i (P = frames - frame_skip), in pixels of the cached
frame size. A window starting at frame s with T encoder frames uses flows s, s + skip, ..., s + (T - 2) * skip.

Key: sha256 of (cache format version, the frame-cache key (itself a hash of the footage's content and the frame size,
channels and resize mode), the estimator's key (backend, sha256 of the weights file or the DIS preset, RAFT settings) and
frame_skip). Changing any of them builds a new entry; an entry is never modified in place.

Files are written to a temporary name and renamed into place when complete, so a crash never leaves a partial entry.
With `lock=True` (several processes, e.g. DDP ranks) a per-entry file lock makes one process compute an entry while the
others wait and then read it; ranks start at different sources so they compute different ones concurrently.
RAFT flow is computed on the estimator's device (the training device) in batches of pairs; DIS on the CPU in threads.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from wubugen.data.cache import build_lock, touch
from wubugen.flow.backends import FlowEstimator, dis_flow, raft_scale
from wubugen.media import atomic_output

if TYPE_CHECKING:  # pragma: no cover
    from wubugen.config import Config
    from wubugen.data.dataset import WindowDataset
    from wubugen.data.pipeline import DataBundle

log = logging.getLogger(__name__)

FLOW_CACHE_VERSION = 1
FLOW_DTYPE = np.float16
_PIXEL_BUDGET = 1 << 22  # RAFT input pixels per batch of pairs (after upsampling)
_MAX_BATCH_PAIRS = 64


# --------------------------------------------------------------------------------------------------------------------
# Keys and entries
# --------------------------------------------------------------------------------------------------------------------
def flow_cache_key(frame_key: str, estimator_key: str, frame_skip: int) -> str:
    settings = {"v": FLOW_CACHE_VERSION, "frames": frame_key, "flow": estimator_key, "skip": int(frame_skip),
                "dtype": np.dtype(FLOW_DTYPE).str}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]


def flow_dir(cache_dir: str | os.PathLike[str]) -> Path:
    return Path(cache_dir) / "flow"


def flow_path(cache_dir: str | os.PathLike[str], key: str) -> Path:
    return flow_dir(cache_dir) / f"{key}.npy"


@dataclass(frozen=True)
class FlowEntry:
    path: Path
    pairs: int  # P = frames - skip
    skip: int
    shape: tuple[int, int]  # (H, W)

    def open(self) -> np.ndarray:
        """The flows, memory-mapped read-only: float16 (P, 2, H, W)."""
        return np.load(self.path, mmap_mode="r")


@dataclass(frozen=True)
class FrameSource:
    """One frame-cache entry, as a WindowDataset knows it."""

    path: Path  # <cache_dir>/frames/<frame key>.frames
    frames: int
    shape: tuple[int, int, int]  # (C, H, W)

    @property
    def key(self) -> str:
        return self.path.stem

    def open(self) -> np.memmap:
        return np.memmap(self.path, dtype=np.uint8, mode="r", shape=(self.frames, *self.shape))


def load_flow_entry(path: Path, pairs: int, shape: tuple[int, int], skip: int) -> FlowEntry | None:
    """The entry at `path` if it exists and holds (pairs, 2, H, W) float16 flows, else None."""
    if not path.exists():
        return None
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError):
        log.warning("flow cache file %s is unreadable; rebuilding it", path)
        return None
    if arr.dtype != FLOW_DTYPE or tuple(arr.shape) != (pairs, 2, *shape):
        log.warning("flow cache file %s holds %s %s, not (%d, 2, %d, %d) float16; rebuilding it", path, arr.dtype,
                    tuple(arr.shape), pairs, *shape)
        return None
    return FlowEntry(path, pairs, skip, shape)


# --------------------------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------------------------
def _estimator_device(estimator: FlowEstimator) -> torch.device:
    p = next(estimator.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def batch_pairs_for(estimator: FlowEstimator, height: int, width: int) -> int:
    """Pairs per net call when building: bounded by a pixel budget (RAFT) or a fixed chunk (DIS)."""
    if estimator.net is None:
        return 256
    s = raft_scale(height, width)
    return max(1, min(_MAX_BATCH_PAIRS, _PIXEL_BUDGET // (height * s * width * s)))


@torch.no_grad()
def compute_flows(frames: np.ndarray, skip: int, estimator: FlowEstimator, out: np.ndarray,
                  on_pairs: Callable[[int], None] | None = None) -> None:
    """Fill out (P, 2, H, W) with the flows of frames (N, C, H, W) uint8: out[i] = flow(frame i -> frame i + skip)."""
    n = frames.shape[0]
    p = n - skip
    h, w = frames.shape[2:]
    step = batch_pairs_for(estimator, h, w)
    device = _estimator_device(estimator)
    was_training = estimator.training
    estimator.eval()
    try:
        for i0 in range(0, p, step):
            i1 = min(p, i0 + step)
            chunk = np.array(frames[i0:i1 + skip])  # frames i0 .. i1 - 1 + skip
            if estimator.net is None:
                pairs = np.stack([np.arange(i1 - i0), np.arange(i1 - i0) + skip], 1)
                flow = dis_flow(chunk, pairs, threads=estimator.dis_threads)
            else:
                x = torch.from_numpy(chunk).to(device, non_blocking=True).float() / 127.5 - 1.0
                flow = estimator(x[: i1 - i0], x[skip: skip + i1 - i0]).cpu().numpy()
            out[i0:i1] = flow.astype(FLOW_DTYPE)
            if on_pairs is not None:
                on_pairs(i1 - i0)
    finally:
        estimator.train(was_training)


def _build(source: FrameSource, skip: int, estimator: FlowEstimator, path: Path,
           on_pairs: Callable[[int], None] | None) -> FlowEntry:
    c, h, w = source.shape
    pairs = source.frames - skip
    with atomic_output(path) as tmp:  # `.<key>.tmp-<pid>-<hex>.npy`, renamed into place when complete
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=FLOW_DTYPE, shape=(pairs, 2, h, w))
        compute_flows(source.open(), skip, estimator, out, on_pairs)
        out.flush()
        del out
    return FlowEntry(path, pairs, skip, (h, w))


def get_or_build_flow(source: FrameSource, skip: int, estimator: FlowEstimator, cache_dir: str | os.PathLike[str], *,
                      lock: bool = False, on_pairs: Callable[[int], None] | None = None) -> tuple[FlowEntry, bool]:
    """(entry, built_now): the flows of `source` for `estimator` and `skip`, computed unless cached."""
    if source.frames <= skip:
        raise ValueError(f"{source.path}: {source.frames} frames, no pair {skip} apart")
    key = flow_cache_key(source.key, estimator.key, skip)
    path = flow_path(cache_dir, key)
    pairs, shape = source.frames - skip, source.shape[1:]
    entry = load_flow_entry(path, pairs, shape, skip)
    if entry is not None:
        touch(path)
        return entry, False
    with build_lock(cache_dir, f"flow-{key}", lock):
        entry = load_flow_entry(path, pairs, shape, skip)  # another process may have built it while we waited
        if entry is not None:
            return entry, False
        return _build(source, skip, estimator, path, on_pairs), True


@dataclass
class FlowCacheReport:
    built: int = 0
    reused: int = 0
    pairs_computed: int = 0

    def summary(self, estimator: FlowEstimator) -> str:
        return (f"flow cache ({estimator.kind}): {self.built} sources computed ({self.pairs_computed} pairs), "
                f"{self.reused} reused")


def ensure_flows(sources: Sequence[FrameSource], skip: int, estimator: FlowEstimator, cache_dir: str | os.PathLike[str],
                 *, rank: int = 0, world_size: int = 1, progress: bool = False,
                 report: FlowCacheReport | None = None) -> list[FlowEntry]:
    """The flow entries of `sources` (same order), computing the missing ones. With several ranks each starts at a
    different source and takes a per-entry lock, so no entry is computed twice."""
    from tqdm.auto import tqdm

    report = report if report is not None else FlowCacheReport()
    n = len(sources)
    missing = [i for i, s in enumerate(sources)
               if load_flow_entry(flow_path(cache_dir, flow_cache_key(s.key, estimator.key, skip)), s.frames - skip,
                                  s.shape[1:], skip) is None]
    total = sum(sources[i].frames - skip for i in missing)
    bar = tqdm(total=total, desc=f"optical flow ({estimator.kind})", unit="pair", leave=False,
               disable=None if (progress and missing) else True)
    entries: list[FlowEntry | None] = [None] * n
    offset = rank * n // max(1, world_size)
    try:
        for i in list(range(offset, n)) + list(range(offset)):
            entry, built = get_or_build_flow(sources[i], skip, estimator, cache_dir, lock=world_size > 1,
                                             on_pairs=bar.update)
            entries[i] = entry
            if built:
                report.built += 1
                report.pairs_computed += entry.pairs
            else:
                report.reused += 1
    finally:
        bar.close()
    return entries  # type: ignore[return-value]


def dataset_sources(ds: WindowDataset) -> list[FrameSource]:
    return [FrameSource(Path(p), n, tuple(s)) for p, n, s in zip(ds.paths, ds.frame_counts, ds.shapes)]


def attach_flow_cache(bundle: DataBundle, cfg: Config, estimator: FlowEstimator, *, rank: int = 0,
                      world_size: int = 1) -> FlowCacheReport:
    """Compute (or find) the flows of every source of the training and validation datasets, and make both datasets
    serve (frames, flow) items with the flows of their windows' encoder frames."""
    report = FlowCacheReport()
    progress = bool(cfg.log.progress) and rank == 0
    skip = cfg.data.frame_skip
    steps = cfg.encoder_frames - 1
    done: dict[str, FlowEntry] = {}
    for ds in (bundle.train, bundle.val):
        if ds is None:
            continue
        sources = dataset_sources(ds)
        todo = [s for s in sources if str(s.path) not in done]
        for s, e in zip(todo, ensure_flows(todo, skip, estimator, cfg.data.cache_dir, rank=rank, world_size=world_size,
                                           progress=progress, report=report)):
            done[str(s.path)] = e
        ds.set_flow([done[str(s.path)] for s in sources], steps)
    return report
