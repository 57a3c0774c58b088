"""The generator (decoder): latent [+ context features] -> num_predict_frames frames at any H x W.

A spatial latent (B, C_z, T, h, w) is decoded by 3-D conv blocks that upsample x2 per stage; a global latent (B, latent_dim)
is first expanded by a Linear onto a small grid. Every stage is modulated by spatially varying GAAD-region FiLM. The output
grid is the ceiling multiple of the frame size and is cropped to H x W, so non-square and non-power-of-two frames are
produced directly (the original pooled a square output to the frame).
Temporal kernels act at the lowest resolution and in the final conv, where they are cheap; high-resolution stages are
spatial-only (1, 4, 4) transposed convs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from wubugen.config import FrameGeometry, ModelConfig
from wubugen.models.encoder import latent_grid
from wubugen.models.layers import ResBlock3d, crop_to, group_norm, region_boxes, region_film
from wubugen.models.tapconv import TapConv3d

MAX_CHANNELS = 512


def global_grid(height: int, width: int) -> tuple[int, int, int]:
    """(n_up, h0, w0) for a global latent: upsample until the short side of the starting grid is 4-7 cells."""
    n_up = max(1, int(math.floor(math.log2(max(min(height, width), 8) / 4))))
    return n_up, math.ceil(height / 2 ** n_up), math.ceil(width / 2 ** n_up)


class Generator(nn.Module):
    """z: (B, C_z, T_out, h, w) spatial or (B, latent_dim) global; context (B, C_e, h, w) in the predict task
    [+ the context frames (B, T_in, C, H, W), whose last predict_skip_frames join the last stage]
    -> frames (B, T_out, C + extra_out_channels, H, W) in [-1, 1] (the predict task's warp adds 2 flow channels)."""

    def __init__(self, m: ModelConfig, geo: FrameGeometry, context_channels: int = 0, extra_out_channels: int = 0):
        super().__init__()
        self.height, self.width, self.t_out = geo.height, geo.width, geo.predict_frames
        self.checkpointing = False  # a runtime switch (layers.set_activation_checkpointing), not a model option
        self.spatial = m.latent_type == "spatial"
        kt = m.gen_temporal_kernel_size if self.t_out > 1 else 1
        ks = m.gen_final_conv_kernel_spatial
        if self.spatial:
            n_up = int(math.log2(m.latent_downsample))
            h0, w0 = latent_grid(m, geo)
        else:
            n_up, h0, w0 = global_grid(geo.height, geo.width)
        base = m.gen_base_channels
        chans = [min(MAX_CHANNELS, base * 2 ** (n_up - i)) for i in range(n_up + 1)]
        self.grid0 = (h0, w0)
        if self.spatial:
            in_ch = m.latent_channels
        else:
            in_ch = chans[0]
            self.expand = nn.Linear(m.latent_dim, in_ch * self.t_out * h0 * w0)
        self.context_channels = context_channels

        boxes = region_boxes(m, geo.width, geo.height)

        def film(ch: int, level: int) -> nn.Module:
            return region_film(m.gen_region_film, boxes, geo.width, geo.height, h0 * 2 ** level, w0 * 2 ** level, ch)

        self.stem = nn.Conv3d(in_ch + context_channels, chans[0], (kt, 3, 3), 1, (kt // 2, 1, 1))
        self.stem_norm = group_norm(chans[0])
        self.stem_film = film(chans[0], 0)
        self.ups = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.films = nn.ModuleList()
        for i in range(n_up):
            kti = kt if i == 0 or m.gen_temporal_stages == "all" else 1
            self.ups.append(nn.ConvTranspose3d(chans[i], chans[i + 1], (kti, 4, 4), (1, 2, 2), (kti // 2, 1, 1)))
            self.norms.append(group_norm(chans[i + 1]))
            self.films.append(film(chans[i + 1], i + 1))
        self.act = nn.GELU()
        # the predict task's (the only one with context features): at most the context frames there are
        self.skip_frames = min(m.predict_skip_frames, geo.input_frames) if context_channels else 0
        if self.skip_frames:
            # the skip's features once per clip at full resolution, then merged with the last stage's features of
            # every output frame (a (1, 3, 3) conv: the output conv's temporal kernel mixes the frames after it)
            sc = m.predict_skip_channels
            self.skip_in = nn.Sequential(nn.Conv2d(self.skip_frames * geo.channels, sc, 3, 1, 1), group_norm(sc),
                                         nn.GELU())
            self.skip_merge = nn.Conv3d(chans[-1] + sc, chans[-1], (1, 3, 3), 1, (0, 1, 1))
            self.skip_norm = group_norm(chans[-1])
        self.out = TapConv3d(chans[-1], geo.channels + extra_out_channels, (kt, ks, ks))
        # capacity at the latent resolution, where 3-D convs are cheap (built last: earlier layers keep their init)
        self.res_blocks = nn.Sequential(*[ResBlock3d(chans[0], kt) for _ in range(m.gen_res_blocks)])

    def forward(self, z: Tensor, context: Tensor | None = None, frames: Tensor | None = None) -> Tensor:
        if not self.spatial:
            h0, w0 = self.grid0
            z = self.expand(z).reshape(z.shape[0], -1, self.t_out, h0, w0)
        if self.context_channels:
            if context.shape[-2:] != z.shape[-2:]:  # a global latent starts on a coarser grid than the context features
                context = F.adaptive_avg_pool2d(context, z.shape[-2:])
            z = torch.cat([z, context[:, :, None].to(z.dtype).expand(-1, -1, z.shape[2], -1, -1)], 1)
        x = self.res_blocks(self.act(self.stem_film(self.stem_norm(self.stem(z)))))
        n = len(self.ups)
        for i in range(n - 1):
            x = self.stage(i, x)
        skip = None
        if self.skip_frames:
            if frames is None or frames.shape[1] < self.skip_frames:
                raise ValueError(f"--predict_skip_frames: give the context frames (at least {self.skip_frames})")
            # the last N frames (B, N*C, H, W) -> (B, sc, H, W)
            skip = self.skip_in(frames[:, -self.skip_frames:].flatten(1, 2).to(x.dtype))
        if self.checkpointing and torch.is_grad_enabled():
            # the full-resolution stage is recomputed in backward (nothing random in it)
            x = checkpoint(self.last_stage, x, skip, use_reentrant=False, preserve_rng_state=False)
        else:
            x = self.last_stage(x, skip)
        return crop_to(x, self.height, self.width).permute(0, 2, 1, 3, 4)

    def stage(self, i: int, x: Tensor) -> Tensor:
        return self.act(self.films[i](self.norms[i](self.ups[i](x))))

    def last_stage(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        """The last upsampling stage [merged with the skip's features (B, sc, H, W)] and the output conv.
        -> (B, C, T, H', W') in [-1, 1]"""
        if len(self.ups):
            x = self.stage(len(self.ups) - 1, x)
        if skip is not None:
            h, w = x.shape[-2:]  # the output grid is the frame's ceiling multiple: pad the frames' features to it
            skip = F.pad(skip, (0, w - skip.shape[-1], 0, h - skip.shape[-2]))
            skip = skip[:, :, None].expand(-1, -1, x.shape[2], -1, -1)
            x = x + self.act(self.skip_norm(self.skip_merge(torch.cat([x, skip], 1))))
        return torch.tanh(self.out(x))
