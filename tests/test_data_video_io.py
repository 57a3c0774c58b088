"""Decoding and encoding helpers: resize policies, writers, read_clip."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wubugen.config import build_config
from wubugen.data import DecodeError, read_clip, write_gif, write_video
from wubugen.data.video_io import FrameFormat, SourceProps, fit_frame, read_video, scaled_size


def test_resize_policies() -> None:
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, 50:150] = 255  # white centre, black sides
    crop = fit_frame(img, FrameFormat(32, 32, 3, "center_crop"))
    assert crop.shape == (32, 32, 3) and crop.min() == 255  # the sides are cut away
    pad = fit_frame(img, FrameFormat(32, 32, 3, "pad"))
    assert pad.shape == (32, 32, 3) and pad[:8].max() == 0 and pad[16, 16].min() == 255  # black bars top and bottom
    stretch = fit_frame(img, FrameFormat(32, 32, 3, "stretch"))
    assert stretch.shape == (32, 32, 3) and stretch[:, 0].max() == 0 and stretch[:, 16].min() == 255
    gray = fit_frame(img[:, :, 0], FrameFormat(16, 16, 1, "stretch"))
    assert gray.shape == (16, 16, 1)
    assert scaled_size(1920, 1080, FrameFormat(64, 64, 3, "center_crop")) == (114, 64)
    assert scaled_size(1920, 1080, FrameFormat(64, 64, 3, "pad")) == (64, 36)


def test_write_video_round_trip(tmp_path: Path) -> None:
    frames = np.zeros((12, 31, 45, 3), np.uint8)  # odd size: padded for yuv420p
    for i in range(12):
        frames[i, :, 3 * i:3 * i + 6] = (255, 255, 255)
    path = write_video(tmp_path / "out.mp4", torch.from_numpy(frames), fps=12.5)
    assert not list(tmp_path.glob(".*")), "no temporary file left"
    props = SourceProps()
    got = list(read_video(path, FrameFormat(32, 46, 3, "stretch"), props))
    assert len(got) == 12 and props.codec in ("h264", "mpeg4") and props.fps == pytest.approx(12.5)
    assert (props.width, props.height) == (46, 32)
    exact = write_video(tmp_path / "exact.mkv", frames, 10, pix_fmt="yuv444p", crf=0)
    back = np.stack(list(read_video(exact, FrameFormat(31, 45, 3, "stretch"), SourceProps())))
    assert np.abs(back.astype(int) - frames).mean() < 3
    gif = write_gif(tmp_path / "out.gif", frames[..., :1], fps=10)
    assert len(list(read_video(gif, FrameFormat(31, 45, 1, "stretch"), SourceProps()))) == 12
    with pytest.raises(ValueError):
        write_video(tmp_path / "bad.mp4", frames[0], 10)  # (H, W, 3) is not (T, H, W, C) with C in 1, 3


def test_read_clip(tmp_path: Path) -> None:
    frames = np.stack([np.full((20, 20, 3), 10 * i, np.uint8) for i in range(12)])
    path = write_video(tmp_path / "ramp.mkv", frames, 10, pix_fmt="yuv444p", crf=0)
    cfg = build_config(overrides={"image_h": 16, "image_w": 16, "num_input_frames": 2, "num_predict_frames": 1,
                                  "frame_skip": 3})
    clip = read_clip(path, cfg)
    assert clip.shape == (3, 3, 16, 16) and clip.dtype == torch.uint8
    assert [round(float(clip[t].float().mean()) / 10) for t in range(3)] == [0, 3, 6]
    assert [round(float(f.float().mean()) / 10) for f in read_clip(path, cfg, num_frames=2, start=5)] == [5, 8]
    with pytest.raises(DecodeError, match="fewer than the 16 this clip needs"):
        read_clip(path, cfg, num_frames=6)


@pytest.mark.parametrize("all_cores", [True, False])
def test_decoders_never_use_frame_threads(all_cores: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Frame threads log from their own threads while PyAV frees the decoder with the GIL held: a deadlock on a
    corrupt file or an early stop. Whole-file and early-stopped decodes alike must ask for slice threads only."""
    import av

    frames = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    path = write_video(tmp_path / "noise.mp4", frames, 10)
    opened: list = []
    real_open = av.open

    def spy(*args, **kwargs):
        container = real_open(*args, **kwargs)
        opened.append(container.streams.video[0])  # kept alive past the close, to read what the reader set
        return container

    monkeypatch.setattr(av, "open", spy)
    assert len(list(read_video(path, FrameFormat(16, 16, 3, "stretch"), all_cores=all_cores))) == 8
    assert len(list(read_video(path, FrameFormat(16, 16, 3, "stretch"), max_frames=2, all_cores=all_cores))) == 2
    assert len(opened) == 2
    assert [s.thread_type for s in opened] == [av.codec.context.ThreadType.SLICE] * 2
