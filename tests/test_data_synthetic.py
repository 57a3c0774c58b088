"""The synthetic demo footage (the default training data) and Moving MNIST."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import DIGITS
from wubugen.cli import main
from wubugen.config import build_config
from wubugen.data import build_datasets, make_loader
from wubugen.data.moving_mnist import generate, trajectories
from wubugen.data.synthetic import DEMO_SEED, DEMO_VERSION, render_clip

PINNED_DEMO_DIGEST = "86a927961dca2386"


def test_demo_is_default_built_once(tmp_path: Path) -> None:
    cfg = build_config("tiny", overrides={"cache_dir": str(tmp_path), "progress": False})
    b = build_datasets(cfg)
    assert b.info.demo and b.info.unusable == []
    (demo_dir,) = tmp_path.glob("demo_*")
    clips = sorted(demo_dir.glob("clip_*"))
    assert all(c.is_dir() and len(list(c.glob("frame_*.png"))) == cfg.data.demo_clip_frames for c in clips)
    assert len(clips) == cfg.data.demo_num_clips == len(b.info.sources)
    assert all(s.frames == cfg.data.demo_clip_frames for s in b.info.sources)
    assert b.train[0].shape == (3, 3, 32, 32)
    mtimes = [c.stat().st_mtime_ns for c in clips]
    again = build_datasets(cfg)
    assert again.info.cache_built == 0 and [c.stat().st_mtime_ns for c in clips] == mtimes
    assert not list(tmp_path.glob(".demo_*")), "no temporary folder left"
    batch = next(iter(make_loader(b.train, cfg, train=True, pin_memory=False)))
    assert batch.frames.shape[0] == cfg.train.batch_size and batch.flow is None


def test_demo_clips_move_and_vary() -> None:
    clip = render_clip(np.random.default_rng(0), 30, 64, 64).astype(np.float32)
    assert clip.shape == (30, 64, 64, 3)
    motion = np.abs(np.diff(clip, axis=0)).mean(axis=(1, 2, 3))
    assert (motion > 0.05).all(), "something moves in every frame"
    assert clip.std(axis=(0, 1, 2)).min() > 10, "colourful, not flat"
    other = render_clip(np.random.default_rng(1), 30, 64, 64).astype(np.float32)
    assert np.abs(clip - other).mean() > 10


def test_demo_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["data", "demo", str(out), "--demo_num_clips", "2", "--demo_clip_frames", "10", "--image_h", "24",
                 "--image_w", "40"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["clip_000", "clip_001"]
    cfg = build_config(overrides={"video_data_path": str(out), "image_h": 24, "image_w": 40, "cache_dir":
                                  str(tmp_path / "c"), "validation_split_fraction": 0, "progress": False})
    b = build_datasets(cfg)
    assert [s.frames for s in b.info.sources] == [10, 10] and (b.info.sources[0].width, b.info.sources[0].height) == (
        40, 24)
    capsys.readouterr()
    assert main(["data", "demo", str(out)]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err


def test_demo_bytes_identical_across_processes_and_threads(tmp_path: Path) -> None:
    """Tests and the quickstart's figures rest on the demo footage: two builds in separate processes with different
    thread counts must write the same bytes (the codec-written footage of earlier versions did not)."""
    outs = []
    for threads in ("1", "2"):
        out = tmp_path / f"demo{threads}"
        env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        subprocess.run([sys.executable, "-m", "wubugen", "data", "demo", str(out), "--demo_num_clips", "2",
                        "--demo_clip_frames", "6", "--image_h", "40", "--image_w", "56"], env=env, check=True,
                       capture_output=True)
        outs.append({p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))})
    assert len(outs[0]) == 12 and outs[0] == outs[1]


def test_demo_pixels_are_pinned() -> None:
    """The renderer's output, pinned by a digest: a change to it must bump DEMO_VERSION (the cache key) on purpose."""
    clip = render_clip(np.random.default_rng([DEMO_SEED, 0]), 8, 32, 48)
    assert hashlib.sha256(clip.tobytes()).hexdigest()[:16] == PINNED_DEMO_DIGEST, f"DEMO_VERSION is {DEMO_VERSION}"


def test_moving_mnist_protocol() -> None:
    rng = np.random.default_rng(0)
    pos = trajectories(rng, 500, 20, 36).astype(float)
    assert pos.min() >= 0 and pos.max() <= 36
    steps = np.linalg.norm(np.diff(pos, axis=1), axis=-1)
    free = steps[(pos[:, 1:] > 0).all(-1) & (pos[:, 1:] < 36).all(-1) & (pos[:, :-1] > 0).all(-1)
                 & (pos[:, :-1] < 36).all(-1)]
    assert abs(np.median(free) - 3.6) < 0.6  # 0.1 of the 36 px range per frame (integer-truncated)
    digits = np.zeros((2, 28, 28), np.uint8)
    digits[0, 4:24, 4:24] = 100
    digits[1, 10:18, 10:18] = 250
    seq = generate(digits, 50, seed=3)
    assert seq.shape == (50, 20, 64, 64) and seq.dtype == np.uint8
    assert set(np.unique(seq)) <= {0, 100, 250}  # max compositing: never a sum
    area = (seq > 0).sum(axis=(2, 3))
    assert area.max() <= 2 * 400 and area.min() >= 64


def test_moving_mnist_cli_and_loading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if DIGITS.is_file():
        digits = DIGITS
    else:
        digits = tmp_path / "digits.npy"
        np.save(digits, np.random.default_rng(0).integers(0, 256, (10, 28, 28), dtype=np.uint8))
    out = tmp_path / "mm.npy"
    assert main(["data", "moving-mnist", str(out), "--digits", str(digits), "--num_sequences", "12"]) == 0
    arr = np.load(out)
    assert arr.shape == (12, 20, 64, 64) and arr.dtype == np.uint8 and arr.max() > 200
    cfg = build_config(overrides={"video_data_path": str(out), "image_h": 64, "image_w": 64, "num_channels": 1,
                                  "num_input_frames": 10, "num_predict_frames": 10, "cache_dir": str(tmp_path / "c"),
                                  "validation_split_fraction": 0, "progress": False})
    b = build_datasets(cfg)
    assert len(b.train) == 12  # one 20-frame window per sequence, none across sequences
    assert torch.equal(b.train[3][:, 0], torch.from_numpy(arr[3]))
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((3, 5), np.float32))
    capsys.readouterr()
    assert main(["data", "moving-mnist", str(out), "--digits", str(bad)]) == 2
    assert "expected digits of shape" in capsys.readouterr().err
