"""Backward warping of a frame by per-pixel displacements: the predict task's motion-compensated starting point.

A generator that has to redraw moving edges through an 8x-downsampled latent blurs them; moving the last context
frame's own pixels along a predicted flow keeps them sharp, and the flow itself is smooth enough for the coarse latent
to carry (the idea of deep voxel flow, Liu et al. 2017, and of the warping predictors since).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def base_grid(height: int, width: int, device: torch.device | str | None = None) -> Tensor:
    """The sampling grid of the identity warp in grid_sample's normalised coordinates (align_corners=False: pixel
    centres at (2i + 1) / n - 1). -> (H, W, 2), last dim (x, y)."""
    ys = (2 * torch.arange(height, device=device, dtype=torch.float32) + 1) / height - 1
    xs = (2 * torch.arange(width, device=device, dtype=torch.float32) + 1) / width - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], -1)


def warp_frame(frame: Tensor, flow: Tensor, grid: Tensor | None = None) -> Tensor:
    """frame (B, C, H, W); flow (B, T, 2, H, W) in pixels, channel 0 along x (width), 1 along y: output pixel p of
    frame t reads frame at p + flow[t](p), bilinearly, the border repeated outside. -> (B, T, C, H, W), in float32
    (grid_sample's coordinates need it; bf16 would round displacements to a fraction of a pixel at 256 wide)."""
    b, t, _, h, w = flow.shape
    if grid is None:
        grid = base_grid(h, w, flow.device)
    # pixels -> normalised units, by Python scalars: a tensor made from host values here would be a host-to-device
    # copy in every step, which a CUDA-graph capture refuses
    f = flow.float()
    step = torch.stack([f[:, :, 0] * (2.0 / w), f[:, :, 1] * (2.0 / h)], -1).reshape(b * t, h, w, 2)
    coords = grid.float()[None] + step
    src = frame.float()[:, None].expand(-1, t, -1, -1, -1).reshape(b * t, *frame.shape[1:])
    out = F.grid_sample(src, coords, mode="bilinear", padding_mode="border", align_corners=False)
    return out.reshape(b, t, *frame.shape[1:])
