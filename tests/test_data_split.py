"""Splits: no shared frame between training and validation windows, near the fraction, rank- and order-free."""
from __future__ import annotations

import numpy as np
import pytest

from wubugen.data.split import choose_mode, shares_frames, split
from wubugen.data.windows import WindowSpec, segments, window_starts
from wubugen.errors import UserError


def make_sources(rng: np.random.Generator, n: int, spec: WindowSpec):
    frames = [int(f) for f in rng.integers(spec.span, 400, n)]
    windows = [window_starts(segments(f), spec) for f in frames]
    keys = [f"content-{rng.integers(1 << 40)}" for _ in range(n)]
    return windows, keys, frames


@pytest.mark.parametrize("trial", range(25))
def test_time_split_shares_no_frame(trial: int) -> None:
    rng = np.random.default_rng(trial)
    spec = WindowSpec(int(rng.integers(1, 14)), int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    windows, keys, frames = make_sources(rng, int(rng.integers(1, 5)), spec)
    frac = float(rng.uniform(0.05, 0.4))
    total = sum(len(w) for w in windows)
    try:
        r = split(windows, keys, frames, fraction=frac, mode="time", block=int(rng.integers(1, 40)),
                  span=spec.span, seed=trial)
    except UserError:
        assert total < 4 * spec.span  # only when there is too little footage to split at all
        return
    for tr, va, f in zip(r.train, r.val, frames):
        used = np.zeros(f, bool)
        for s in va:
            used[s:s + spec.span] = True
        for s in tr:
            assert not used[s:s + spec.span].any()
        gaps = np.abs(tr[:, None] - va[None, :]) if len(tr) and len(va) else np.zeros(0)
        assert gaps.size == 0 or gaps.min() >= spec.span  # starts >= (T-1)*skip + 1 apart
    assert r.n_val >= max(1, round(frac * total))
    assert r.n_train + r.n_val + r.guard_dropped == total


def test_split_independent_of_source_order_and_rank() -> None:
    rng = np.random.default_rng(5)
    spec = WindowSpec(4, 1, 1)
    windows, keys, frames = make_sources(rng, 12, spec)
    for mode in ("files", "time"):
        a = split(windows, keys, frames, fraction=0.2, mode=mode, block=10, span=spec.span, seed=42)
        perm = rng.permutation(12)
        b = split([windows[i] for i in perm], [keys[i] for i in perm], [frames[i] for i in perm], fraction=0.2,
                  mode=mode, block=10, span=spec.span, seed=42)
        for j, i in enumerate(perm):
            assert np.array_equal(a.val[i], b.val[j]) and np.array_equal(a.train[i], b.train[j])
        c = split(windows, keys, frames, fraction=0.2, mode=mode, block=10, span=spec.span, seed=43)
        assert any(not np.array_equal(x, y) for x, y in zip(a.val, c.val)), "the seed changes the split"


def test_file_split_whole_files_near_fraction() -> None:
    rng = np.random.default_rng(1)
    spec = WindowSpec(13, 1, 1)
    windows, keys, frames = make_sources(rng, 40, spec)
    r = split(windows, keys, frames, fraction=0.1, mode="files", block=20, span=spec.span, seed=0)
    assert r.mode == "files" and r.guard_dropped == 0
    for tr, va, w in zip(r.train, r.val, windows):
        assert (len(tr), len(va)) in ((len(w), 0), (0, len(w)))
    assert abs(r.n_val / (r.n_val + r.n_train) - 0.1) < 0.03


def test_auto_mode_and_edge_cases() -> None:
    assert choose_mode("auto", 47, 0.1) == "files"
    assert choose_mode("auto", 5, 0.1) == "time"
    assert choose_mode("auto", 1, 0.5) == "time"
    with pytest.raises(UserError, match="at least 2"):
        choose_mode("files", 1, 0.1)
    spec = WindowSpec(4)
    w = [window_starts(segments(30), spec)]
    r = split(w, ["k"], [30], fraction=0.0, mode="auto", block=5, span=4, seed=0)
    assert r.mode == "none" and r.n_train == 27 and r.n_val == 0
    with pytest.raises(UserError, match="too little footage"):
        split([window_starts(segments(5), spec)], ["k"], [5], fraction=0.5, mode="time", block=5, span=4, seed=0)


def test_shares_frames() -> None:
    starts = np.arange(0, 30)
    hit = shares_frames(starts, np.array([10]), span=4, n_frames=40)
    assert np.flatnonzero(hit).tolist() == [7, 8, 9, 10, 11, 12, 13]


def test_segments_and_windows() -> None:
    diffs = np.zeros(50)
    diffs[20] = 90.0
    assert segments(50, [0, 40], diffs, 30.0) == [(0, 20), (20, 40), (40, 50)]
    assert segments(50, [0], diffs, 0.0) == [(0, 50)]
    spec = WindowSpec(3, 2, 4)  # span 5
    starts = window_starts([(0, 20), (20, 40), (40, 50)], spec)
    assert starts.tolist() == [0, 4, 8, 12, 20, 24, 28, 32, 40, 44]
