"""RoIAlign over boxes fixed at build time, as one gather and a weighted sum.

The GAAD boxes depend only on the frame size, so torchvision's `roi_align` of a feature map over them is a fixed linear map:
every output bin averages `sampling_ratio`^2 bilinear samples, each a weighted sum of 4 pixels. Its pixel indices and
weights are built once (`roi_align_taps`); `roi_align_static` then reads just those pixels, in whatever memory layout the
map has. torchvision's CUDA kernel needs a contiguous NCHW map: on channels-last features it copied the encoder's
full-resolution map (52 x 32 x 256 x 256 at the launcher settings, 416 MiB in fp32) every step and converted its
gradient back, 1.4 ms of a 42 ms compiled fp32 step on an H100 (docs/benchmarks.md). The backward here is a scatter-add
of the same few values.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _axis_weights(start: Tensor, bin_size: Tensor, pooled: int, grid: int, size: int):
    """Bilinear sample positions along one axis, as torchvision's bilinear_interpolate computes them.
    start, bin_size (R,) -> low, high (R, pooled, grid) pixel indices, w_low, w_high weights, valid (R, pooled, grid)."""
    p = torch.arange(pooled, dtype=start.dtype)[None, :, None]
    i = torch.arange(grid, dtype=start.dtype)[None, None, :]
    pos = start[:, None, None] + p * bin_size[:, None, None] + (i + 0.5) * bin_size[:, None, None] / grid
    valid = (pos >= -1.0) & (pos <= size)
    pos = pos.clamp_min(0.0)
    low = pos.floor().long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    pos = torch.where(at_edge, low.to(pos.dtype), pos)
    frac = pos - low
    return low, high, 1.0 - frac, frac, valid


def roi_align_taps(boxes: Tensor, height: int, width: int, output_size: tuple[int, int], sampling_ratio: int,
                   aligned: bool = True, spatial_scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """The pixels and weights of torchvision.ops.roi_align for fixed boxes on a height x width map.

    boxes (R, 4) as (x1, y1, x2, y2) -> index (R, oh * ow, K) int64 into the flattened map (y * width + x) and weight
    (same shape, float64, the 1/count average included), K = 4 * sampling_ratio^2 taps per output bin, bins in (row,
    column) order. A sample outside the map has weight zero (index 0)."""
    if sampling_ratio <= 0:
        raise ValueError("roi_align_taps needs a fixed sampling_ratio > 0 (the adaptive grid varies per box)")
    oh, ow = output_size
    b = boxes.to(torch.float64) * spatial_scale - (0.5 if aligned else 0.0)
    x1, y1, x2, y2 = b.unbind(1)
    rw, rh = x2 - x1, y2 - y1
    if not aligned:  # torchvision forces malformed RoIs to 1x1 in the legacy mode
        rw, rh = rw.clamp_min(1.0), rh.clamp_min(1.0)
    g = sampling_ratio
    ylo, yhi, wylo, wyhi, vy = _axis_weights(y1, rh / oh, oh, g, height)  # (R, oh, g)
    xlo, xhi, wxlo, wxhi, vx = _axis_weights(x1, rw / ow, ow, g, width)  # (R, ow, g)
    # (R, oh, ow, gy, gx, corner): corners (low, low), (low, high), (high, low), (high, high) as torchvision orders them
    ys = torch.stack([ylo, ylo, yhi, yhi], -1)[:, :, None, :, None, :]
    xs = torch.stack([xlo, xhi, xlo, xhi], -1)[:, None, :, None, :, :]
    wy = torch.stack([wylo, wylo, wyhi, wyhi], -1)[:, :, None, :, None, :]
    wx = torch.stack([wxlo, wxhi, wxlo, wxhi], -1)[:, None, :, None, :, :]
    valid = (vy[:, :, None, :, None, None] & vx[:, None, :, None, :, None])
    weight = torch.where(valid, wy * wx, torch.zeros(())) / (g * g)
    index = torch.where(valid, ys * width + xs, torch.zeros((), dtype=torch.long))
    r = boxes.shape[0]
    return index.reshape(r, oh * ow, g * g * 4), weight.reshape(r, oh * ow, g * g * 4)


def roi_align_static(feat: Tensor, index: Tensor, weight: Tensor) -> Tensor:
    """RoIAlign of every frame over the same boxes, from `roi_align_taps`.

    feat (N, C, H, W) in either memory layout, index/weight (R, bins, taps) -> (N, R, C * bins), each region's patch
    flattened in (C, oh, ow) order, as torchvision's output (N * R, C, oh, ow) reshaped would be."""
    n, c = feat.shape[:2]
    r, nb, nt = index.shape
    if feat.is_contiguous(memory_format=torch.channels_last) and not feat.is_contiguous():
        # (N, H*W, C) is a view of a channels-last map: gather whole pixels, contiguous over C
        taps = feat.permute(0, 2, 3, 1).reshape(n, -1, c).index_select(1, index.flatten())  # (N, R*bins*taps, C)
        bins = (taps.view(n, r, nb, nt, c) * weight[..., None]).sum(3)  # (N, R, bins, C)
        return bins.transpose(2, 3).reshape(n, r, c * nb)
    taps = feat.reshape(n, c, -1).index_select(2, index.flatten())  # (N, C, R*bins*taps)
    bins = (taps.view(n, c, r, nb, nt) * weight).sum(4)  # (N, C, R, bins)
    return bins.transpose(1, 2).reshape(n, r, c * nb)
