"""Bad and unusual input: one-line errors naming the file, exit code 2, no cache left behind; odd formats converted."""
from __future__ import annotations

import logging
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import VIDEOS
from wubugen.cli import main
from wubugen.config import build_config
from wubugen.data import DecodeError, build_datasets, write_video
from wubugen.errors import UserError

SHARED_TRAIN = VIDEOS / "train"


def moving_frames(t: int, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """(t, h, w, 3) uint8: a textured square sliding over noise (compresses to a realistic stream)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    out = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        f = np.roll(base, i, axis=1).copy()
        f[10:26, 4 + 2 * i:20 + 2 * i] = (255, 40, 40)
        out[i] = f
    return out


def encode(path: Path, frames: np.ndarray, codec: str, pix_fmt: str, in_fmt: str = "rgb24", *,
           rotation: int | None = None) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=10)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if rotation is not None:
            s.set_display_rotation(rotation)
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format=in_fmt)):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def cfg_for(tmp: Path, data, **kw):
    over = {"video_data_path": str(data), "cache_dir": str(tmp / "cache"), "image_h": 16, "image_w": 16,
            "num_input_frames": 3, "num_predict_frames": 1, "validation_split_fraction": 0, "num_workers": 0,
            "progress": False}
    over.update(kw)
    return build_config(overrides=over)


def cache_files(tmp: Path) -> list[Path]:
    d = tmp / "cache" / "frames"
    return sorted(d.iterdir()) if d.exists() else []


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("broken")
    good = write_video(d / "good.mp4", moving_frames(30), 10)
    data = good.read_bytes()
    files = {"good": good}
    files["truncated"] = d / "truncated.mp4"
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["zero"] = d / "zero.mp4"
    files["zero"].write_bytes(b"")
    files["text"] = d / "text.mp4"
    files["text"].write_text("this is not a video\n")
    files["short"] = write_video(d / "short.mp4", moving_frames(3), 10)
    # damaged packets in the middle: FFmpeg conceals them, our check must not
    corrupt = bytearray(data)
    rng = np.random.default_rng(0)
    for i in rng.integers(len(data) // 4, len(data) // 2, 300):  # inside the media data, not the index
        corrupt[i] = rng.integers(0, 256)
    files["corrupt"] = d / "corrupt.mp4"
    files["corrupt"].write_bytes(bytes(corrupt))
    # a Matroska file cut short: the container declares a duration but no frame count
    mkv = encode(d / "full.mkv", moving_frames(40), "libx264", "yuv420p")
    files["truncated_mkv"] = d / "truncated.mkv"
    files["truncated_mkv"].write_bytes(mkv.read_bytes()[: mkv.stat().st_size * 2 // 5])
    mkv.unlink()
    # a valid container whose video stream has no frames
    c = av.open(str(d / "no_frames.avi"), "w")
    s = c.add_stream("mpeg4", rate=10)
    s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
    c.start_encoding()
    c.close()
    files["no_frames"] = d / "no_frames.avi"
    return files


REASONS = {
    "truncated": "not a readable video",
    "zero": "not a readable video",
    "text": "not a readable video",
    "short": "3 frames, fewer than the 4 one window needs",
    "corrupt": "corrupted or truncated",
    "truncated_mkv": "truncated",
    "no_frames": "no video frames",
}


@pytest.mark.parametrize("kind", sorted(REASONS))
def test_bad_file_is_one_line_error_and_leaves_no_cache(kind: str, broken, tmp_path: Path) -> None:
    with pytest.raises(UserError) as e:
        build_datasets(cfg_for(tmp_path, broken[kind]))
    msg = str(e.value)
    assert "\n" not in msg and str(broken[kind]) in msg and REASONS[kind] in msg
    assert cache_files(tmp_path) == [], "a failed decode must not leave a cache file (or a temporary one)"


@pytest.mark.parametrize("kind", ["truncated", "zero", "text", "short", "corrupt", "no_frames"])
def test_bad_file_cli_exit_2(kind: str, broken, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["data", "inspect", str(broken[kind]), "--cache_dir", str(tmp_path / "cache"), "--image_h", "16",
                 "--image_w", "16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("wubugen: error: ") and str(broken[kind]) in err[-1] and REASONS[kind] in err[-1]
    assert cache_files(tmp_path) == []


def test_missing_path_and_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UserError, match="does not exist"):
        build_datasets(cfg_for(tmp_path, tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("x")
    with pytest.raises(UserError, match="holds no videos or frame folders"):
        build_datasets(cfg_for(tmp_path, tmp_path / "empty"))
    assert main(["data", "inspect", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"wubugen: error: {tmp_path / 'nope'}: video data path does not exist"


def test_folder_skips_unusable_with_one_warning(broken, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = broken["good"].parent
    with caplog.at_level(logging.WARNING, logger="wubugen.data"):
        b = build_datasets(cfg_for(tmp_path, folder))
    assert [Path(s.path).name for s in b.info.sources] == ["good.mp4"]
    assert len(b.train) == 30 - 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    for kind in REASONS:
        assert str(broken[kind]) in warnings[0].getMessage()
    assert {Path(u["path"]).name for u in b.info.unusable} == {broken[k].name for k in REASONS}
    assert len(cache_files(tmp_path)) == 1  # only the good file


def test_strict_data_turns_skips_into_errors(broken, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = broken["good"].parent
    with pytest.raises(DecodeError):
        build_datasets(cfg_for(tmp_path, folder, strict_data=True))
    code = main(["data", "inspect", str(folder), "--strict_data", "--cache_dir", str(tmp_path / "c2")])
    assert code == 2 and capsys.readouterr().err.count("wubugen: error:") == 1


def test_list_file(broken, tmp_path: Path) -> None:
    lst = tmp_path / "footage.txt"
    lst.write_text(f"# training clips\n{broken['good']}\n\n{broken['good'].name}  # again, relative\n")
    (tmp_path / broken["good"].name).write_bytes(broken["good"].read_bytes())
    b = build_datasets(cfg_for(tmp_path, lst))
    assert len(b.info.sources) == 1 and len(b.info.duplicates) == 1  # same content twice is used once
    bad = tmp_path / "bad.txt"
    bad.write_text("missing.mp4\n")
    with pytest.raises(UserError, match=r"bad.txt:1: missing.mp4 does not exist"):
        build_datasets(cfg_for(tmp_path, bad))


def test_validation_footage_inside_training_data_is_an_error(broken, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="also in the training data"):
        build_datasets(cfg_for(tmp_path, broken["good"].parent, validation_video_path=str(broken["good"])))


def test_grayscale_video_is_replicated_or_kept(tmp_path: Path) -> None:
    gray = np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, None, :], (8, 32, 1))
    path = encode(tmp_path / "gray.mkv", gray, "ffv1", "gray", "gray")
    b = build_datasets(cfg_for(tmp_path, path))
    x = b.train[0]
    assert x.shape == (4, 3, 16, 16) and torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    assert "grayscale source replicated to 3 channels" in b.info.sources[0].notes
    b1 = build_datasets(cfg_for(tmp_path, path, num_channels=1))
    assert b1.train[0].shape == (4, 1, 16, 16)
    assert torch.allclose(b1.train[0][:, 0].float(), x[:, 0].float(), atol=2)


def test_alpha_video_and_frames_are_composited_over_black(tmp_path: Path) -> None:
    rgba = np.zeros((6, 16, 16, 4), np.uint8)
    rgba[..., 1] = 200
    rgba[..., 3] = 255
    rgba[:, :, :8, 3] = 0  # left half transparent
    path = encode(tmp_path / "alpha.mkv", rgba, "ffv1", "bgra", "rgba")
    b = build_datasets(cfg_for(tmp_path, path))
    x = b.train[0]
    assert int(x[:, :, :, :8].max()) == 0 and int(x[:, 1, :, 8:].min()) == 200
    assert "alpha composited over black" in b.info.sources[0].notes
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(6):
        Image.fromarray(rgba[i], "RGBA").save(frames / f"f{i}.png")
    Image.fromarray(rgba[0, :, :, 1], "L").save(frames / "f6.png")  # a grayscale frame among colour ones
    xf = build_datasets(cfg_for(tmp_path, frames)).train[0]
    assert torch.equal(xf, x)


def test_palette_gif_with_transparency(tmp_path: Path) -> None:
    frames = []
    for i in range(5):
        img = Image.new("P", (16, 16), 0)
        img.putpalette([0, 0, 0, 250, 10, 10] + [0, 0, 0] * 254)
        img.paste(1, (i, 0, i + 8, 16))
        frames.append(img)
    path = tmp_path / "pal.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, transparency=0, loop=0,
                   disposal=2)
    b = build_datasets(cfg_for(tmp_path, path, num_input_frames=2))
    x = b.train[0]
    assert x.shape == (3, 3, 16, 16) and int(x[0, 0, :, 2:6].min()) > 200 and int(x[0, 0, :, 12:].max()) < 10


def test_mov_webm_and_rotated_footage(tmp_path: Path) -> None:
    frames = moving_frames(8, 32, 48)
    footage = tmp_path / "footage"
    footage.mkdir()
    encode(footage / "clip.mov", frames, "libx264", "yuv420p")
    encode(footage / "clip.webm", frames, "libvpx-vp9", "yuv420p")
    b = build_datasets(cfg_for(tmp_path, footage, image_h=32, image_w=48, resize="stretch"))
    assert sorted((Path(s.path).name, s.codec, s.frames) for s in b.info.sources) == [
        ("clip.mov", "h264", 8), ("clip.webm", "vp9", 8)]
    marker = np.zeros((6, 32, 48, 3), np.uint8)
    marker[:, :8, :8] = 255  # top-left corner
    rot = encode(tmp_path / "rot.mp4", marker, "libx264", "yuv420p", rotation=90)
    b = build_datasets(cfg_for(tmp_path, rot, image_h=48, image_w=32, resize="stretch"))
    (s,) = b.info.sources
    assert (s.width, s.height) == (32, 48) and "display rotation 90 deg applied" in s.notes
    x = b.train[0][0, 0]  # (48, 32): rotated 90 degrees counter-clockwise, the corner is now bottom-left
    assert x[-4, 2] > 200 and x[2, 2] < 50


def test_truncated_real_avi_and_gif(tmp_path: Path) -> None:
    if not SHARED_TRAIN.is_dir():
        pytest.skip(f"real footage not found at {SHARED_TRAIN}")
    for name, keep in (("pysot__bag.avi", 150_000), ("intel__preview_classroom.gif", 300_000)):
        cut = tmp_path / name
        cut.write_bytes((SHARED_TRAIN / name).read_bytes()[:keep])
        with pytest.raises(DecodeError, match="truncated|corrupted") as e:
            build_datasets(cfg_for(tmp_path, cut))
        assert str(cut) in str(e.value)
    assert cache_files(tmp_path) == []


def test_frame_folder_with_a_broken_image(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(moving_frames(1, 16, 16, seed=i)[0]).save(folder / f"{i:05d}.jpg")
    data = (folder / "00003.jpg").read_bytes()
    (folder / "00003.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(DecodeError) as e:
        build_datasets(cfg_for(tmp_path, folder))
    assert str(e.value).startswith(f"{folder}: frame 00003.jpg is an unreadable image")
    assert cache_files(tmp_path) == []


_DECODE_LOOP = """
import sys
import torch  # noqa: F401  (as in training: torch's thread pools beside FFmpeg's)
from wubugen.data.video_io import DecodeError, FrameFormat, read_video
for _ in range(300):
    for f in sys.argv[1:]:
        try:
            for _frame in read_video(f, FrameFormat(16, 16, 3, "stretch"), all_cores=True):
                pass
        except DecodeError:
            pass
"""


def test_damaged_files_decoded_in_a_loop_never_hang(broken) -> None:
    """Frame-threaded decoding of damaged files deadlocked (a frame thread logging an error waited for the GIL that
    PyAV held while freeing the decoder): with frame threads this test hung every time on a 2-core machine; with slice
    threads it takes about 10 s. Three loops at once keep the cores busy; each must finish well inside its limit."""
    import subprocess
    import sys

    files = [str(broken[k]) for k in ("corrupt", "no_frames", "truncated", "truncated_mkv")]
    procs = [subprocess.Popen([sys.executable, "-c", _DECODE_LOOP, *files]) for _ in range(3)]
    try:
        codes = [p.wait(timeout=90) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert codes == [0, 0, 0]
