"""wubugen.flow: regional statistics against a plain loop, the RAFT and DIS backends (local weights only, one-line errors),
and the flow cache (hits compute nothing; backend, weights, frame_skip and footage changes rebuild)."""
from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import tiny_args
from wubugen.cli import main
from wubugen.config import ConfigError, build_config
from wubugen.data import build_datasets, make_loader
from wubugen.errors import UserError
from wubugen.data import flow_cache
from wubugen.flow.backends import (
    RAFT_FILES,
    FlowEstimator,
    dis_flow,
    hub_weights_path,
    load_raft,
    raft_flow,
    weights_fingerprint,
)
from wubugen.data.flow_cache import (
    FrameSource,
    attach_flow_cache,
    ensure_flows,
    flow_cache_key,
    get_or_build_flow,
)
from wubugen.flow.stats import (
    STAT_ORDER,
    region_pixel_masks,
    region_pixel_rects,
    regional_flow_stats,
    regional_flow_stats_loop,
    stat_names,
    stats_dim,
)
from wubugen.gaad import gaad_boxes


# --------------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------------
def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random texture, uint8 (H, W)."""
    import cv2

    rng = np.random.default_rng(seed)
    img = rng.random((h, w)).astype(np.float32)
    img = cv2.GaussianBlur(img, (0, 0), 1.5)
    img = (img - img.min()) / (img.max() - img.min() + 1e-6)
    return (img * 255).astype(np.uint8)


def moving_clip(frames: int, h: int, w: int, dx: int = 1, dy: int = 0, seed: int = 0, channels: int = 3) -> np.ndarray:
    """uint8 (T, H, W, C): a texture translating by (dx, dy) pixels per frame (wrapping)."""
    base = texture(h, w, seed)
    out = np.stack([np.roll(base, (t * dy, t * dx), (0, 1)) for t in range(frames)])
    return np.repeat(out[..., None], channels, -1)


# --------------------------------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------------------------------
EDGE_BOXES = torch.tensor([
    [0.0, 0.0, 23.0, 17.0],  # the whole frame
    [0.4, 0.4, 1.4, 1.4],  # one pixel at the corner
    [22.6, 16.6, 23.0, 17.0],  # a sliver at the opposite corner (rounds to nothing: kept as one pixel)
    [3.2, 5.7, 9.9, 12.1],
    [-3.0, -2.0, 50.0, 40.0],  # beyond the frame: clamped
    [10.0, 0.0, 11.0, 17.0],  # a one-pixel-wide column touching top and bottom
    [0.0, 8.0, 23.0, 9.0],  # a one-pixel-high row touching left and right
])


@pytest.mark.parametrize("components", [list(STAT_ORDER), ["mag_mean"], ["angle_mean"], ["mag_std", "angle_std"],
                                        ["angle_std", "angle_mean", "mag_std", "mag_mean"]])
def test_stats_match_the_loop_reference(components) -> None:
    torch.manual_seed(0)
    h, w = 17, 23  # odd sizes
    rects = region_pixel_rects(EDGE_BOXES, h, w)
    flow = torch.randn(5, 2, h, w) * 4
    flow[1] = 0.0  # zero flow: angle 0, std 0
    flow[2, :, :, :5] = torch.tensor([3.0, -2.0])[:, None, None]  # a constant patch
    got = regional_flow_stats(flow, rects, components)
    ref = regional_flow_stats_loop(flow, rects, components)
    assert got.shape == (5, len(EDGE_BOXES), stats_dim(components)) and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-5)


def test_stats_on_gaad_motion_regions_and_half_precision_input() -> None:
    torch.manual_seed(1)
    for (h, w), mode in itertools.product([(32, 32), (31, 45), (64, 40)], ["hybrid", "spiral", "subdivide"]):
        rects = region_pixel_rects(gaad_boxes(w, h, 8, mode, 2), h, w)
        flow = (torch.randn(3, 2, h, w) * 6).half()  # as the cache stores it
        torch.testing.assert_close(regional_flow_stats(flow, rects, STAT_ORDER),
                                   regional_flow_stats_loop(flow.float(), rects, STAT_ORDER), atol=2e-5, rtol=1e-5)


def test_stat_order_is_fixed_and_known_values() -> None:
    assert stat_names(["angle_std", "angle_mean", "mag_mean", "mag_std"]) == [
        "mag_mean", "mag_std", "angle_mean_cos", "angle_mean_sin", "angle_std"]
    assert stats_dim(STAT_ORDER) == 5
    flow = torch.zeros(1, 2, 4, 6)
    flow[0, 0] = 3.0
    flow[0, 1] = 4.0  # magnitude 5 everywhere, angle atan2(4, 3)
    rects = torch.tensor([[0, 0, 6, 4], [2, 1, 3, 2]])
    s = regional_flow_stats(flow, rects, STAT_ORDER)
    ang = np.arctan2(4, 3)
    expected = torch.tensor([5.0, 0.0, np.cos(ang), np.sin(ang), 0.0], dtype=torch.float32)
    torch.testing.assert_close(s[0, 0], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(s[0, 1], expected, atol=0, rtol=0)  # one pixel: std exactly 0
    with pytest.raises(ValueError, match="unknown flow statistics"):
        regional_flow_stats(flow, rects, ["mag_max"])


def test_pixel_rects_and_masks() -> None:
    h, w = 17, 23
    rects = region_pixel_rects(EDGE_BOXES, h, w)
    assert rects.dtype == torch.int64
    x1, y1, x2, y2 = rects.unbind(1)
    assert bool(((x1 >= 0) & (y1 >= 0) & (x2 <= w) & (y2 <= h) & (x2 > x1) & (y2 > y1)).all())
    assert rects[1].tolist() == [0, 0, 1, 1] and rects[2].tolist() == [22, 16, 23, 17] and rects[4].tolist() == [0, 0, w, h]
    masks = region_pixel_masks(rects, h, w)
    assert masks.shape == (len(rects), h, w)
    torch.testing.assert_close(masks.sum((1, 2)), ((x2 - x1) * (y2 - y1)).float())


def test_stats_gradient_is_finite() -> None:
    torch.manual_seed(2)
    rects = region_pixel_rects(EDGE_BOXES, 17, 23)
    flow = (torch.randn(2, 2, 17, 23) + 0.5).requires_grad_(True)
    regional_flow_stats(flow, rects, STAT_ORDER).sum().backward()
    assert torch.isfinite(flow.grad).all() and flow.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------------------------------------
def test_dis_flow_finds_a_known_translation() -> None:
    clip = moving_clip(3, 48, 64, dx=2, dy=1).transpose(0, 3, 1, 2)  # (T, C, H, W)
    flow = dis_flow(clip, np.array([[0, 1], [1, 2], [0, 2]]))
    assert flow.shape == (3, 2, 48, 64) and flow.dtype == np.float32
    centre = flow[:, :, 12:36, 16:48].mean((2, 3))
    np.testing.assert_allclose(centre, [[2, 1], [2, 1], [4, 2]], atol=0.25)  # channel 0 = dx (right), 1 = dy (down)


def test_dis_estimator_on_model_range_frames_and_channels() -> None:
    est = FlowEstimator("dis")
    assert est.key.startswith("dis-") and not list(est.parameters()) and not est.differentiable
    for c in (1, 3):
        clip = torch.from_numpy(moving_clip(2, 32, 40, dx=1, channels=c)).permute(0, 3, 1, 2).float() / 127.5 - 1
        flow = est(clip[:1], clip[1:])
        assert flow.shape == (1, 2, 32, 40) and flow.dtype == torch.float32
        assert abs(float(flow[0, 0, 8:24, 10:30].mean()) - 1.0) < 0.25
    with pytest.raises(UserError, match="not differentiable"):
        FlowEstimator("dis", frozen=False)


def test_raft_weights_come_from_the_file_and_stay_frozen(raft_small_file) -> None:
    state = torch.load(raft_small_file, weights_only=True)
    torch.manual_seed(999)  # a different init: the loaded weights must still be the file's
    est = FlowEstimator("raft_small", raft_small_file, frozen=True)
    for k, v in est.net.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert est.key.startswith(f"raft_small-{weights_fingerprint(raft_small_file)}")
    assert all(not p.requires_grad for p in est.parameters())
    est.train()
    assert est.training and not est.net.training and not any(m.training for m in est.net.modules())
    assert not any(k.startswith("net.") for k in est.state_dict())  # frozen weights stay out of checkpoints
    est.load_state_dict({}, strict=True)  # and are not expected back


def test_raft_flow_pads_upsamples_and_batches_all_pairs(raft_small_file) -> None:
    net, _ = load_raft("raft_small", raft_small_file)
    torch.manual_seed(0)
    a = torch.rand(3, 3, 20, 28) * 2 - 1  # not multiples of 8, below RAFT's 128 px minimum
    b = torch.roll(a, 1, -1)
    with torch.no_grad():
        flow = raft_flow(net, a, b, num_updates=2)
        one = torch.cat([raft_flow(net, a[i:i + 1], b[i:i + 1], num_updates=2) for i in range(3)])
    assert flow.shape == (3, 2, 20, 28) and flow.dtype == torch.float32 and torch.isfinite(flow).all()
    torch.testing.assert_close(flow, one, atol=1e-4, rtol=1e-4)  # one call for all pairs = pair by pair
    gray = raft_flow(net, a[:, :1], b[:, :1], num_updates=1)  # one channel is repeated to three
    assert gray.shape == (3, 2, 20, 28)


def test_raft_weights_from_the_hub_cache(raft_small_file, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    target = hub_weights_path("raft_small")
    assert target == tmp_path / "torch_home" / "hub" / "checkpoints" / RAFT_FILES["raft_small"]
    target.parent.mkdir(parents=True)
    target.write_bytes(raft_small_file.read_bytes())
    net, path = load_raft("raft_small", None)
    assert path == target
    state = torch.load(raft_small_file, weights_only=True)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


def test_missing_weights_is_one_line_naming_path_and_fixes(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    with pytest.raises(UserError) as e:
        load_raft("raft_large", None)
    msg = str(e.value)
    assert "\n" not in msg and str(hub_weights_path("raft_large")) in msg
    assert "--flow_weights" in msg and "--optical_flow_net_type dis" in msg
    with pytest.raises(UserError) as e:
        load_raft("raft_small", tmp_path / "nope.pth")
    assert "nope.pth" in str(e.value) and "\n" not in str(e.value) and "dis" in str(e.value)


def test_weights_of_the_wrong_architecture_or_format(raft_small_file, tmp_path) -> None:
    with pytest.raises(UserError, match="does not match the raft_large"):
        load_raft("raft_large", raft_small_file)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable torch weights file"):
        load_raft("raft_small", junk)


def test_cli_stops_before_training_without_weights(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    run = tmp_path / "run"
    code = main(tiny_args(run, tmp_path / "cache", "--use_wubu_motion_branch", "--optical_flow_net_type", "raft_small"))
    err = capsys.readouterr()
    assert code == 2
    lines = [line for line in err.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "raft_small weights not found" in lines[0] and "--flow_weights" in lines[0]
    assert "wubugen train:" not in err.out and not run.exists() and not (tmp_path / "cache").exists()


def test_dis_with_a_trainable_flow_net_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not differentiable"):
        build_config("tiny", overrides={"use_wubu_motion_branch": True, "optical_flow_net_type": "dis",
                                        "freeze_flow_net": False})


# --------------------------------------------------------------------------------------------------------------------
# the cache
# --------------------------------------------------------------------------------------------------------------------
class CountingEstimator(nn.Module):
    """A stand-in flow net: flow = constant (dx, dy) = (key index, frame mean), counting the pairs it computes."""

    def __init__(self, key: str = "fake-1"):
        super().__init__()
        self.kind, self.key, self.frozen, self.dis_threads = "fake", key, True, 1
        self.net = nn.Identity()
        self.pairs = 0

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        self.pairs += a.shape[0]
        n, _, h, w = a.shape
        mean = (b - a).mean((1, 2, 3))
        return torch.stack([torch.full((n, h, w), 1.0), mean[:, None, None].expand(n, h, w)], 1)


def frame_source(tmp: Path, name: str, frames: np.ndarray) -> FrameSource:
    path = tmp / "frames" / f"{name}.frames"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.ascontiguousarray(frames).tobytes())
    return FrameSource(path, frames.shape[0], tuple(frames.shape[1:]))


def test_cache_hit_computes_nothing_and_changes_rebuild(tmp_path, raft_small_file) -> None:
    clip = moving_clip(9, 16, 24, dx=1).transpose(0, 3, 1, 2)
    src = frame_source(tmp_path, "aaaa", clip)
    cache = tmp_path / "cache"
    est = CountingEstimator()
    entry, built = get_or_build_flow(src, 1, est, cache)
    assert built and est.pairs == 8 and entry.pairs == 8 and entry.path.parent == cache / "flow"
    arr = entry.open()
    assert arr.shape == (8, 2, 16, 24) and arr.dtype == np.float16 and np.all(arr[:, 0] == 1)
    assert not list((cache / "flow").glob(".*"))  # no temporary file left behind
    os.utime(entry.path, (1e9, 1e9))
    entry2, built2 = get_or_build_flow(src, 1, est, cache)  # hit: nothing computed, the entry marked as used now
    assert not built2 and est.pairs == 8 and entry2.path == entry.path
    assert entry.path.stat().st_mtime > 1e9 + 86400

    def rebuilt(source, skip, estimator) -> bool:
        before = estimator.pairs
        e, b = get_or_build_flow(source, skip, estimator, cache)
        assert b and estimator.pairs > before
        return e.path not in (entry.path,)

    assert rebuilt(src, 2, est)  # frame_skip
    other = CountingEstimator("fake-2")
    assert rebuilt(src, 1, other)  # backend / weights
    changed = frame_source(tmp_path, "bbbb", clip[::-1].copy())  # other footage -> another frame-cache key
    assert rebuilt(changed, 1, est)
    # weights file: its fingerprint is part of the estimator key
    copy = tmp_path / "other.pth"
    state = torch.load(raft_small_file, weights_only=True)
    state["feature_encoder.convnormrelu.0.weight"] += 1
    torch.save(state, copy)
    k1 = FlowEstimator("raft_small", raft_small_file).key
    k2 = FlowEstimator("raft_small", copy).key
    assert k1 != k2 and flow_cache_key("f", k1, 1) != flow_cache_key("f", k2, 1)
    assert flow_cache_key("f", k1, 1) != flow_cache_key("f", FlowEstimator("dis").key, 1)
    # a damaged entry is rebuilt
    entry.path.write_bytes(b"garbage")
    _, built3 = get_or_build_flow(src, 1, est, cache)
    assert built3


def test_cached_flow_matches_the_estimator(tmp_path, raft_small_file) -> None:
    clip = moving_clip(4, 16, 16, dx=1).transpose(0, 3, 1, 2)
    src = frame_source(tmp_path, "cccc", clip)
    for est in (FlowEstimator("dis"), FlowEstimator("raft_small", raft_small_file, num_updates=2)):
        (entry,) = ensure_flows([src], 1, est, tmp_path / "cache")
        x = torch.from_numpy(clip).float() / 127.5 - 1
        with torch.no_grad():
            direct = est(x[:-1], x[1:]).numpy()
        np.testing.assert_allclose(entry.open().astype(np.float32), direct, atol=2e-2, rtol=1e-2)


def write_clips(folder: Path, n: int = 2, frames: int = 10) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        np.save(folder / f"clip{i}.npy", moving_clip(frames, 24, 24, dx=1 + i, seed=i))
    listing = folder / "list.txt"
    listing.write_text("".join(f"clip{i}.npy\n" for i in range(n)))
    return listing


def motion_cfg(data: Path, cache: Path, **over):
    base = {"video_data_path": str(data), "cache_dir": str(cache), "image_h": 24, "image_w": 24, "num_workers": 0,
            "progress": False, "use_wubu_motion_branch": True, "optical_flow_net_type": "dis",
            "validation_split_fraction": 0.0}
    base.update(over)
    return build_config("tiny", overrides=base)


def test_datasets_serve_window_flows_and_footage_changes_rebuild(tmp_path, monkeypatch) -> None:
    calls = []
    real = flow_cache.dis_flow
    monkeypatch.setattr(flow_cache, "dis_flow", lambda *a, **k: calls.append(1) or real(*a, **k))
    data = write_clips(tmp_path / "data")
    cfg = motion_cfg(data, tmp_path / "cache", frame_skip=2, num_input_frames=2, num_predict_frames=2, task="predict")
    bundle = build_datasets(cfg)
    report = attach_flow_cache(bundle, cfg, FlowEstimator("dis"))
    assert report.built == 2 and report.reused == 0 and calls
    ds = bundle.train
    frames, flow = ds[3], ds.flows_of(3)
    assert frames.shape == (4, 3, 24, 24) and frames.dtype == torch.uint8
    assert flow.shape == (cfg.encoder_frames - 1, 2, 24, 24) and flow.dtype == torch.float16  # predict: context only
    src, idx = ds.window(3)
    full = np.load(ds.flow_paths[src])
    np.testing.assert_array_equal(flow.numpy(), full[idx[:-1][: cfg.encoder_frames - 1]])
    # the flows are those of the window's frames (skip 2: clip i moves 2 * (1 + i) px between window frames)
    assert abs(float(flow[..., 6:18, 6:18][:, 0].float().mean()) - 2 * (1 + src)) < 0.3
    batch = next(iter(make_loader(ds, cfg, True)))
    f, fl = batch.frames, batch.flow
    assert f.shape == (cfg.train.batch_size, 4, 3, 24, 24) and fl.shape == (cfg.train.batch_size, 1, 2, 24, 24)

    # second run: no decoding, no flow computed
    calls.clear()
    bundle2 = build_datasets(cfg)
    report2 = attach_flow_cache(bundle2, cfg, FlowEstimator("dis"))
    assert bundle2.info.cache_built == 0 and report2.built == 0 and report2.reused == 2 and not calls

    # new footage in the same file: new frame-cache entry, new flows (the other file's flows are reused)
    np.save(data.parent / "clip0.npy", moving_clip(10, 24, 24, dx=3, seed=7))
    bundle3 = build_datasets(cfg)
    report3 = attach_flow_cache(bundle3, cfg, FlowEstimator("dis"))
    assert bundle3.info.cache_built == 1 and report3.built == 1 and report3.reused == 1


def test_augmented_flows_follow_the_frames(tmp_path) -> None:
    data = write_clips(tmp_path / "data", n=1, frames=8)
    cfg = motion_cfg(data, tmp_path / "cache", augment_flip=True, augment_random_crop=True)
    bundle = build_datasets(cfg)
    attach_flow_cache(bundle, cfg, FlowEstimator("dis"))
    ds = bundle.train
    plain = ds.__class__.__new__(ds.__class__)
    plain.__dict__.update(ds.__getstate__())
    plain.flip = plain.random_crop = False
    for i in range(len(ds)):
        scale, _, _, flip = ds.draws(i)
        flow, base = ds.flows_of(i), plain.flows_of(i)
        # texture moving +1 px right: flipped windows move left; the crop zooms by W / crop width
        cw = max(1, round(24 * (0.8 + 0.2 * scale)))
        expected = (-1 if flip < 0.5 else 1) * 24 / cw * float(base[:, 0, 6:18, 6:18].float().mean())
        assert abs(float(flow[:, 0, 6:18, 6:18].float().mean()) - expected) < 0.25
