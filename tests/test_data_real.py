"""The data pipeline on the real footage in ../shared/data: every file decodes, windows and splits are right.

All tests here share one cache (decoded once at 32x32, about 20 s on 2 cores); later builds only re-window.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA, VIDEOS
from wubugen.cli import main
from wubugen.config import build_config
from wubugen.data import build_datasets, make_loader, read_clip
from wubugen.data.cache import load_entry

pytestmark = pytest.mark.skipif(not (VIDEOS / "train").is_dir(), reason=f"real footage not found at {VIDEOS}")

CODECS = {"jpeg": "jpg", "png": "png"}  # MANIFEST codec -> what a frame folder reports


def manifest() -> dict[str, dict[str, str]]:
    with open(SHARED_DATA / "MANIFEST.csv", newline="") as f:
        return {row["file"]: row for row in csv.DictReader(f)}


def cfg_for(cache: str, **overrides):
    base = {"image_h": 32, "image_w": 32, "num_input_frames": 3, "num_predict_frames": 1, "cache_dir": cache,
            "num_workers": 0, "progress": False}
    base.update(overrides)
    return build_config(overrides=base)


@pytest.fixture(scope="module")
def full(cache: str):
    """Training folder plus the separate validation folder: decodes everything once."""
    cfg = cfg_for(cache, video_data_path=str(VIDEOS / "train"), validation_video_path=str(VIDEOS / "val"))
    return build_datasets(cfg)


def test_every_file_and_frame_folder_decodes(full) -> None:
    info = full.info
    rows = manifest()
    assert info.unusable == [] and info.duplicates == []
    by_name = {Path(s.path).name: s for s in info.sources}
    assert set(by_name) == set(rows), "every MANIFEST entry (47 files, 3 frame folders, 5 val clips) is a source"
    for name, row in rows.items():
        s = by_name[name]
        assert s.frames == int(row["frames"]), name
        assert (s.width, s.height) == (int(row["width"]), int(row["height"])), name
        assert s.codec == CODECS.get(row["codec"], row["codec"]), name
        if row["fps"]:
            assert s.fps == pytest.approx(float(row["fps"]), rel=1e-3), name
        assert s.kind == ("frames" if row["codec"] in CODECS else "video")
        assert s.role == ("val" if row["split"] == "val" else "train"), name
        assert s.windows == s.frames - 4 + 1, name  # 4-frame windows, stride 1, no scene cuts
        assert load_entry(Path(s.cache_file)).shape == (3, 32, 32)
    assert info.split_mode == "path"
    assert info.train_windows == sum(s.windows for s in info.sources if s.role == "train")
    assert info.val_windows == sum(s.windows for s in info.sources if s.role == "val")
    assert len(full.train) == info.train_windows and len(full.val) == info.val_windows


def test_items_are_uint8_windows(full) -> None:
    x = full.train[0]
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 32, 32)
    assert full.val[len(full.val) - 1].shape == (4, 3, 32, 32)
    # frames are real pictures, not blank
    assert x.float().std() > 5


def test_window_counts_with_skip_and_stride(cache: str, full) -> None:
    cfg = cfg_for(cache, video_data_path=str(VIDEOS / "train"), frame_skip=3, window_stride=5,
                  validation_split_fraction=0)
    b = build_datasets(cfg)
    assert b.info.cache_built == 0, "window settings must not rebuild the cache"
    span = 3 * 3 + 1
    for s in b.info.sources:
        assert s.windows == (s.frames - span) // 5 + 1
    src, frames = b.train.window(len(b.train) - 1)
    assert np.all(np.diff(frames) == 3) and frames[-1] < b.train.frame_counts[src]


def test_file_split_is_disjoint_and_near_fraction(cache: str, full) -> None:
    cfg = cfg_for(cache, video_data_path=str(VIDEOS / "train"))  # 50 sources, fraction 0.1: by whole files
    b = build_datasets(cfg)
    assert b.info.split_mode == "files"
    train_src = set(b.train.table.source.tolist())
    val_src = set(b.val.table.source.tolist())
    assert train_src and val_src and not train_src & val_src
    frac = b.info.val_windows / (b.info.val_windows + b.info.train_windows)
    assert 0.05 < frac < 0.15
    # same split on every rank, and again
    for rank, world in ((1, 2), (3, 4)):
        other = build_datasets(cfg, rank=rank, world_size=world)
        assert np.array_equal(other.val.table.start, b.val.table.start)
        assert np.array_equal(other.train.table.source, b.train.table.source)


def test_time_split_on_one_long_file_shares_no_frame(cache: str, full) -> None:
    path = VIDEOS / "train" / "intel__bottle-detection.mp4"  # 1189 frames
    cfg = cfg_for(cache, video_data_path=str(path), num_input_frames=10, num_predict_frames=3, frame_skip=2,
                  validation_split_fraction=0.2, val_block_size=30)
    b = build_datasets(cfg)
    assert b.info.split_mode == "time" and b.info.cache_built == 0
    span = 12 * 2 + 1
    train_frames = np.zeros(1189, bool)
    for i in range(len(b.train)):
        s = int(b.train.table.start[i])
        train_frames[s:s + span] = True
    for i in range(len(b.val)):
        s = int(b.val.table.start[i])
        assert not train_frames[s:s + span].any(), "a validation window shares a frame with a training window"
    assert b.info.guard_dropped > 0
    assert 0.15 < len(b.val) / (len(b.val) + len(b.train) + b.info.guard_dropped) < 0.3


def test_scene_cut_windows_do_not_straddle(cache: str, full) -> None:
    path = VIDEOS / "train" / "torchcodec__nasa_13013.mp4"  # a hard cut at frame 202
    cfg = cfg_for(cache, video_data_path=str(path), scene_cut_threshold=40, validation_split_fraction=0)
    b = build_datasets(cfg)
    (src,) = b.info.sources
    assert src.scene_cuts == 1 and src.windows == (202 - 3) + (325 - 202 - 3)
    for i in range(len(b.train)):
        _, frames = b.train.window(i)
        assert not (frames[0] < 202 <= frames[-1])


def test_loader_with_workers_over_real_footage(cache: str, full) -> None:
    cfg = cfg_for(cache, video_data_path=str(VIDEOS / "train"), validation_video_path=str(VIDEOS / "val"),
                  num_workers=2, batch_size=8, augment_flip=True, augment_random_crop=True)
    b = build_datasets(cfg)
    loader = make_loader(b.train, cfg, train=True, epoch=1, pin_memory=False)
    batches = [x.frames for _, x in zip(range(3), loader)]
    assert all(x.shape == (8, 4, 3, 32, 32) and x.dtype == torch.uint8 for x in batches)
    cfg0 = cfg_for(cache, video_data_path=str(VIDEOS / "train"), validation_video_path=str(VIDEOS / "val"),
                   num_workers=0, batch_size=8, augment_flip=True, augment_random_crop=True)
    again = [x.frames for _, x in zip(range(3), make_loader(b.train, cfg0, train=True, epoch=1, pin_memory=False))]
    assert all(torch.equal(a, c) for a, c in zip(batches, again)), "workers must not change the data"


def test_read_clip_from_real_files() -> None:
    cfg = build_config(overrides={"image_h": 48, "image_w": 64, "frame_skip": 2})
    clip = read_clip(VIDEOS / "val" / "sam2__01_dog.mp4", cfg)
    assert clip.shape == (4, 3, 48, 64) and clip.dtype == torch.uint8
    frames = read_clip(VIDEOS / "train" / "realbasicvsr__demo_000", cfg, num_frames=2)
    assert frames.shape == (2, 3, 48, 64)


def test_inspect_cli_lists_every_file(cache: str, full, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["data", "inspect", str(VIDEOS / "train"), "--image_h", "32", "--image_w", "32",
                 "--cache_dir", cache, "--validation_video_path", str(VIDEOS / "val")])
    out = capsys.readouterr().out
    assert code == 0
    for name in manifest():
        assert name in out
    assert "55 usable sources" in out and "separate validation path" in out
