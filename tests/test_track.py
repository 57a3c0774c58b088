"""Trackers, media files and the report plot."""
import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from wubugen import media
from wubugen.config import LogConfig
from wubugen.errors import UserError
from wubugen.track import LocalTracker, MultiTracker, NullTracker, build_tracker
from wubugen.track.report import plot_losses, read_metrics


def strict_json(line):
    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(line, parse_constant=no_constants)


def frames(t, h, w, c=3, seed=0):
    """(T, H, W, C) uint8 with clearly different frames (GIF writers merge identical ones)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(t, h, w, c), dtype=np.uint8)


def decode_mp4(path):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def gif_frames(path):
    with Image.open(path) as im:
        n = im.n_frames
        size = im.size
        loop = im.info.get("loop")
    return n, size, loop


# ---- media -----------------------------------------------------------------------------------------------------------
def test_clip_grid_layout_and_grey():
    clips = torch.zeros(2, 3, 1, 5, 7, dtype=torch.uint8)
    clips[1, 2] = 100  # second clip, third frame
    g = media.clip_grid(clips)
    sep = media.SEPARATOR_PX
    assert g.shape == (2 * 5 + sep, 3 * 7 + 2 * sep, 3) and g.dtype == np.uint8
    assert (g[5:5 + sep] == 255).all() and (g[:, 7:7 + sep] == 255).all()  # separator lines
    assert (g[5 + sep:, 2 * (7 + sep):] == 100).all()  # grey repeated to RGB, in the right cell
    assert (g[:5, :7] == 0).all()
    with pytest.raises(ValueError, match="uint8"):
        media.clip_grid(torch.zeros(1, 1, 3, 4, 4))


def test_to_uint8_maps_minus_one_one():
    assert media.to_uint8(torch.tensor([-1.0, 0.0, 1.0, 2.0])).tolist() == [0, 128, 255, 255]


@pytest.mark.parametrize("h,w", [(16, 24), (17, 33)])
def test_png_gif_mp4_decode_back(tmp_path, h, w):
    f = frames(5, h, w)
    media.save_png(tmp_path / "a.png", f[0])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), f[0])  # lossless

    media.save_gif(tmp_path / "a.gif", f, fps=10)
    assert gif_frames(tmp_path / "a.gif") == (5, (w, h), 0)  # loop 0: forever

    media.save_mp4(tmp_path / "a.mp4", f, fps=10)
    dec = decode_mp4(tmp_path / "a.mp4")
    assert len(dec) == 5
    assert dec[0].shape == (h + h % 2, w + w % 2, 3)  # odd sizes padded to even (yuv420p)
    with av.open(str(tmp_path / "a.mp4")) as c:
        assert c.streams.video[0].codec_context.name in ("h264", "mpeg4")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_mp4_is_a_faithful_video(tmp_path):
    f = np.zeros((4, 32, 32, 1), dtype=np.uint8)
    f[:, 8:24, 8:24] = np.array([50, 100, 150, 200], dtype=np.uint8)[:, None, None, None]  # grey square brightening
    media.save_mp4(tmp_path / "g.mp4", f, fps=8)
    dec = decode_mp4(tmp_path / "g.mp4")
    centres = [int(d[16, 16].mean()) for d in dec]
    assert all(abs(c - e) <= 6 for c, e in zip(centres, (50, 100, 150, 200)))


def test_save_clips_by_suffix(tmp_path):
    clips = torch.from_numpy(np.stack([frames(3, 10, 12, 3, seed=s).transpose(0, 3, 1, 2) for s in range(2)]))  # (2,3,3,10,12)
    media.save_clips(tmp_path / "c.png", clips)
    assert Image.open(tmp_path / "c.png").size == (3 * 12 + 2 * 2, 2 * 10 + 2)
    media.save_clips(tmp_path / "c.gif", clips, fps=4)
    assert gif_frames(tmp_path / "c.gif")[:2] == (3, (2 * 12 + 2, 10))
    media.save_clips(tmp_path / "c.mp4", clips, fps=4)
    dec = decode_mp4(tmp_path / "c.mp4")
    assert len(dec) == 3 and dec[0].shape == (10, 26, 3)
    with pytest.raises(UserError, match=r"\.png, \.gif, \.mp4"):
        media.save_clips(tmp_path / "c.avi", clips)


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    media.save_png(tmp_path / "x.png", frames(1, 8, 8)[0])
    before = (tmp_path / "x.png").read_bytes()

    def crash(self, fp, *a, **kw):
        Path(fp).write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        media.save_png(tmp_path / "x.png", frames(1, 8, 8, seed=1)[0])
    assert (tmp_path / "x.png").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_atomic_writes_replace_whole_files_and_clean_up(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "notes.json"  # the folder is created
    assert media.atomic_write_text(target, "first\n") == target and target.read_text() == "first\n"
    synced = []
    real_fsync = media.os.fsync
    monkeypatch.setattr(media.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    media.atomic_write_bytes(target, b"second\n")
    assert target.read_bytes() == b"second\n" and len(synced) == 2  # the file, then its directory
    with pytest.raises(RuntimeError, match="boom"):
        with media.atomic_output(target) as tmp:
            assert tmp.parent == target.parent and tmp.suffix == ".json"
            assert tmp.name.startswith(".notes.tmp-") and not tmp.exists()
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"second\n"  # the old file is untouched
    assert [p.name for p in target.parent.iterdir()] == ["notes.json"]  # no temp file left


def test_media_is_a_bottom_layer_and_data_reexports_it():
    import wubugen.data as data

    assert data.write_video is media.write_video and data.write_gif is media.write_gif
    assert data.to_uint8 is media.to_uint8
    code = ("import sys, wubugen.media; bad = sorted(m for m in sys.modules if m == 'av' or m.startswith(("
            "'wubugen.data', 'wubugen.models', 'wubugen.train', 'wubugen.eval', 'wubugen.track'))); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"  # PyAV is imported only when a video is written


def test_frame_checks_and_grey_gif(tmp_path):
    with pytest.raises(TypeError, match="uint8"):
        media.write_video(tmp_path / "f.mp4", np.zeros((2, 4, 4, 3), np.float32), 8)
    with pytest.raises(ValueError, match="uint8"):
        media.save_gif(tmp_path / "f.gif", np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="no frames"):
        media.gif_bytes(np.zeros((0, 4, 4, 3), np.uint8))
    with pytest.raises(UserError, match="suffix '.xyz'"):
        media.write_video(tmp_path / "f.xyz", frames(2, 4, 4), 8)
    assert not (tmp_path / "f.xyz").exists()
    grey = frames(3, 6, 5, c=1)
    media.write_gif(tmp_path / "g.gif", grey, fps=10)
    with Image.open(tmp_path / "g.gif") as im:
        assert im.n_frames == 3 and im.size == (5, 6)
        assert np.array_equal(np.asarray(im.convert("L")), grey[0, ..., 0])  # greyscale, lossless


# ---- local tracker and report ----------------------------------------------------------------------------------------
def test_local_tracker_writes_jsonl_and_media(tmp_path):
    t = LocalTracker(tmp_path, video_format="mp4")
    t.log_scalars({"train/loss_recon": 0.5, "train/loss_kl": torch.tensor(2.0), "train/loss_g_adv": float("nan"),
                   "train/lr_gen": np.float32(3e-4), "val/avg_val_lpips": None, "epoch": 1}, step=10)
    t.log_scalars({"train/loss_recon": float("inf")}, step=20)
    t.log_images("samples/train_recon", frames(1, 9, 11)[0], step=20, caption="S0 F0")
    t.log_video("samples/fixed_noise_generated", frames(3, 9, 11), step=20, fps=4)
    t.finish()
    t.finish()  # twice is fine

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    recs = [strict_json(line) for line in lines]
    assert [r["step"] for r in recs] == [10, 20] and all(isinstance(r["time"], float) for r in recs)
    assert recs[0]["values"] == {"train/loss_recon": 0.5, "train/loss_kl": 2.0, "train/loss_g_adv": "nan",
                                 "train/lr_gen": pytest.approx(3e-4), "val/avg_val_lpips": None, "epoch": 1}
    assert recs[1]["values"] == {"train/loss_recon": "inf"}

    png = tmp_path / "media" / "samples_train_recon" / "step_20.png"
    mp4 = tmp_path / "media" / "samples_fixed_noise_generated" / "step_20.mp4"
    assert Image.open(png).size == (11, 9)
    assert len(decode_mp4(mp4)) == 3
    index = [strict_json(line) for line in (tmp_path / "media.jsonl").read_text().splitlines()]
    assert [(r["key"], r["path"], r["caption"]) for r in index] == [
        ("samples/train_recon", "media/samples_train_recon/step_20.png", "S0 F0"),
        ("samples/fixed_noise_generated", "media/samples_fixed_noise_generated/step_20.mp4", ""),
    ]

    # a resumed run appends
    t2 = LocalTracker(tmp_path)
    t2.log_scalars({"train/loss_recon": 0.25}, step=30)
    t2.finish()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3


def test_report_plots_whatever_keys_exist(tmp_path):
    t = LocalTracker(tmp_path)
    for step in range(0, 100, 10):
        t.log_scalars({"train/loss_recon": 1 / (step + 1), "train/loss_d_real": 0.7, "train/loss_d_fake": 0.6,
                       "train/lr_gen": 3e-4, "train/lambda_kl": 1e-4, "q_ctrl_gen/lrscale": 1.0,
                       "q_ctrl_gen/epsilon": 0.5, "train/loss_g_adv": float("nan") if step == 50 else 0.8}, step)
    t.log_scalars({"val/avg_val_psnr": 21.0, "val/avg_val_ssim": 0.6, "val/avg_val_lpips": None}, 90)
    t.log_scalars({"train/loss_recon": 0.5}, 40)  # a resumed run re-logs step 40: the later value wins
    t.finish()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 100, "values": {"train/lo')  # torn last line of a killed process

    series = read_metrics(tmp_path / "metrics.jsonl")
    assert dict(series["train/loss_recon"])[40] == 0.5
    assert np.isnan(dict(series["train/loss_g_adv"])[50])
    assert "val/avg_val_lpips" not in series

    out = plot_losses(tmp_path / "metrics.jsonl", tmp_path / "report" / "losses.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 500

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert plot_losses(empty, tmp_path / "empty.png").is_file()
    with pytest.raises(UserError, match="does not exist"):
        plot_losses(tmp_path / "nope.jsonl", tmp_path / "x.png")


def test_multi_null_and_build_tracker(tmp_path):
    calls = []

    class Rec:
        def log_scalars(self, values, step): calls.append(("s", step))
        def log_images(self, key, image, step, caption=""): calls.append(("i", key))
        def log_video(self, key, frames, step, fps=8): calls.append(("v", fps))
        def finish(self): calls.append(("f",))

    m = MultiTracker([Rec(), Rec()])
    m.log_scalars({"a": 1.0}, 3)
    m.log_images("k", frames(1, 4, 4)[0], 3)
    m.log_video("k", frames(2, 4, 4), 3, fps=5)
    m.finish()
    assert calls == [("s", 3)] * 2 + [("i", "k")] * 2 + [("v", 5)] * 2 + [("f",)] * 2

    assert isinstance(build_tracker(tmp_path / "rank1", LogConfig(), is_main=False), NullTracker)
    assert not (tmp_path / "rank1").exists()
    tr = build_tracker(tmp_path / "rank0", LogConfig())
    tr.log_scalars({"a": 1.0}, 1)
    tr.finish()
    assert (tmp_path / "rank0" / "metrics.jsonl").is_file()


def test_missing_optional_packages_are_user_errors(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(UserError, match=r"pip install 'wubugen\[wandb\]'"):
        build_tracker(tmp_path, LogConfig(wandb=True))
    with pytest.raises(UserError, match=r"pip install 'wubugen\[tensorboard\]'"):
        build_tracker(tmp_path, LogConfig(tensorboard=True))


# ---- optional trackers -----------------------------------------------------------------------------------------------
def test_wandb_offline_run_writes_files_and_resumes_same_id(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from wubugen.track.wandb_tracker import RUN_ID_FILE, WandbTracker

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    t = WandbTracker(tmp_path, project="wubugen-test", run_name="t", mode="offline", config={"train": {"lambda_kl": 1e-4}})
    run_id = t.run_id
    t.log_scalars({"train/loss_recon": 0.5, "val/avg_val_lpips": None}, 1)
    t.log_images("samples/train_recon", frames(1, 8, 8)[0], 2, caption="c")
    t.log_video("samples/fixed_noise_generated", frames(3, 8, 8), 3, fps=4)
    t.finish()
    assert (tmp_path / RUN_ID_FILE).read_text().strip() == run_id
    runs = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    assert runs and (runs[0] / f"run-{run_id}.wandb").stat().st_size > 0
    media_files = [p.suffix for p in runs[0].rglob("*") if p.suffix in (".png", ".gif")]
    assert ".png" in media_files and ".gif" in media_files

    t2 = WandbTracker(tmp_path, project="wubugen-test", mode="offline")  # resume: the same W&B run
    assert t2.run_id == run_id and t2.run.id == run_id
    t2.finish()


def test_tensorboard_writes_scalars_images_and_video(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from wubugen.track.tensorboard_tracker import TensorBoardTracker

    t = TensorBoardTracker(tmp_path)
    t.log_scalars({"train/loss_recon": 0.5, "val/avg_val_lpips": None}, 1)
    t.log_scalars({"train/loss_recon": 0.25}, 2)
    t.log_images("samples/train_recon", frames(1, 8, 10, c=1)[0], 2)
    t.log_video("samples/fixed_noise_generated", frames(3, 8, 10), 2, fps=4)
    t.finish()
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/loss_recon")] == [(1, 0.5), (2, 0.25)]
    assert sorted(acc.Tags()["images"]) == ["samples/fixed_noise_generated", "samples/train_recon"]
    gif = acc.Images("samples/fixed_noise_generated")[0]
    assert gif.encoded_image_string[:6] == b"GIF89a" and (gif.width, gif.height) == (10, 8)


# ---- labelled strips -------------------------------------------------------------------------------------------------
def test_labelled_strip_at_64px_is_scaled_up_with_a_label_row():
    import numpy as np
    import torch

    from wubugen.media import GROUP_GAP_PX, LABEL_BG, LABEL_PX, MIN_FRAME_PX, labelled_grid
    from wubugen.train.artifacts import strip

    n, h = 2, 64
    ctx, tgt, rec = (torch.full((n, t, 3, h, h), v) for t, v in ((2, -1.0), (1, 0.0), (1, 1.0)))
    img = strip(ctx, tgt, rec, "reconstruct")
    k = MIN_FRAME_PX // h  # 64 px frames shown at 128 px
    body_h = n * h * k + (n - 1) * 2
    assert img.shape[0] == LABEL_PX + body_h and img.dtype == np.uint8
    assert img.shape[1] >= 4 * h * k + 2 * GROUP_GAP_PX  # 2 context + 1 target + 1 reconstruction frame, 2 group gaps
    header, body = img[:LABEL_PX], img[LABEL_PX:]
    # a label (dark text) over each of the three groups
    dark_cols = np.where((header < LABEL_BG - 100).any(axis=(0, 2)))[0]
    ctx_w, tgt_start = 2 * h * k + 2, 2 * h * k + 2 + GROUP_GAP_PX
    assert (dark_cols < ctx_w).any() and ((dark_cols > tgt_start) & (dark_cols < tgt_start + h * k)).any()
    assert (dark_cols > tgt_start + h * k + GROUP_GAP_PX).any()
    # nearest-neighbour upscaling keeps the frames' values: black context, grey target, white reconstruction
    assert body[0, 0].tolist() == [0, 0, 0] and body[0, tgt_start + 5].tolist() == [128, 128, 128]
    assert body[0, -5].tolist() == [255, 255, 255]
    big = labelled_grid([("frames", np.zeros((1, 1, 3, 256, 256), np.uint8))])
    assert big.shape == (LABEL_PX + 256, 256, 3)  # big frames are not scaled


def test_progress_bar_shows_the_guides_console_names():
    from wubugen.train.artifacts import progress_text

    values = {"train/loss_g_total": 1.25, "train/loss_d_total": 0.5, "train/loss_d_real": 0.25,
              "train/loss_d_fake": 0.75, "train/loss_g_adv": 0.9, "train/loss_recon": 0.0625, "train/loss_kl": 12.5,
              "train/lambda_kl": 1e-4}
    assert progress_text(values) == ("G:1.250 D:0.500 D_real:0.250 D_fake:0.750 Adv:0.900 Rec:0.0625 KL:12.500 "
                                     "LKL:1.0e-04")
