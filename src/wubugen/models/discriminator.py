"""Discriminators: a spatio-temporal 3-D CNN (optionally with GAAD-region FiLM) and a regional 2-D CNN over GAAD crops.

Both take clips (B, T_d, C, H, W) in [-1, 1] with T_d = num_predict_frames (real and fake are the same time positions)
and return logits (B, 1), or (B, P) patch logits with `disc_patch_logits`.
"""
from __future__ import annotations

import math

from torch import Tensor, nn

from wubugen.config import FrameGeometry, ModelConfig
from wubugen.models.layers import RegionFiLM, masks_for, maybe_sn, pin_channels_last, region_boxes
from wubugen.models.normact import norm_film_act
from wubugen.models.roi import StaticRoIAlign


def _conv_out(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


def _head(features: int, min_hidden: int, max_hidden: int, sn: bool) -> nn.Sequential:
    if features <= 1.5 * min_hidden:
        return nn.Sequential(maybe_sn(nn.Linear(features, 1), sn))
    hidden = min(max(features // 2, min_hidden), max_hidden)
    return nn.Sequential(maybe_sn(nn.Linear(features, hidden), sn), nn.LeakyReLU(0.2),
                         maybe_sn(nn.Linear(hidden, 1), sn))


class SpatioTemporalDiscriminator(nn.Module):
    """3-D conv blocks (spectral norm optional) -> pooled features -> MLP head, one logit per clip; or, with
    `disc_patch_logits`, at most 3 blocks and a final conv: a map of logits, one per overlapping space-time patch
    (PatchGAN, as taming's NLayerDiscriminator), which judges local realism and does not learn to tell clips apart as
    easily on a small dataset. With `disc_use_gaad_film_condition`, every block is modulated by spatially varying FiLM
    from the GAAD region map at its resolution."""

    def __init__(self, m: ModelConfig, geo: FrameGeometry):
        super().__init__()
        sn, self.use_film = m.disc_apply_spectral_norm, m.disc_use_gaad_film_condition
        t, h, w = geo.predict_frames, geo.height, geo.width
        short = min(h, w)
        n_down = max(1, min(int(math.log2(short / 4)) if short >= 8 else 1, int(math.log2(short))))
        self.patch_logits = m.disc_patch_logits
        if self.patch_logits:
            n_down = min(n_down, 3)
        boxes = region_boxes(m, w, h) if self.use_film else None
        blocks = []
        cin = geo.channels
        for i in range(n_down):
            cout = min(m.disc_base_disc_channels * 2 ** i, m.disc_max_disc_channels)
            kt = min(m.disc_temporal_kernel_size, t) if t > 1 else 1
            st = 2 if (i == 0 and t > m.disc_temporal_kernel_size and t >= 2) else 1
            sh, sw = (2 if h >= 8 else 1), (2 if w >= 8 else 1)
            conv = nn.Conv3d(cin, cout, (kt, 4, 4), (st, sh, sw), (kt // 2 if kt > 1 else 0, 1, 1), bias=False)
            t, h, w = _conv_out(t, kt, st, kt // 2 if kt > 1 else 0), _conv_out(h, 4, sh, 1), _conv_out(w, 4, sw, 1)
            layers: list[nn.Module] = [maybe_sn(conv, sn), nn.InstanceNorm3d(cout, affine=not self.use_film)]
            if self.use_film:
                layers.append(RegionFiLM(masks_for(boxes, geo.width, geo.height, h, w), cout,
                                         m.disc_gaad_condition_dim_disc))
            layers.append(nn.LeakyReLU(0.2))
            blocks.append(nn.Sequential(*layers))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fused_norms = False  # a runtime switch (--compile_norms: models/normact.py), not a model option
        self.cl_maps = False  # a runtime switch (--channels_last_maps: layers.pin_channels_last), not a model option
        self.t_final = t
        if self.patch_logits:
            self.head = maybe_sn(nn.Conv3d(cin, 1, (1, 3, 3), 1, (0, 1, 1)), sn)
        else:
            self.pool = nn.AdaptiveAvgPool3d((t, 1, 1))
            self.head = _head(cin * t, m.disc_min_hidden_fc_dim, m.disc_max_hidden_fc_dim, sn)

    def forward(self, clips: Tensor) -> Tensor:
        """clips (B, T, C, H, W) -> logits (B, 1), or (B, T' * h' * w') patch logits."""
        x = clips.permute(0, 2, 1, 3, 4)  # (B, C, T, H, W)
        if self.fused_norms:
            for conv, norm, *rest in self.blocks:  # rest: [RegionFiLM,] LeakyReLU
                x = norm_film_act(conv(x), norm, rest[0] if len(rest) == 2 else None, True, act="lrelu")
        else:
            for conv, norm, *rest in self.blocks:
                x = pin_channels_last(norm(conv(x)), self.cl_maps)
                for layer in rest:
                    x = layer(x)
        if self.patch_logits:
            return self.head(x).flatten(1)
        return self.head(self.pool(x).flatten(1))


class RegionalDiscriminator(nn.Module):
    """One batched RoIAlign crop per frame and GAAD region -> shared 2-D CNN -> mean over regions and frames -> logit."""

    def __init__(self, m: ModelConfig, geo: FrameGeometry):
        super().__init__()
        sn = m.disc_apply_spectral_norm
        self.patch = m.disc_patch_size
        # RoIAlign (sampling ratio 2, aligned) over the fixed GAAD boxes as a static gather (models/roi.py)
        self.roi = StaticRoIAlign(region_boxes(m, geo.width, geo.height), geo.height, geo.width,
                                  (self.patch, self.patch))
        layers: list[nn.Module] = []
        cin = geo.channels
        for cout in m.disc_cnn_channels_2d:
            layers += [maybe_sn(nn.Conv2d(cin, cout, 4, 2, 1, bias=False), sn), nn.InstanceNorm2d(cout, affine=True),
                       nn.LeakyReLU(0.2)]
            cin = cout
        self.cnn = nn.Sequential(*layers)
        self.head = maybe_sn(nn.Linear(cin, 1), sn)

    def forward(self, clips: Tensor) -> Tensor:
        b, t, c, h, w = clips.shape
        frames = clips.reshape(b * t, c, h, w)
        crops = self.roi(frames).to(frames.dtype)
        crops = crops.reshape(-1, c, self.patch, self.patch)  # (B*T*R, C, p, p)
        feats = self.cnn(crops).mean((2, 3))  # (B*T*R, F)
        return self.head(feats.reshape(b, -1, feats.shape[-1]).mean(1))


def build_discriminator(m: ModelConfig, geo: FrameGeometry) -> nn.Module:
    if m.discriminator_type == "spatio_temporal_cnn":
        return SpatioTemporalDiscriminator(m, geo)
    return RegionalDiscriminator(m, geo)
