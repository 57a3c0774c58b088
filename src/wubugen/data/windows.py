"""Windows: the clips a dataset serves, as (source index, first frame) pairs.

A window holds `frames` frames spaced `skip` apart, so it covers `span = (frames - 1) * skip + 1` consecutive frames.
Windows start every `stride` frames and never cross a segment boundary: the end of a file, the start of the next clip
of a clip array, or (with a threshold > 0) a hard scene cut, where the mean absolute difference between a frame and the
one before exceeds the threshold (0-255 scale, measured on the cached frames).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WindowSpec:
    frames: int  # T = num_input_frames + num_predict_frames
    skip: int = 1  # frame_skip
    stride: int = 1  # window_stride

    def __post_init__(self) -> None:
        if self.frames < 1 or self.skip < 1 or self.stride < 1:
            raise ValueError(f"window frames, skip and stride must be positive: {self}")

    @property
    def span(self) -> int:
        """Consecutive source frames one window covers."""
        return (self.frames - 1) * self.skip + 1

    def offsets(self) -> np.ndarray:
        """Frame offsets of a window's frames from its start: (T,)."""
        return np.arange(self.frames, dtype=np.int64) * self.skip


def segments(n_frames: int, clip_starts: list[int] | None = None, diffs: np.ndarray | None = None,
             cut_threshold: float = 0.0) -> list[tuple[int, int]]:
    """Half-open frame ranges [a, b) that windows must stay inside."""
    cuts = {0, n_frames}
    cuts.update(s for s in (clip_starts or []) if 0 < s < n_frames)
    if cut_threshold > 0 and diffs is not None:
        cuts.update(int(i) for i in np.flatnonzero(np.asarray(diffs) > cut_threshold) if 0 < i < n_frames)
    bounds = sorted(cuts)
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def window_starts(segs: list[tuple[int, int]], spec: WindowSpec) -> np.ndarray:
    """First frames of all windows inside the segments, ascending: int64 (W,)."""
    parts = [np.arange(a, b - spec.span + 1, spec.stride, dtype=np.int64) for a, b in segs if b - a >= spec.span]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def count_windows(n_frames: int, spec: WindowSpec) -> int:
    """Windows in one uncut stretch of n_frames frames."""
    return 0 if n_frames < spec.span else (n_frames - spec.span) // spec.stride + 1


@dataclass(frozen=True)
class WindowTable:
    """All windows of a dataset: parallel arrays, one row per window."""

    source: np.ndarray  # int32 (W,): index into the dataset's sources
    start: np.ndarray  # int64 (W,): first frame

    def __len__(self) -> int:
        return len(self.start)

    def take(self, idx: np.ndarray) -> WindowTable:
        return WindowTable(self.source[idx], self.start[idx])

    @staticmethod
    def concat(per_source: list[np.ndarray]) -> WindowTable:
        """From each source's window starts (source i = position i in the list)."""
        if not per_source:
            return WindowTable(np.zeros(0, np.int32), np.zeros(0, np.int64))
        src = np.concatenate([np.full(len(s), i, dtype=np.int32) for i, s in enumerate(per_source)])
        return WindowTable(src, np.concatenate(per_source).astype(np.int64))
