"""Kernel rewrites that must not change the math: the tap convolution (models/tapconv.py) and the static RoIAlign
(models/roi.py), against PyTorch's conv3d and torchvision's roi_align in float64, values and gradients."""
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from wubugen.config import build_config
from wubugen.gaad import gaad_boxes
from wubugen.inspect_cmd import random_clip
from wubugen.models.discriminator import build_discriminator
from wubugen.models.roi import roi_align_static, roi_align_taps, transpose_taps
from wubugen.models.tapconv import TapConv3d, set_tap_convs, tap_conv3d
from wubugen.models.vaegan import build_model


@pytest.mark.parametrize("kernel", [(3, 3, 3), (1, 3, 3), (3, 5, 1), (1, 1, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_tap_conv_equals_conv3d_values_and_gradients(kernel, channels_last):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 7, 6, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_()
    w = torch.randn(3, 5, *kernel, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    ref = F.conv3d(x, w, b, 1, tuple(k // 2 for k in kernel))
    out = tap_conv3d(x, w, b)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(ref)
    for got, want in zip(torch.autograd.grad(out, (x, w, b), g), torch.autograd.grad(ref, (x, w, b), g)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_tap_conv_gradcheck_and_even_kernels_refused():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(tap_conv3d, (x, w))
    assert torch.autograd.gradgradcheck(tap_conv3d, (x, w))
    with pytest.raises(ValueError, match="odd"):
        tap_conv3d(x, torch.randn(2, 2, 3, 4, 3, dtype=torch.float64))


def test_tap_switch_keeps_parameters_and_outputs():
    conv = TapConv3d(4, 3, (3, 3, 3)).double()
    assert list(dict(conv.state_dict())) == ["weight", "bias"]
    x = torch.randn(2, 4, 3, 5, 5, dtype=torch.float64)
    ref = conv(x)
    cfg = build_config("tiny")
    model = build_model(cfg.model, cfg.geometry)
    assert set_tap_convs(model, True) == 1  # the generator's output conv
    set_tap_convs(conv, True)
    torch.testing.assert_close(conv(x), ref, rtol=0, atol=1e-12)


def _boxes(h: int, w: int) -> torch.Tensor:
    odd = torch.tensor([[-3.0, -2.0, 5.0, 4.0], [w - 5.0, h - 7.0, w + 2.0, h + 2.0], [10.0, 10.0, 10.3, 10.2],
                        [0.0, 0.0, w, h]], dtype=torch.float64)  # off the map, past the far edge, sub-pixel, whole
    return torch.cat([gaad_boxes(w, h, 24, "hybrid", 2).double(), odd])


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_static_roi_align_equals_torchvision(aligned, sampling_ratio, channels_last):
    torch.manual_seed(0)
    h, w, n = 37, 50, 3
    boxes = _boxes(h, w)
    feat = torch.randn(n, 5, h, w, dtype=torch.float64)
    if channels_last:
        feat = feat.contiguous(memory_format=torch.channels_last)
    feat.requires_grad_()
    r = boxes.shape[0]
    rois = torch.cat([torch.arange(n, dtype=torch.float64).repeat_interleave(r)[:, None], boxes.repeat(n, 1)], 1)
    ref = roi_align(feat, rois, (4, 3), 1.0, sampling_ratio, aligned).reshape(n, r, -1)
    index, weight = roi_align_taps(boxes, h, w, (4, 3), sampling_ratio, aligned)
    out = roi_align_static(feat, index, weight, transpose_taps(index, weight))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, feat, g)[0], torch.autograd.grad(ref, feat, g)[0],
                               rtol=0, atol=1e-12)


def test_static_roi_align_needs_a_fixed_grid():
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align_taps(_boxes(8, 8), 8, 8, (2, 2), 0)


def test_regional_discriminator_crops_are_torchvisions():
    """The regional D's crops through the static gather equal torchvision's roi_align of the same frames."""
    cfg = build_config("tiny", overrides={"discriminator_type": "regional_cnn"})
    torch.manual_seed(0)
    disc = build_discriminator(cfg.model, cfg.geometry).double()
    clip = random_clip(cfg, 2).double()
    b, t, c, h, w = clip.shape
    frames = clip.reshape(b * t, c, h, w)
    from wubugen.models.layers import region_boxes

    boxes = region_boxes(cfg.model, w, h).double()
    r = boxes.shape[0]
    rois = torch.cat([torch.arange(b * t, dtype=torch.float64).repeat_interleave(r)[:, None], boxes.repeat(b * t, 1)], 1)
    p = disc.patch
    ref = roi_align(frames, rois, (p, p), 1.0, 2, True)
    got = disc.roi(frames).reshape(-1, c, p, p)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)  # the module keeps its weights in float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kernels_on_cuda_channels_last():
    """On the GPU, in the layouts the compiled step uses: taps vs cuDNN (TF32 off: both exact fp32) and the static
    RoIAlign vs torchvision's CUDA kernel, forward and backward."""
    dev = torch.device("cuda")
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        torch.manual_seed(0)
        x = torch.randn(2, 16, 3, 32, 32, device=dev).contiguous(memory_format=torch.channels_last_3d).requires_grad_()
        w = torch.randn(3, 16, 3, 3, 3, device=dev).contiguous(memory_format=torch.channels_last_3d).requires_grad_()
        ref, out = F.conv3d(x, w, None, 1, 1), tap_conv3d(x, w)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
        g = torch.randn_like(ref)
        for a, b in zip(torch.autograd.grad(out, (x, w), g), torch.autograd.grad(ref, (x, w), g)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-3)
    finally:
        torch.backends.cudnn.allow_tf32 = old
    h, w_ = 37, 50
    boxes = _boxes(h, w_).float()
    feat = torch.randn(3, 8, h, w_, device=dev).contiguous(memory_format=torch.channels_last).requires_grad_()
    r = boxes.shape[0]
    rois = torch.cat([torch.arange(3.0).repeat_interleave(r)[:, None], boxes.repeat(3, 1)], 1).to(dev)
    ref = roi_align(feat, rois, (4, 4), 1.0, 2, True).reshape(3, r, -1)
    index, weight = roi_align_taps(boxes, h, w_, (4, 4), 2, True)
    adjoint = tuple(t.to(dev) for t in transpose_taps(index, weight.float()))
    out = roi_align_static(feat, index.to(dev), weight.float().to(dev), adjoint)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, feat, g)[0], torch.autograd.grad(ref, feat, g)[0],
                               rtol=1e-5, atol=1e-5)


def test_static_roi_align_module_bf16_and_compiled():
    """The module's backward returns the input's dtype (bf16 maps under autocast), and torch.compile traces its
    autograd.Function whole (fullgraph) with the same values and gradients."""
    from wubugen.models.roi import StaticRoIAlign

    h, w = 20, 24
    roi = StaticRoIAlign(_boxes(h, w).float(), h, w, (4, 4))
    feat = torch.randn(2, 6, h, w, dtype=torch.bfloat16, requires_grad=True)
    roi(feat).float().square().sum().backward()
    assert feat.grad.dtype == torch.bfloat16 and torch.isfinite(feat.grad.float()).all()

    feat = torch.randn(2, 6, h, w).contiguous(memory_format=torch.channels_last).requires_grad_()
    g = torch.randn(2, roi.index.shape[0], 6 * 16)
    want = torch.autograd.grad((roi(feat) * g).sum(), feat)[0]
    compiled = torch.compile(roi, fullgraph=True)
    out = compiled(feat)
    torch.testing.assert_close(out, roi(feat))
    torch.testing.assert_close(torch.autograd.grad((out * g).sum(), feat)[0], want)
