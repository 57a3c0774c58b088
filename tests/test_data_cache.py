"""The frame cache: keyed by content and pixel settings, written atomically, shared safely by concurrent ranks."""
from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from wubugen.config import build_config
from wubugen.data import build_datasets, write_video
from wubugen.data.cache import load_entry


def clip(t: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.repeat(rng.integers(0, 256, (1, 24, 32, 3), dtype=np.uint8), t, axis=0) // 2 + \
        np.arange(t, dtype=np.uint8)[:, None, None, None] * 4


@pytest.fixture(scope="module")
def footage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("footage")
    for i in range(4):
        write_video(d / f"v{i}.mp4", clip(12 + i, i), 10)
    return d


def cfg_for(data: Path, cache: Path, **kw):
    over = {"video_data_path": str(data), "cache_dir": str(cache), "image_h": 16, "image_w": 16,
            "num_input_frames": 2, "num_predict_frames": 1, "validation_split_fraction": 0, "progress": False}
    over.update(kw)
    return build_config(overrides=over)


def test_rebuilt_only_when_content_or_pixel_settings_change(footage: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = build_datasets(cfg_for(footage, cache))
    assert (first.info.cache_built, first.info.cache_reused) == (4, 0)
    again = build_datasets(cfg_for(footage, cache, num_input_frames=5, frame_skip=2, window_stride=3,
                                   validation_split_fraction=0.3, augment_flip=True, scene_cut_threshold=10))
    assert (again.info.cache_built, again.info.cache_reused) == (0, 4)
    for change in ({"image_h": 24}, {"resize": "pad"}, {"num_channels": 1}):
        assert build_datasets(cfg_for(footage, cache, **change)).info.cache_built == 4, change
    # the key is the content, not the path: a renamed copy reuses the entries
    moved = tmp_path / "moved"
    shutil.copytree(footage, moved)
    assert build_datasets(cfg_for(moved, cache)).info.cache_built == 0
    write_video(moved / "v0.mp4", clip(12, 99), 10)  # same name, new content
    assert build_datasets(cfg_for(moved, cache)).info.cache_built == 1
    entries = sorted((cache / "frames").glob("*.frames"))
    assert len(entries) == 4 * 4 + 1 and not list((cache / "frames").glob(".*"))
    e = load_entry(entries[0])
    assert e.open().shape == (e.frames, *e.shape) and len(e.diffs) == e.frames


def test_concurrent_ranks_decode_each_file_once(footage: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    results: dict[int, object] = {}

    def rank(r: int) -> None:
        results[r] = build_datasets(cfg_for(footage, cache, validation_split_fraction=0.25), rank=r, world_size=2)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    a, b = results[0], results[1]
    assert a.info.cache_built + b.info.cache_built == 4, "every file decoded exactly once across ranks"
    assert np.array_equal(a.train.table.start, b.train.table.start)
    assert np.array_equal(a.val.table.source, b.val.table.source)
    assert len(list((cache / "frames").glob("*.frames"))) == 4


def test_data_cache_command_lists_and_prunes_unused_entries(footage: Path, tmp_path: Path, capsys) -> None:
    import os
    import time

    from wubugen.cli import main

    cache = tmp_path / "cache"
    build_datasets(cfg_for(footage, cache))  # 4 entries at 16x16
    build_datasets(cfg_for(footage, cache, image_h=24))  # 4 more at 24x16
    old = time.time() - 10 * 86400
    for p in (cache / "frames").glob("*.frames"):
        os.utime(p, (old, old))
    stale_tmp = cache / "frames" / ".abc.frames.tmp-1-deadbeef"  # left by a killed build
    stale_tmp.write_bytes(b"x" * 10)
    os.utime(stale_tmp, (old, old))
    fresh_tmp = cache / "frames" / ".def.frames.tmp-2-feedbeef"  # a build in progress: never touched
    fresh_tmp.write_bytes(b"y")

    build_datasets(cfg_for(footage, cache))  # cache hits mark the 16x16 entries as used now
    assert main(["data", "cache", "--cache_dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "frames         8 entries" in out and "temporary      2 entries" in out

    assert main(["data", "cache", "--cache_dir", str(cache), "--prune_days", "5", "--dry_run"]) == 0
    assert "would remove 5 files" in capsys.readouterr().out
    assert len(list((cache / "frames").glob("*.frames"))) == 8

    assert main(["data", "cache", "--cache_dir", str(cache), "--prune_days", "5"]) == 0
    assert "removed 5 files" in capsys.readouterr().out
    assert not stale_tmp.exists() and fresh_tmp.exists()
    assert build_datasets(cfg_for(footage, cache)).info.cache_built == 0  # the used ones stayed
    assert build_datasets(cfg_for(footage, cache, image_h=24)).info.cache_built == 4  # the unused ones went

    assert main(["data", "cache", "--cache_dir", str(cache), "--clear"]) == 0
    assert not list((cache / "frames").glob("*.frames"))
    assert main(["data", "cache", "--cache_dir", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
