"""The predict task's warp: backward warping against a float64 reference, and the model starting at copy-last."""
import math

import pytest
import torch

from wubugen.config import ConfigError, build_config
from wubugen.inspect_cmd import random_clip
from wubugen.models.vaegan import build_model
from wubugen.models.warp import base_grid, warp_frame

from test_models import grads_ok


def reference_warp(frame, flow):
    """Bilinear backward warp, pixel by pixel in float64, the border repeated: out[t, :, i, j] = frame at
    (x, y) = (j + flow[t, 0, i, j], i + flow[t, 1, i, j]), coordinates clamped to the frame."""
    c, h, w = frame.shape
    t = flow.shape[0]
    out = torch.zeros(t, c, h, w, dtype=torch.float64)
    f = frame.double()
    for k in range(t):
        for i in range(h):
            for j in range(w):
                x = min(max(j + float(flow[k, 0, i, j]), 0.0), w - 1.0)
                y = min(max(i + float(flow[k, 1, i, j]), 0.0), h - 1.0)
                x0, y0 = math.floor(x), math.floor(y)
                x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
                ax, ay = x - x0, y - y0
                out[k, :, i, j] = ((1 - ay) * ((1 - ax) * f[:, y0, x0] + ax * f[:, y0, x1])
                                   + ay * ((1 - ax) * f[:, y1, x0] + ax * f[:, y1, x1]))
    return out


def test_zero_flow_is_the_identity():
    frame = torch.rand(2, 3, 7, 11)
    out = warp_frame(frame, torch.zeros(2, 4, 2, 7, 11))
    assert out.shape == (2, 4, 3, 7, 11)
    assert torch.allclose(out, frame[:, None].expand_as(out), atol=1e-6)


def test_integer_flow_moves_pixels():
    frame = torch.rand(1, 3, 6, 9)
    flow = torch.zeros(1, 1, 2, 6, 9)
    flow[:, :, 0] = 2.0  # every output pixel reads two pixels to its right
    flow[:, :, 1] = -1.0  # and one row up
    out = warp_frame(frame, flow)[0, 0]
    assert torch.allclose(out[:, 1:, :-2], frame[0, :, :-1, 2:], atol=1e-5)


@pytest.mark.parametrize("h,w", [(5, 8), (9, 4)])
def test_fractional_flow_matches_float64_reference(h, w):
    g = torch.Generator().manual_seed(0)
    frame = torch.rand(1, 2, h, w, generator=g)
    flow = (torch.rand(1, 3, 2, h, w, generator=g) - 0.5) * 6  # up to 3 px either way, past the border too
    out = warp_frame(frame, flow)[0]
    assert torch.allclose(out.double(), reference_warp(frame[0], flow[0]), atol=1e-5)


def test_warp_takes_bf16_and_returns_float32():
    frame, flow = torch.rand(1, 3, 8, 8).bfloat16(), torch.zeros(1, 2, 2, 8, 8).bfloat16()
    assert warp_frame(frame, flow, base_grid(8, 8)).dtype == torch.float32


PREDICT = {"task": "predict", "backbone": "wubu_gaad", "num_predict_frames": 3, "num_input_frames": 2}


@pytest.mark.parametrize("warp", [False, True])
def test_predict_starts_at_copy_last(warp):
    cfg = build_config("tiny", overrides={**PREDICT, "predict_warp": warp})
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.geometry).eval()
    assert model.generator.out.out_channels == 3 + (2 if warp else 0)
    clip = random_clip(cfg, 2)
    with torch.no_grad():
        out = model(clip, sample_posterior=False)
    last = clip[:, cfg.data.num_input_frames - 1, None].expand_as(out.recon)
    assert out.recon.shape == (2, 3, 3, 32, 32)
    assert (out.recon - last).abs().mean() < 0.05  # the change and the flow start near zero


