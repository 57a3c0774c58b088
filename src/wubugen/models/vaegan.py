"""The WuBu-GAAD hybrid VAE: encoder + (optional motion branch) + generator. The discriminator lives beside it.

Two tasks (the original's latent depended only on the last target frame):
  * reconstruct: the posterior sees the whole window; the generator rebuilds its last num_predict_frames frames;
  * predict: the encoder sees only the num_input_frames context frames; the generator produces the frames that follow,
    by default as a change from the last context frame (--predict_residual), so it starts at the copy-last baseline,
    optionally from that frame warped along a flow it predicts as well (--predict_warp).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from wubugen.config import FrameGeometry, ModelConfig
from wubugen.models.encoder import RegionalEncoder, latent_grid
from wubugen.models.generator import Generator
from wubugen.models.plain import PlainGenerator
from wubugen.models.warp import base_grid, warp_frame


@dataclass
class VAEOutput:
    recon: Tensor  # (B, T_out, C, H, W) in [-1, 1]
    target: Tensor  # (B, T_out, C, H, W): the frames recon stands for
    mu: Tensor  # posterior mean, latent shape
    logvar: Tensor


class WuBuGAADHybridGen(nn.Module):
    """clip (B, T_in + T_out, C, H, W) in [-1, 1] [+ flow] -> VAEOutput; built from its ModelConfig and FrameGeometry."""

    def __init__(self, m: ModelConfig, geo: FrameGeometry, motion: nn.Module | None = None):
        super().__init__()
        self.model_cfg, self.geometry = m, geo
        self.task = m.task
        self.t_in, self.t_out = geo.input_frames, geo.predict_frames
        self.motion = motion
        self.warp = False
        motion_dim = motion.out_dim if motion is not None else 0
        self.encoder = RegionalEncoder(m, geo, motion_dim=motion_dim)
        if m.backbone == "plain":
            self.generator = PlainGenerator(m, geo, *latent_grid(m, geo))
        else:
            ctx = m.encoder_channels if self.task == "predict" else 0
            self.warp = self.task == "predict" and m.predict_warp
            self.generator = Generator(m, geo, context_channels=ctx, extra_out_channels=2 if self.warp else 0)
        self.residual = self.task == "predict" and m.predict_residual
        if self.warp:  # the identity warp's grid, built once; the flow's largest displacement in pixels along (x, y)
            self.register_buffer("warp_grid", base_grid(geo.height, geo.width), persistent=False)
            self.register_buffer("warp_scale", torch.tensor([m.predict_warp_range * geo.width,
                                                             m.predict_warp_range * geo.height]), persistent=False)
        if self.residual:  # the change starts near zero: the first predictions are about the copy-last baseline
            # (scaled down, not zeroed: a zero output conv would stop every gradient before it on the first step)
            with torch.no_grad():
                self.generator.out.weight.mul_(0.01)
                self.generator.out.bias.zero_()

    # -- shapes --------------------------------------------------------------------------------------------------------
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one sample's latent (without the batch dim)."""
        m = self.model_cfg
        if m.latent_type == "spatial":
            return (m.latent_channels, self.t_out, *latent_grid(m, self.geometry))
        return (m.latent_dim,)

    def split(self, clip: Tensor) -> tuple[Tensor, Tensor]:
        """clip (B, T_in + T_out, C, H, W) -> (encoder frames, target frames)."""
        target = clip[:, self.t_in:self.t_in + self.t_out]
        enc = clip if self.task == "reconstruct" else clip[:, :self.t_in]
        return enc, target

    # -- parts ---------------------------------------------------------------------------------------------------------
    def encode(self, frames: Tensor, flow: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """frames (B, T_enc, C, H, W) [+ flow (B, T_enc-1, 2, H, W) for the motion branch] -> mu, logvar, context."""
        motion = self.motion(frames, flow) if self.motion is not None else None
        return self.encoder(frames, motion)

    def decode(self, z: Tensor, context: Tensor | None = None, frames: Tensor | None = None) -> Tensor:
        """z -> frames (B, T_out, C, H, W) in [-1, 1]; the predict task takes the encoder's context features and the
        context frames (B, T_in, C, H, W): with --predict_residual the generator's output changes the last of them, with
        --predict_skip_frames N the last N join its last stage."""
        if self.task != "predict":
            return self.generator(z)
        if (self.residual or self.generator.skip_frames) and frames is None:
            raise ValueError("the predict task's generator reads the context frames: give `frames`")
        out = self.generator(z, context, frames)
        if not self.residual:
            return out
        last = frames[:, -1]
        if self.warp:  # (B, T, C + 2, H, W): the change, then the flow in units of warp_scale
            c = last.shape[1]
            flow = out[:, :, c:].float() * self.warp_scale.float()[None, None, :, None, None]
            start, out = warp_frame(last, flow, self.warp_grid).to(out.dtype), out[:, :, :c]
        else:
            start = last[:, None].to(out.dtype)
        # tanh's range doubled, so any pixel can reach any value in [-1, 1] from any starting value
        return (start + 2 * out).clamp(-1, 1)

    @staticmethod
    def reparameterize(mu: Tensor, logvar: Tensor, sample: bool = True) -> Tensor:
        if not sample:
            return mu
        # randn, not randn_like: randn_like follows mu's memory layout, so channels-last maps (--compile_norms) would
        # get the same numbers at other positions; this draws in logical order whatever the layout
        return mu + torch.randn(mu.shape, dtype=mu.dtype, device=mu.device) * torch.exp(0.5 * logvar)

    def forward(self, clip: Tensor, flow: Tensor | None = None, sample_posterior: bool = True) -> VAEOutput:
        """clip (B, T_in + T_out, C, H, W) in [-1, 1]. Validation reconstructs from mu (sample_posterior=False)."""
        enc, target = self.split(clip)
        mu, logvar, context = self.encode(enc, flow)
        z = self.reparameterize(mu, logvar, sample_posterior)
        return VAEOutput(self.decode(z, context, clip[:, :self.t_in]), target, mu, logvar)

    @torch.no_grad()
    def sample(self, num: int, context_clip: Tensor | None = None, generator: torch.Generator | None = None,
               noise: Tensor | None = None) -> Tensor:
        """Unconditional samples from the prior, using the same GAAD boxes as training (they are static buffers).
        In the predict task a context clip (B, T_in, C, H, W) is required. -> (num, T_out, C, H, W)"""
        device = next(self.parameters()).device
        context = frames = None
        if self.task == "predict":
            if context_clip is None:
                raise ValueError("the predict task samples futures of a context clip: give context_clip")
            frames = context_clip[:, :self.t_in].to(device)
            _, _, context = self.encode(frames)
            num = context.shape[0]
        if noise is None:
            noise = torch.randn((num, *self.latent_shape()), generator=generator, device=device)
        return self.decode(noise.to(device), context, frames)


def build_motion(m: ModelConfig, geo: FrameGeometry) -> nn.Module | None:
    if not m.use_wubu_motion_branch:
        return None
    from wubugen.models.motion import MotionEncoder  # the motion branch needs the flow backends

    return MotionEncoder(m, geo)


def build_model(m: ModelConfig, geo: FrameGeometry) -> WuBuGAADHybridGen:
    return WuBuGAADHybridGen(m, geo, build_motion(m, geo))
