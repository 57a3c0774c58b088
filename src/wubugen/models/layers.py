"""Small building blocks shared by the encoder, generator and discriminators."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from wubugen.gaad import gaad_boxes, region_masks
from wubugen.models.group_norm import GroupNorm


def group_norm(channels: int) -> nn.GroupNorm:
    """nn.GroupNorm with 8 groups (1 for few channels): models/group_norm.py's subclass, whose statistics can be taken
    in chunks (--split_norm_stats)."""
    groups = 8 if channels % 8 == 0 and channels >= 16 else 1
    return GroupNorm(groups, channels)


class ResBlock3d(nn.Module):
    """Pre-activation residual block (GroupNorm, GELU, conv) x 2 plus the identity, as latent diffusion's autoencoder
    blocks: capacity at the latent resolution, where convolutions are cheap. (B, C, T, h, w) -> same shape."""

    def __init__(self, channels: int, kt: int):
        super().__init__()
        pad = (kt // 2, 1, 1)
        self.body = nn.Sequential(
            group_norm(channels), nn.GELU(), nn.Conv3d(channels, channels, (kt, 3, 3), 1, pad),
            group_norm(channels), nn.GELU(), nn.Conv3d(channels, channels, (kt, 3, 3), 1, pad),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def to_channels_last(module: nn.Module) -> nn.Module:
    """Put every 4-D parameter and buffer in channels-last and every 5-D one in channels-last-3d, in place.

    cuDNN's tensor-core convolution kernels are channels-last; with the frames channels-last but the weights not, cuDNN
    transposes activations to NHWC and back around convolutions (5.8 ms of a 44 ms compiled fp32 step on an H100). The
    trainer applies this under torch.compile only: compiled bf16 went 29.6 -> 28.9 ms, while eager steps got slower
    (GroupNorm's eager kernel on channels-last maps; docs/benchmarks.md).
    Parameters keep their identity (optimizers and EMA built before or after see the same tensors); values are unchanged.
    """
    def fmt(t: Tensor) -> Tensor:
        if t.dim() == 4:
            return t.contiguous(memory_format=torch.channels_last)
        if t.dim() == 5:
            return t.contiguous(memory_format=torch.channels_last_3d)
        return t

    return module._apply(fmt)


def maybe_sn(module: nn.Module, enabled: bool) -> nn.Module:
    return spectral_norm(module) if enabled else module


def region_boxes(model_cfg, width: int, height: int, motion: bool = False) -> Tensor:
    """The GAAD boxes the model uses for a frame size (appearance or motion). -> (R, 4) float32."""
    if motion:
        return gaad_boxes(width, height, model_cfg.gaad_motion_num_regions, model_cfg.gaad_motion_decomposition_type,
                          model_cfg.gaad_min_size_px)
    return gaad_boxes(width, height, model_cfg.gaad_num_regions, model_cfg.gaad_decomposition_type,
                      model_cfg.gaad_min_size_px)


class RegionFiLM(nn.Module):
    """Spatially varying FiLM from a rasterised GAAD region map.

    The map (R, h, w) says how much of each cell each region covers; a 1x1-conv MLP turns it into per-pixel (gamma, beta),
    so features are modulated by *where* they are in the region hierarchy (the original's FiLM condition was one constant
    vector for every sample and pixel). Starts near the identity (small last layer; exactly zero would leave
    the first layer without gradient).
    Works on (B, C, T, h, w) and (B, C, h, w).
    """

    def __init__(self, masks: Tensor, channels: int, hidden: int):
        super().__init__()
        self.register_buffer("masks", masks[None].clone(), persistent=False)  # (1, R, h, w)
        r = masks.shape[0]
        self.net = nn.Sequential(nn.Conv2d(r, hidden, 1), nn.GELU(), nn.Conv2d(hidden, 2 * channels, 1))
        nn.init.normal_(self.net[-1].weight, std=1e-3)
        nn.init.zeros_(self.net[-1].bias)

    def maps(self, dim: int) -> tuple[Tensor, Tensor]:
        """(gamma, beta), each (1, C, h, w), or (1, C, 1, h, w) for 5-D maps (`dim`: the features' dims)."""
        gamma, beta = self.net(self.masks).chunk(2, dim=1)
        if dim == 5:
            gamma, beta = gamma[:, :, None], beta[:, :, None]
        return gamma, beta

    def forward(self, x: Tensor) -> Tensor:
        gamma, beta = self.maps(x.dim())
        return x * (1 + gamma) + beta


def region_film(enabled: bool, boxes: Tensor, width: int, height: int, h: int, w: int, channels: int) -> nn.Module:
    """The generators' FiLM of a stage on an h x w grid (RegionFiLM from the boxes' coverage maps), or the identity
    without --gen_region_film."""
    if not enabled:
        return nn.Identity()
    return RegionFiLM(masks_for(boxes, width, height, h, w), channels, max(32, boxes.shape[0]))


def pad_to_grid(x: Tensor, h: int, w: int, factor: int) -> Tensor:
    """Replicate the right and bottom edges of (..., H, W) frames up to (h * factor, w * factor), so that a frame size
    that is not a multiple of the downsampling reaches the ceil-sized latent grid; 4-D and 5-D inputs."""
    pad_w, pad_h = w * factor - x.shape[-1], h * factor - x.shape[-2]
    if not (pad_w or pad_h):
        return x
    return nn.functional.pad(x, (0, pad_w, 0, pad_h) + ((0, 0) if x.dim() == 5 else ()), mode="replicate")


def masks_for(boxes: Tensor, width: int, height: int, h: int, w: int) -> Tensor:
    """Region coverage maps of `boxes` on an h x w grid over the frame. -> (R, h, w)"""
    return region_masks(boxes, width, height, h, w)


def crop_to(x: Tensor, height: int, width: int) -> Tensor:
    """Keep the top-left height x width of the last two dims (decoders produce ceil-multiples of the stride)."""
    return x[..., :height, :width]



_SIDE_STREAMS: dict[int, torch.cuda.Stream] = {}


def side_stream(device: torch.device) -> torch.cuda.Stream:
    """One second CUDA stream per device, made once and kept out of the modules (a module holding a stream could not
    be deep-copied or pickled). High priority: its small kernels sit on the step's critical path, and torch hands out
    such streams from another pool than the default-priority ones of graph capture and warm-up, so it is not one of
    them."""
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SIDE_STREAMS:
        _SIDE_STREAMS[idx] = torch.cuda.Stream(device, priority=-1)
    return _SIDE_STREAMS[idx]


def set_runtime_switch(module: nn.Module, name: str, on: bool) -> int:
    """Set the runtime switch `name` (a bool attribute, not a model option: the math is unchanged) on every submodule
    that has it. -> how many."""
    found = [m for m in module.modules() if hasattr(m, name)]
    for m in found:
        setattr(m, name, on)
    return len(found)


def set_codes_stream(module: nn.Module, on: bool) -> None:
    """Run the WuBu region codes on a second CUDA stream, beside the conv path (the same kernels on the same inputs).
    Acts on every submodule with a `codes_stream` attribute."""
    set_runtime_switch(module, "codes_stream", on)


def pin_channels_last(x: Tensor, on: bool) -> Tensor:
    """A 5-D map in channels-last-3d when `on` (the runtime switch `cl_maps`, --channels_last_maps). On CUDA eager
    GroupNorm and InstanceNorm return contiguous maps, and torch.compile saved those activations contiguous, while the
    convs (channels-last-3d weights under --compile) run channels-last: each conv's backward then copied its saved
    input and its gradient (inductor's conv lowering pins layouts for 2-D convs only; 3.2 ms of copies and casts in a
    23.4 ms compiled step on an H100, docs/benchmarks.md). With the map channels-last-3d in the traced graph, the
    saved activation should keep that layout: not yet measured on a GPU. The values are unchanged."""
    return x.contiguous(memory_format=torch.channels_last_3d) if on and x.dim() == 5 else x


def set_channels_last_maps(module: nn.Module, on: bool) -> int:
    """Pin the maps after every norm channels-last-3d (pin_channels_last) in every submodule with a `cl_maps`
    attribute (the plain backbone, the spatio-temporal D). -> how many."""
    return set_runtime_switch(module, "cl_maps", on)


def set_split_norm_stats(module: nn.Module, on: bool) -> int:
    """Take every GroupNorm's statistics in chunks inside compiled graphs (models/group_norm.py, the runtime switch
    `split_stats`, --split_norm_stats). -> how many."""
    return set_runtime_switch(module, "split_stats", on)


def set_codes_outside_compile(module: nn.Module, on: bool) -> None:
    """Keep the WuBu region codes out of torch.compile's graphs (they run eagerly, on the side stream where
    set_codes_stream is on): the same kernels as uncompiled, so the same model. Acts on every submodule with a
    `codes_outside_compile` attribute."""
    set_runtime_switch(module, "codes_outside_compile", on)


def set_activation_checkpointing(module: nn.Module, on: bool) -> None:
    """Recompute full-resolution activations in the backward pass instead of keeping them (a runtime switch like the
    tap convs: the math, and so the model, is unchanged). Acts on every submodule with a `checkpointing` attribute."""
    set_runtime_switch(module, "checkpointing", on)
