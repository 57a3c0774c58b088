"""RoIAlign over boxes fixed at build time, as one gather and a weighted sum.

The GAAD boxes depend only on the frame size, so torchvision's `roi_align` of a feature map over them is a fixed linear map:
every output bin averages `sampling_ratio`^2 bilinear samples, each a weighted sum of 4 pixels. Its pixel indices and
weights are built once (`roi_align_taps`); `roi_align_static` then reads just those pixels, in whatever memory layout the
map has. torchvision's CUDA kernel needs a contiguous NCHW map: on channels-last features it copied the encoder's
full-resolution map (52 x 32 x 256 x 256 at the launcher settings, 416 MiB in fp32) every step and converted its
gradient back, 1.4 ms of a 42 ms compiled fp32 step on an H100 (docs/benchmarks.md). The backward reads the table's
adjoint (`transpose_taps`, also built once): every pixel some bin reads gathers those bins in a fixed order and is
written once, with no atomic adds, so it is deterministic.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


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
                   aligned: bool = True) -> tuple[Tensor, Tensor]:
    """The pixels and weights of torchvision.ops.roi_align for fixed boxes on a height x width map.

    boxes (R, 4) as (x1, y1, x2, y2) -> index (R, oh * ow, K) int64 into the flattened map (y * width + x) and weight
    (same shape, float64, the 1/count average included), K = 4 * sampling_ratio^2 taps per output bin, bins in (row,
    column) order. A sample outside the map has weight zero (index 0)."""
    if sampling_ratio <= 0:
        raise ValueError("roi_align_taps needs a fixed sampling_ratio > 0 (the adaptive grid varies per box)")
    oh, ow = output_size
    b = boxes.to(torch.float64) - (0.5 if aligned else 0.0)  # boxes in the map's pixels (spatial_scale 1)
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


def transpose_taps(index: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The adjoint of a tap map, for a backward pass without atomic adds: every pixel some bin reads, the bins that read
    it and their summed weights. index/weight (R, bins, taps) -> pixels (P,) sorted, bin_index (P, M) into the R * bins
    flattened bins, bin_weight (P, M), M = the most bins that read one pixel, unused slots weight 0 (bin 0)."""
    r, nb, nt = index.shape
    n_bins = r * nb
    bins = torch.arange(n_bins).repeat_interleave(nt)
    pix, w = index.flatten(), weight.flatten()
    keep = w != 0
    key = pix[keep] * n_bins + bins[keep]  # one entry per (pixel, bin), sorted by pixel then bin
    uniq, inv = torch.unique(key, return_inverse=True)
    wsum = torch.zeros(uniq.numel(), dtype=w.dtype).index_add_(0, inv, w[keep])
    upix, ubin = uniq // n_bins, uniq % n_bins
    pixels, counts = torch.unique_consecutive(upix, return_counts=True)
    m = int(counts.max()) if counts.numel() else 1
    row = torch.repeat_interleave(torch.arange(pixels.numel()), counts)
    slot = torch.arange(uniq.numel()) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    bin_index = torch.zeros(pixels.numel(), m, dtype=torch.long)
    bin_weight = torch.zeros(pixels.numel(), m, dtype=w.dtype)
    bin_index[row, slot] = ubin
    bin_weight[row, slot] = wsum
    return pixels, bin_index, bin_weight


def _weighted_gather(v: Tensor, dim: int, index: Tensor, weight: Tensor) -> Tensor:
    """out[..., j, ...] = sum_t weight[j, t] * v[..., index[j, t], ...] along `dim` (1 or 2 of a 3-D tensor)."""
    j, t = index.shape
    taps = v.index_select(dim, index.flatten())
    if dim == 1:  # (N, J*T, C)
        return (taps.view(v.shape[0], j, t, v.shape[2]) * weight[:, :, None]).sum(2)  # (N, J, C)
    return (taps.view(v.shape[0], v.shape[1], j, t) * weight).sum(3)  # (N, C, J)


