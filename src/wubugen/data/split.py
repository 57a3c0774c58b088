"""Train/validation split without leakage, the same on every DDP rank.

The split depends only on the footage (each source's content fingerprint and window starts) and the seed: never on the
rank, the file paths or their order (the original split differently on each rank and let blocks overlap and border
training windows).

* files: whole sources go to validation. Going through them in an order drawn from hash(seed, fingerprint), each one
  that keeps the validation window count within the target (fraction x all windows) is taken, then the one that
  brings the count closest to the target, if any does. At least one source, and at least one left for training.
* time: each source's windows are cut into consecutive blocks of `block` windows (smaller when the target is smaller);
  blocks are drawn in hash(seed, fingerprint, block index) order until the fraction is reached. Then every training
  window that would share a frame with a validation window, i.e. starts less than `span` frames from one, is dropped:
  this guard leaves (T - 1) * frame_skip frames of start positions between the two sets.
* auto: files when there are at least two sources and `fraction * sources >= 1`, so that whole files can come close
  to the fraction; otherwise time.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from wubugen.errors import UserError


@dataclass
class SplitResult:
    mode: str  # "none", "files", "time" or "path" (a separate validation path)
    train: list[np.ndarray]  # per source: training window starts (int64, ascending)
    val: list[np.ndarray]  # per source: validation window starts
    guard_dropped: int = 0  # training windows dropped because they would share frames with validation windows

    @property
    def n_train(self) -> int:
        return int(sum(len(t) for t in self.train))

    @property
    def n_val(self) -> int:
        return int(sum(len(v) for v in self.val))


def _rank_key(*parts: object) -> bytes:
    return hashlib.sha256(":".join(map(str, parts)).encode()).digest()


def choose_mode(mode: str, n_sources: int, fraction: float) -> str:
    if mode == "auto":
        return "files" if n_sources >= 2 and fraction * n_sources >= 1 else "time"
    if mode == "files" and n_sources < 2:
        raise UserError(f"--val_split_mode files needs at least 2 usable files, found {n_sources}; use time blocks")
    return mode


def split(
    windows: list[np.ndarray],
    keys: list[str],
    frames: list[int],
    *,
    fraction: float,
    mode: str,
    block: int,
    span: int,
    seed: int,
) -> SplitResult:
    """Split each source's window starts. keys: content fingerprints; frames: frames per source."""
    empty = [np.zeros(0, np.int64) for _ in windows]
    if fraction <= 0:
        return SplitResult("none", [w.copy() for w in windows], empty)
    used = choose_mode(mode, len(windows), fraction)
    if used == "files":
        result = split_files(windows, keys, fraction=fraction, seed=seed)
    else:
        result = split_time(windows, keys, frames, fraction=fraction, block=block, span=span, seed=seed)
    if result.n_train == 0:
        total = sum(len(w) for w in windows)
        raise UserError(
            f"too little footage to hold out validation: {total} windows leave none for training after the "
            f"{result.mode} split; lower --validation_split_fraction, set it to 0, or give --validation_video_path"
        )
    return result


def split_files(windows: list[np.ndarray], keys: list[str], *, fraction: float, seed: int) -> SplitResult:
    n = len(windows)
    order = sorted(range(n), key=lambda i: _rank_key("files", seed, keys[i]))
    counts = [len(w) for w in windows]
    target = fraction * sum(counts)
    val_set: set[int] = set()
    got = 0
    for i in order:  # every file that still fits under the target
        if got + counts[i] <= target and len(val_set) < n - 1:
            val_set.add(i)
            got += counts[i]
    rest = [i for i in order if i not in val_set]
    if len(rest) > 1 or not val_set:  # then the one file that brings the count closest, if it does
        best = min(rest, key=lambda i: abs(got + counts[i] - target))
        if not val_set or abs(got + counts[best] - target) < abs(got - target):
            val_set.add(best)
    empty = np.zeros(0, np.int64)
    train = [empty if i in val_set else windows[i].copy() for i in range(n)]
    val = [windows[i].copy() if i in val_set else empty for i in range(n)]
    return SplitResult("files", train, val)


def split_time(
    windows: list[np.ndarray],
    keys: list[str],
    frames: list[int],
    *,
    fraction: float,
    block: int,
    span: int,
    seed: int,
) -> SplitResult:
    total = sum(len(w) for w in windows)
    target = max(1, round(fraction * total))
    block = max(1, min(block, target))
    candidates = [(i, j) for i, w in enumerate(windows) for j in range((len(w) + block - 1) // block)]
    candidates.sort(key=lambda c: _rank_key("time", seed, keys[c[0]], c[1]))
    chosen: list[set[int]] = [set() for _ in windows]
    got = 0
    for i, j in candidates:
        if got >= target:
            break
        chosen[i].add(j)
        got += len(windows[i][j * block:(j + 1) * block])
    train, val = [], []
    dropped = 0
    for i, w in enumerate(windows):
        in_val = np.zeros(len(w), dtype=bool)
        for j in chosen[i]:
            in_val[j * block:(j + 1) * block] = True
        v = w[in_val]
        rest = w[~in_val]
        keep = ~shares_frames(rest, v, span, frames[i])
        dropped += int((~keep).sum())
        train.append(rest[keep])
        val.append(v)
    return SplitResult("time", train, val, dropped)


def shares_frames(starts: np.ndarray, other: np.ndarray, span: int, n_frames: int) -> np.ndarray:
    """For each window in `starts`: does its frames [s, s + span) meet any window of `other`? bool (len(starts),)."""
    if len(other) == 0 or len(starts) == 0:
        return np.zeros(len(starts), dtype=bool)
    edges = np.zeros(n_frames + span + 1, dtype=np.int64)
    np.add.at(edges, other, 1)
    np.add.at(edges, other + span, -1)
    covered = np.cumsum(edges)[: n_frames + span] > 0  # frames used by `other`
    prefix = np.concatenate([[0], np.cumsum(covered)])
    return (prefix[starts + span] - prefix[starts]) > 0
