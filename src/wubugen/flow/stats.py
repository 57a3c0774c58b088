"""Regional optical-flow statistics over the motion GAAD regions, for all frame pairs and regions at once.

Every region is an integer pixel rectangle (the float GAAD box rounded and clamped to the frame, as the original cropped
it; unlike the original, a region always keeps at least one pixel, so no region is an all-zero constant). Its statistics
come from summed-area tables (integral images) of the per-pixel quantities: four lookups per region, whatever its size,
so the cost is O(N * H * W) for any number of regions, with no Python loop over pairs or regions and no host sync. The
tables are accumulated in float64 (float32 where the device has none), which keeps sums of squares exact enough for the
variances and is immune to TF32 matmul settings (a masked-sum einsum would run on the tensor cores in TF32).

Statistics, always in this fixed order whatever the order of `--flow_stats_components` (the original script's order),
with dx = flow channel 0 and dy = flow channel 1, per region:
  * mag_mean   (1): mean of sqrt(dx^2 + dy^2)
  * mag_std    (1): unbiased standard deviation of the magnitude, 0 for a region of one pixel
  * angle_mean (2): mean cos(atan2(dy, dx)), mean sin(atan2(dy, dx))
  * angle_std  (1): unbiased standard deviation of atan2(dy, dx), 0 for a region of one pixel
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

STAT_ORDER = ("mag_mean", "mag_std", "angle_mean", "angle_std")
STAT_WIDTH = {"mag_mean": 1, "mag_std": 1, "angle_mean": 2, "angle_std": 1}
_STD_EPS = 1e-20  # keeps sqrt differentiable for a constant region (flow from a trainable net)


def ordered_components(components: Iterable[str]) -> tuple[str, ...]:
    """The requested components in the fixed statistic order. Unknown names raise ValueError."""
    wanted = set(components)
    unknown = wanted - set(STAT_ORDER)
    if unknown:
        raise ValueError(f"unknown flow statistics {sorted(unknown)}; choose among {', '.join(STAT_ORDER)}")
    return tuple(c for c in STAT_ORDER if c in wanted)


def stats_dim(components: Iterable[str]) -> int:
    """Values per region for these components (angle_mean counts 2)."""
    return sum(STAT_WIDTH[c] for c in ordered_components(components))


def stat_names(components: Iterable[str]) -> list[str]:
    """One name per output column, e.g. ['mag_mean', 'angle_mean_cos', 'angle_mean_sin']."""
    names: list[str] = []
    for c in ordered_components(components):
        names.extend([f"{c}_cos", f"{c}_sin"] if c == "angle_mean" else [c])
    return names


def region_pixel_rects(boxes: Tensor, height: int, width: int) -> Tensor:
    """Float `[x1, y1, x2, y2]` boxes -> integer half-open pixel rectangles `[x1, y1, x2, y2]`: (R, 4) int64.

    Coordinates are rounded (half to even, as Python's round) and clamped to the frame; x2 >= x1 + 1 and y2 >= y1 + 1,
    so every region covers at least one pixel.
    """
    r = torch.round(boxes.detach().to(torch.float64)).to(torch.int64)
    x1 = r[:, 0].clamp(0, width - 1)
    y1 = r[:, 1].clamp(0, height - 1)
    x2 = torch.maximum(r[:, 2].clamp(max=width), x1 + 1)
    y2 = torch.maximum(r[:, 3].clamp(max=height), y1 + 1)
    return torch.stack([x1, y1, x2, y2], 1)


def region_pixel_masks(rects: Tensor, height: int, width: int) -> Tensor:
    """(R, 4) integer rectangles -> (R, H, W) float32 masks, 1 inside each rectangle."""
    ys = torch.arange(height, device=rects.device)
    xs = torch.arange(width, device=rects.device)
    x1, y1, x2, y2 = (rects[:, i, None] for i in range(4))
    my = (ys >= y1) & (ys < y2)  # (R, H)
    mx = (xs >= x1) & (xs < x2)  # (R, W)
    return (my[:, :, None] & mx[:, None, :]).float()


def _accumulation_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def regional_flow_stats(flow: Tensor, rects: Tensor, components: Iterable[str]) -> Tensor:
    """flow (N, 2, H, W) (any float dtype, any device), rects (R, 4) int64 from `region_pixel_rects`
    -> (N, R, S) float32 statistics in the fixed order (module docstring). Differentiable with respect to `flow`."""
    comps = ordered_components(components)
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow must be (N, 2, H, W), not {tuple(flow.shape)}")
    n, _, h, w = flow.shape
    r = rects.shape[0]
    with torch.autocast(flow.device.type, enabled=False):
        f = flow.float()
        dx, dy = f[:, 0], f[:, 1]
        channels: dict[str, Tensor] = {}
        if "mag_mean" in comps or "mag_std" in comps:
            mag = torch.sqrt(dx * dx + dy * dy)
            channels["mag"] = mag
            if "mag_std" in comps:
                channels["mag2"] = mag * mag
        if "angle_mean" in comps or "angle_std" in comps:
            ang = torch.atan2(dy, dx)
            if "angle_mean" in comps:
                channels["cos"] = torch.cos(ang)
                channels["sin"] = torch.sin(ang)
            if "angle_std" in comps:
                channels["ang"] = ang
                channels["ang2"] = ang * ang
        keys = list(channels)
        acc = _accumulation_dtype(flow.device)
        x = torch.stack([channels[k] for k in keys], 1).to(acc)  # (N, K, H, W)
        table = F.pad(x.cumsum(-1).cumsum(-2), (1, 0, 1, 0))  # (N, K, H+1, W+1): table[y, x] = sum over [0,y) x [0,x)
        table = table.flatten(-2)
        rc = rects.to(flow.device)
        x1, y1, x2, y2 = rc.unbind(1)
        stride = w + 1
        corners = torch.stack([y2 * stride + x2, y1 * stride + x2, y2 * stride + x1, y1 * stride + x1])  # (4, R)
        vals = table.index_select(-1, corners.reshape(-1)).reshape(n, len(keys), 4, r)
        sums = vals[:, :, 0] - vals[:, :, 1] - vals[:, :, 2] + vals[:, :, 3]  # (N, K, R)
        s = {k: sums[:, i] for i, k in enumerate(keys)}
        count = ((x2 - x1) * (y2 - y1)).to(acc)  # (R,)
        many = count > 1

        def mean(k: str) -> Tensor:
            return s[k] / count

        def std(k: str, k2: str) -> Tensor:
            var = (s[k2] - s[k] * s[k] / count) / torch.where(many, count - 1, torch.ones_like(count))
            var = torch.where(many, var.clamp_min(0), torch.ones_like(var))  # a safe value where the std is set to 0
            return torch.where(many, torch.sqrt(var + _STD_EPS), torch.zeros_like(var))

        cols: list[Tensor] = []
        for c in comps:
            if c == "mag_mean":
                cols.append(mean("mag"))
            elif c == "mag_std":
                cols.append(std("mag", "mag2"))
            elif c == "angle_mean":
                cols.extend([mean("cos"), mean("sin")])
            else:
                cols.append(std("ang", "ang2"))
        return torch.stack(cols, -1).float()  # (N, R, S)


def regional_flow_stats_loop(flow: Tensor, rects: Tensor, components: Iterable[str]) -> Tensor:
    """Reference: the same statistics with a plain loop over pairs and regions (crop, then reduce), as the original
    computed them. For tests only."""
    comps = ordered_components(components)
    n = flow.shape[0]
    out = torch.zeros(n, rects.shape[0], stats_dim(comps), dtype=torch.float64)
    for i in range(n):
        for j, (x1, y1, x2, y2) in enumerate(rects.tolist()):
            dx = flow[i, 0, y1:y2, x1:x2].reshape(-1).float()
            dy = flow[i, 1, y1:y2, x1:x2].reshape(-1).float()
            mag = torch.sqrt(dx * dx + dy * dy).double()
            ang = torch.atan2(dy, dx).double()
            vals: list[float] = []
            for c in comps:
                if c == "mag_mean":
                    vals.append(mag.mean().item())
                elif c == "mag_std":
                    vals.append(mag.std().item() if mag.numel() > 1 else 0.0)
                elif c == "angle_mean":
                    vals.extend([torch.cos(ang).mean().item(), torch.sin(ang).mean().item()])
                else:
                    v = ang.std().item() if ang.numel() > 1 else 0.0
                    vals.append(v if v == v and abs(v) != float("inf") else 0.0)
            out[i, j] = torch.tensor(vals, dtype=torch.float64)
    return out.float()