class _StaticRoIAlign(torch.autograd.Function):
    """v (N, HW, C) [dim 1] or (N, C, HW) [dim 2] -> bins (N, R*bins, C) or (N, C, R*bins). The backward gathers each
    read pixel's bins in a fixed order (`transpose_taps`) and writes every pixel once: deterministic, unlike the
    scatter-add of index_select's own backward (atomic adds; GPU runs of one seed then differ in the last bits)."""

    @staticmethod
    def forward(v, dim, index, weight, pixels, bin_index, bin_weight):
        return _weighted_gather(v, dim, index.flatten(0, 1), weight.flatten(0, 1))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        v, dim, _, _, pixels, bin_index, bin_weight = inputs
        ctx.dim, ctx.shape, ctx.dtype = dim, v.shape, v.dtype
        ctx.save_for_backward(pixels, bin_index, bin_weight)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pixels, bin_index, bin_weight = ctx.saved_tensors
        at_pixels = _weighted_gather(grad, ctx.dim, bin_index, bin_weight.to(grad.dtype))
        out = at_pixels.new_zeros(ctx.shape).index_copy(ctx.dim, pixels, at_pixels).to(ctx.dtype)
        return out, None, None, None, None, None, None


def roi_align_static(feat: Tensor, index: Tensor, weight: Tensor, adjoint: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """RoIAlign of every frame over the same boxes, from `roi_align_taps` and its `transpose_taps` (the adjoint).

    feat (N, C, H, W) in either memory layout, index/weight (R, bins, taps) -> (N, R, C * bins), each region's patch
    flattened in (C, oh, ow) order, as torchvision's output (N * R, C, oh, ow) reshaped would be."""
    n, c = feat.shape[:2]
    r, nb, _ = index.shape
    pixels, bin_index, bin_weight = adjoint
    if feat.is_contiguous(memory_format=torch.channels_last) and not feat.is_contiguous():
        # (N, H*W, C) is a view of a channels-last map: gather whole pixels, contiguous over C
        v = feat.permute(0, 2, 3, 1).reshape(n, -1, c)
        bins = _StaticRoIAlign.apply(v, 1, index, weight, pixels, bin_index, bin_weight)  # (N, R*bins, C)
        return bins.view(n, r, nb, c).transpose(2, 3).reshape(n, r, c * nb)
    v = feat.reshape(n, c, -1)
    bins = _StaticRoIAlign.apply(v, 2, index, weight, pixels, bin_index, bin_weight)  # (N, C, R*bins)
    return bins.view(n, c, r, nb).transpose(1, 2).reshape(n, r, c * nb)


class StaticRoIAlign(nn.Module):
    """torchvision.ops.roi_align(feat, every box on every frame, output_size, spatial_scale=1, sampling_ratio,
    aligned=True) for boxes fixed at build time. feat (N, C, H, W) -> (N, R, C * oh * ow). No parameters; its tables
    are non-persistent buffers (checkpoints do not carry them)."""

    def __init__(self, boxes: Tensor, height: int, width: int, output_size: tuple[int, int], sampling_ratio: int = 2):
        super().__init__()
        index, weight = roi_align_taps(boxes, height, width, output_size, sampling_ratio, aligned=True)
        pixels, bin_index, bin_weight = transpose_taps(index, weight)
        # 3-D and 2-D tables: to_channels_last (4-D/5-D only) leaves them alone
        self.register_buffer("index", index, persistent=False)  # (R, bins, taps)
        self.register_buffer("weight", weight.float(), persistent=False)
        self.register_buffer("pixels", pixels, persistent=False)  # (P,)
        self.register_buffer("bin_index", bin_index, persistent=False)  # (P, M)
        self.register_buffer("bin_weight", bin_weight.float(), persistent=False)

    def forward(self, feat: Tensor) -> Tensor:
        return roi_align_static(feat, self.index, self.weight, (self.pixels, self.bin_index, self.bin_weight))
