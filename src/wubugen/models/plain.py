"""The plain backbone: the spatial path and generator of a plain 3-D conv VAE, which the WuBu-GAAD paths join.

`--backbone plain` builds the encoder's spatial path and the generator as the plain conv VAE peer is
(../shared/reference/peer/peer_vae.py): 3-D convs (3x3x3, GroupNorm, SiLU) at every scale, (3, 4, 4) stride (1, 2, 2)
convs down and transposed convs up, 1x1x1 maps into and out of the latent. With `--region_codes none
--no-gen_region_film` it is the peer's network layer for layer (tests/test_models.py copies the peer's weights in and
compares outputs); only the logvar clamp is wubugen's (-30, 20) instead of the peer's (-20, 10). Inside wubugen's
training it beat the peer itself at equal steps, where wubugen's own backbone stayed about 1 dB behind
(docs/results.md, call 10). The WuBu-GAAD parts stay optional on top of it: the WuBu-T region codes join the latent
features (`--region_codes`), the motion branch joins through WuBu-T, GAAD-region FiLM modulates every generator block
(`--gen_region_film`).

Widths come from encoder_shallow_cnn_channels (full resolution) and encoder_channels (latent resolution), mirrored in
the generator; the wubu_gaad backbone's depth and kernel options (encoder_res_blocks, encoder_temporal_kernel_size,
gen_base_channels, gen_res_blocks, gen_temporal_kernel_size, gen_temporal_stages, gen_final_conv_kernel_spatial) do
not apply to it (the `backbone` option's help says so).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from wubugen.config import FrameGeometry, ModelConfig
from wubugen.models.layers import crop_to, group_norm, pad_to_grid, pin_channels_last, region_boxes, region_film
from wubugen.models.normact import norm_film_act
from wubugen.models.tapconv import TapConv3d


def _conv(cin: int, cout: int, down: bool = False) -> nn.Conv3d:
    k, s = ((3, 4, 4), (1, 2, 2)) if down else ((3, 3, 3), 1)
    return nn.Conv3d(cin, cout, k, s, 1)


def plain_widths(m: ModelConfig) -> list[int]:
    """Channels from full resolution down to the latent grid: shallow, doubling, encoder_channels at the latent (one
    per downsampling; both backbones' encoders; the config refuses latent_downsample 1 for the plain one)."""
    n = int(math.log2(m.latent_downsample))
    cs, ce = m.encoder_shallow_cnn_channels, m.encoder_channels
    return [cs] + [min(ce, cs * 2 ** (i + 1)) if i < n - 1 else ce for i in range(n)]


class PlainSpatialPath(nn.Module):
    """clips (B, C, T, H, W) in [-1, 1] -> features (B, C_e, T, h, w) at 1/latent_downsample (sizes that are not
    multiples are padded by replicating the edges, as the regional encoder's spatial path)."""

    def __init__(self, m: ModelConfig, geo: FrameGeometry, h: int, w: int):
        super().__init__()
        self.f, self.h, self.w = m.latent_downsample, h, w
        ch = plain_widths(m)
        layers = [_conv(geo.channels, ch[0])] + [_conv(ch[i], ch[i + 1], True) for i in range(len(ch) - 1)]
        layers.append(_conv(ch[-1], ch[-1]))
        self.body = nn.Sequential(*[nn.Sequential(c, group_norm(c.out_channels), nn.SiLU()) for c in layers])
        self.fused_norms = False  # a runtime switch (--compile_norms: models/normact.py), not a model option
        self.cl_maps = False  # a runtime switch (--channels_last_maps: layers.pin_channels_last), not a model option

    def forward(self, x: Tensor) -> Tensor:
        x = pad_to_grid(x, self.h, self.w, self.f)
        for conv, norm, act in self.body:
            if self.fused_norms:
                x = norm_film_act(conv(x), norm, None, True)
            else:
                x = act(pin_channels_last(norm(conv(x)), self.cl_maps))
        return x


class PlainGenerator(nn.Module):
    """z (B, C_z, T_out, h, w) -> frames (B, T_out, C, H, W) in [-1, 1]: a 1x1x1 map, two 3-D conv blocks at the
    latent resolution, one transposed-conv block per doubling, a 3x3x3 output conv; GAAD-region FiLM after each
    block's norm with --gen_region_film."""

    def __init__(self, m: ModelConfig, geo: FrameGeometry, h0: int, w0: int):
        super().__init__()
        self.height, self.width = geo.height, geo.width
        self.checkpointing = False  # a runtime switch (layers.set_activation_checkpointing), not a model option
        self.fused_norms = False  # a runtime switch (--compile_norms: models/normact.py), not a model option
        self.cl_maps = False  # a runtime switch (--channels_last_maps: layers.pin_channels_last), not a model option
        ch = plain_widths(m)[::-1]
        self.expand = nn.Conv3d(m.latent_channels, ch[0], 1)
        self.convs = nn.ModuleList([_conv(ch[0], ch[0]), _conv(ch[0], ch[0])] + [
            nn.ConvTranspose3d(ch[i], ch[i + 1], (3, 4, 4), (1, 2, 2), 1) for i in range(len(ch) - 1)])
        levels = [0, 0] + list(range(1, len(ch)))
        self.norms = nn.ModuleList([group_norm(c.out_channels) for c in self.convs])
        boxes = region_boxes(m, geo.width, geo.height)
        self.films = nn.ModuleList([
            region_film(m.gen_region_film, boxes, geo.width, geo.height, h0 * 2 ** lv, w0 * 2 ** lv, c.out_channels)
            for c, lv in zip(self.convs, levels)])
        self.act = nn.SiLU()
        # a TapConv3d is an nn.Conv3d (same parameters and math) that the trainer may switch to its faster tap path
        self.out = TapConv3d(ch[-1], geo.channels, (3, 3, 3))

    def forward(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """`context` is the predict task's, which this backbone does not take (the config refuses predict)."""
        x = self.expand(z)
        for i in range(len(self.convs) - 1):
            x = self.block(i, x)
        if self.checkpointing and torch.is_grad_enabled():
            # the full-resolution block and the output conv are recomputed in backward (nothing random in them)
            x = checkpoint(self.last_stage, x, use_reentrant=False, preserve_rng_state=False)
        else:
            x = self.last_stage(x)
        return crop_to(x, self.height, self.width).transpose(1, 2)

    def block(self, i: int, x: Tensor) -> Tensor:
        if self.fused_norms:
            return norm_film_act(self.convs[i](x), self.norms[i], self.films[i], True)
        return self.act(self.films[i](pin_channels_last(self.norms[i](self.convs[i](x)), self.cl_maps)))

    def last_stage(self, x: Tensor) -> Tensor:
        """The last (full-resolution) block and the output conv. -> (B, C, T, H', W') in [-1, 1]"""
        return torch.tanh(self.out(self.block(len(self.convs) - 1, x)))