def test_predict_warp_has_no_dead_parameters_and_moves_with_its_flow():
    cfg = build_config("tiny", overrides={**PREDICT, "predict_warp": True})
    assert grads_ok(cfg) == []
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.geometry).eval()
    with torch.no_grad():  # a pure flow of +1 px along x and no change: the output is the last frame shifted
        model.generator.out.weight.zero_()
        model.generator.out.bias.zero_()
        model.generator.out.bias[3] = math.atanh(1.0 / model.warp_scale[0].item())
        clip = random_clip(cfg, 1)
        out = model(clip, sample_posterior=False).recon
    last = clip[0, cfg.data.num_input_frames - 1]
    assert torch.allclose(out[0, :, :, :, :-1], last[None, :, :, 1:].expand(3, -1, -1, -1), atol=1e-4)


def test_predict_warp_needs_the_residual():
    with pytest.raises(ConfigError, match="predict_residual"):
        build_config("tiny", overrides={**PREDICT, "predict_warp": True, "predict_residual": False})


# --predict_skip_frames: the last context frames at full resolution join the generator's last stage


@pytest.mark.parametrize("warp", [False, True])
def test_predict_skip_starts_at_copy_last_and_has_no_dead_parameters(warp):
    cfg = build_config("tiny", overrides={**PREDICT, "predict_skip_frames": 2, "predict_warp": warp})
    assert grads_ok(cfg) == []
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.geometry).eval()
    clip = random_clip(cfg, 2)
    with torch.no_grad():
        out = model(clip, sample_posterior=False)
    last = clip[:, cfg.data.num_input_frames - 1, None].expand_as(out.recon)
    assert out.recon.shape == (2, 3, 3, 32, 32)
    assert (out.recon - last).abs().mean() < 0.05


def test_predict_skip_reads_the_last_frames_at_full_resolution():
    """A one-pixel change in the last context frame reaches the prediction around that pixel, far more than elsewhere
    (the skip's GroupNorms carry a trace everywhere), with the latent and the context features held fixed."""
    cfg = build_config("tiny", overrides={**PREDICT, "predict_skip_frames": 1, "predict_residual": False})
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.geometry).eval()
    clip = random_clip(cfg, 1)
    bumped = clip.clone()
    bumped[0, cfg.data.num_input_frames - 1, :, 10, 10] += 0.5
    with torch.no_grad():
        z = torch.zeros((1, *model.latent_shape()))
        _, _, context = model.encode(clip[:, :2])
        a = model.decode(z, context, clip[:, :2])
        b = model.decode(z, context, bumped[:, :2])  # the same latent and context features: only the skip differs
    diff = (a - b).abs().sum((0, 1, 2))
    near = diff[7:14, 7:14]  # the skip's reach: its 3x3 conv, the (1, 3, 3) merge and the output conv
    assert near.max() == diff.max()
    far = diff.clone()
    far[7:14, 7:14] = 0
    assert far.mean() < near.max() / 20


def test_predict_skip_takes_the_context_frames_there_are_and_is_the_predict_tasks_alone():
    cfg = build_config("tiny", overrides={**PREDICT, "predict_skip_frames": 5})  # 2 context frames
    assert build_model(cfg.model, cfg.geometry).generator.skip_frames == 2
    cfg = build_config("tiny", overrides={**PREDICT, "predict_skip_frames": 0})
    model = build_model(cfg.model, cfg.geometry)
    assert model.generator.skip_frames == 0 and not hasattr(model.generator, "skip_in")
    cfg = build_config("tiny", overrides={"predict_skip_frames": 2})  # reconstruct: no context frames to skip
    model = build_model(cfg.model, cfg.geometry)
    assert getattr(model.generator, "skip_frames", 0) == 0 and not hasattr(model.generator, "skip_in")


def test_predict_skip_on_frames_that_are_not_a_multiple_of_the_latent_grid():
    cfg = build_config("tiny", overrides={**PREDICT, "image_h": 30, "image_w": 26})
    assert cfg.model.predict_skip_frames == 2  # the default
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.geometry).eval()
    clip = random_clip(cfg, 2)
    with torch.no_grad():
        out = model(clip, sample_posterior=False)
    assert out.recon.shape == (2, 3, 3, 30, 26)
    assert (out.recon - clip[:, 1, None]).abs().mean() < 0.05
