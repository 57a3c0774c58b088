"""The regional encoder: frames -> posterior (mu, logvar) of the latent.

Two paths meet in the latent:
  * the GAAD/WuBu path: a shallow CNN at full resolution, one batched RoIAlign over all frames and regions (or batched pixel
    patches), WuBu-S per region and frame, then WuBu-T per region over the concatenated time axis (every frame, and every
    motion step when the motion branch is on, reaches the latent);
  * a spatial path: the same shallow features downsampled to 1/latent_downsample (of every encoder frame, or with
    `encoder_targets_only` of the frames the latent stands for), mixed over time by 3-D convs, with optional residual
    blocks at the latent resolution (`--encoder_temporal_kernel_size 3`: 3-D convs at every scale instead of per-frame
    2-D ones); with `--backbone plain` the plain 3-D conv VAE's path instead (models/plain.py: the clip of target frames
    through 3-D convs at every scale, no time mix or residual blocks).
For a spatial latent the WuBu-T region codes are painted onto the latent grid through the rasterised GAAD boxes and join the
spatial features (added, or through a learned gate: `region_codes`); for a global latent (the original's shape) the region
codes are pooled into one vector.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from wubugen.config import FrameGeometry, ModelConfig
from wubugen.gaad import normalized_boxes
from wubugen.models.layers import ResBlock3d, group_norm, masks_for, pad_to_grid, region_boxes, side_stream
from wubugen.models.plain import PlainSpatialPath, plain_widths
from wubugen.models.roi import StaticRoIAlign
from wubugen.models.wubu import WuBuStack

LOGVAR_RANGE = (-30.0, 20.0)
CHECKPOINT_CHUNK_FRAMES = 16  # frames per recomputed chunk of the per-frame CNN under activation checkpointing


def _cat_chunks(chunks: list[Tensor | None]) -> Tensor | None:
    if chunks[0] is None:
        return None
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


def spatial_block(cin: int, cout: int, stride: int = 1, kt: int = 1) -> nn.Sequential:
    """A conv, GroupNorm, GELU; stride 2 halves H and W. kt 1: per frame, (N, C, H, W); kt > 1: a 3-D conv whose
    temporal kernel mixes neighbouring frames, (B, C, T, H, W) with T kept."""
    k, p = (4, 1) if stride == 2 else (3, 1)
    if kt == 1:
        return nn.Sequential(nn.Conv2d(cin, cout, k, stride, p), group_norm(cout), nn.GELU())
    conv = nn.Conv3d(cin, cout, (kt, k, k), (1, stride, stride), (kt // 2, p, p))
    return nn.Sequential(conv, group_norm(cout), nn.GELU())


def conv3d_block(cin: int, cout: int, kt: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, (kt, 3, 3), 1, (kt // 2, 1, 1)), group_norm(cout), nn.GELU())


def latent_grid(m: ModelConfig, geo: FrameGeometry) -> tuple[int, int]:
    """(h, w) of a spatial latent: the frame at 1/latent_downsample, rounded up."""
    f = m.latent_downsample
    return math.ceil(geo.height / f), math.ceil(geo.width / f)


class RegionalEncoder(nn.Module):
    """frames (B, T_enc, C, H, W) in [-1, 1] [+ motion features (B, T_enc, D_m)]
    -> mu, logvar: (B, C_z, T_out, h, w) for a spatial latent or (B, latent_dim) for a global one,
       context features (B, C_e, h, w) of the last encoder frame (used by the generator in the predict task)."""

    def __init__(self, m: ModelConfig, geo: FrameGeometry, motion_dim: int = 0):
        super().__init__()
        self.t_enc = geo.encoder_frames(m.task)
        self.t_out = geo.predict_frames
        self.spatial = m.latent_type == "spatial"
        self.latent_downsample = m.latent_downsample
        H, W, C = geo.height, geo.width, geo.channels
        cs, ce = m.encoder_shallow_cnn_channels, m.encoder_channels
        self.h, self.w = latent_grid(m, geo)
        self.checkpointing = False  # a runtime switch (layers.set_activation_checkpointing), not a model option
        self.codes_stream = False  # a runtime switch (layers.set_codes_stream), not a model option
        # a runtime switch (layers.set_codes_outside_compile): under torch.compile the region codes run eagerly
        self.codes_outside_compile = False
        self.region_codes = m.region_codes
        self.use_regions = m.region_codes != "none"
        if not self.use_regions and not self.spatial:
            raise ValueError("a global latent is made of the region codes: region_codes 'none' needs a spatial latent")
        if not self.use_regions and motion_dim:
            raise ValueError("the motion branch joins the latent through WuBu-T: region_codes 'none' has no place for it")
        # the spatial CNN's frames: the ones the latent stands for (reconstruct, targets only) or every encoder frame
        self.targets_only = m.encoder_targets_only and m.task == "reconstruct" and self.spatial
        self.t_spatial = self.t_out if self.targets_only else self.t_enc
        # temporal kernels in the spatial path at every scale (as the plain 3-D conv VAE peer's encoder); 1: per frame
        self.kt = m.encoder_temporal_kernel_size if self.t_spatial > 1 and m.backbone != "plain" else 1

        boxes = region_boxes(m, W, H)
        self.register_buffer("box_features", normalized_boxes(boxes, W, H), persistent=False)  # (R, 4)
        self.num_regions = boxes.shape[0]

        # the spatial path exists where something consumes it: a spatial latent, or the predict task's context
        self.use_spatial_path = self.spatial or m.task == "predict"
        self.use_roi_align = m.encoder_use_roi_align
        # shallow CNN at full resolution (the original's RoIAlign feature map), then down to the latent grid; built
        # where something reads it (a global latent from pixel-patch regions needs none)
        # --backbone plain: the spatial path is the plain 3-D conv VAE's (models/plain.py), the stem only RoIAlign's
        self.plain = m.backbone == "plain"
        if self.plain and not (self.spatial and self.targets_only):
            raise ValueError("the plain backbone encodes the frames a spatial latent stands for: reconstruct task, "
                             "spatial latent, encoder_targets_only")
        own_path = self.use_spatial_path and not self.plain
        if own_path or (self.use_regions and self.use_roi_align):
            self.stem = spatial_block(C, cs, kt=self.kt)  # kt is 1 for the plain backbone: RoIAlign's per-frame map
        if own_path:
            n_down = int(math.log2(m.latent_downsample))
            chans = plain_widths(m)
            self.down = nn.Sequential(*[spatial_block(chans[i], chans[i + 1], 2, self.kt) for i in range(n_down)],
                                      spatial_block(chans[-1], ce, kt=self.kt))

        dt = 0
        if self.use_regions:
            # GAAD regions -> WuBu-S
            if self.use_roi_align:
                self.roi_size = (m.encoder_roi_align_output_h, m.encoder_roi_align_output_w)
                patch_dim = cs * self.roi_size[0] * self.roi_size[1]
            else:
                self.roi_size = (m.encoder_pixel_patch_size, m.encoder_pixel_patch_size)
                patch_dim = C * self.roi_size[0] * self.roi_size[1]
            # RoIAlign (sampling ratio 2, aligned) over the fixed boxes as a static gather (models/roi.py); the
            # pixel-patch mode is the same op on the frames
            self.roi = StaticRoIAlign(boxes, H, W, self.roi_size, sampling_ratio=2)
            self.patch_embed = nn.Linear(patch_dim, m.encoder_initial_tangent_dim)
            stack_kw = dict(dropout=m.wubu_dropout, boundary_points=m.wubu_boundary_points,
                            hidden_ratio=m.wubu_combiner_hidden_ratio, euclidean=m.wubu_euclidean)
            self.wubu_s = WuBuStack(m.encoder_initial_tangent_dim, m.wubu_s, **stack_kw)
            ds = self.wubu_s.out_dim
            # WuBu-T over time: per region, the concatenation of its T_enc frame features (+ motion) and its box
            self.motion_dim = motion_dim
            t_in = self.t_enc * (ds + motion_dim) + 4
            self.wubu_t = WuBuStack(t_in, m.wubu_t, **stack_kw)
            dt = self.wubu_t.out_dim

        if self.spatial:
            if self.use_regions:
                masks = masks_for(boxes, W, H, self.h, self.w)
                self.register_buffer("paint", masks / masks.sum(0, keepdim=True).clamp_min(1e-6), persistent=False)
                self.region_to_map = nn.Linear(dt, ce)
            if self.plain:
                self.plain_path = PlainSpatialPath(m, geo, self.h, self.w)
            else:
                self._build_time_layers(m, ce)
            self.to_mu = nn.Conv3d(ce, m.latent_channels, 1)
            self.to_logvar = nn.Conv3d(ce, m.latent_channels, 1)
            if not self.plain:  # built after the posterior maps: the initialisation order of earlier commits
                kt = 3 if self.t_out > 1 else 1
                self.res_blocks = nn.Sequential(*[ResBlock3d(ce, kt) for _ in range(m.encoder_res_blocks)])
            if self.region_codes == "gated":
                # per channel, starting small: the codes are a correction the spatial path may take up, not a second
                # copy of the content that a decoder could learn to memorise training clips by
                self.region_gate = nn.Parameter(torch.full((ce,), 0.05))
        else:
            self.to_mu = nn.Linear(dt, m.latent_dim)
            self.to_logvar = nn.Linear(dt, m.latent_dim)

    def _build_time_layers(self, m: ModelConfig, ce: int) -> None:
        """wubu_gaad backbone: the time mix over the spatial path's frames, the learned map to latent time steps,
        the head."""
        self.time_mix = conv3d_block(ce, ce, 3 if self.t_spatial > 1 else 1)
        # learned map from the spatial path's time steps to latent time steps; starts by picking the frames the
        # latent stands for (the targets when reconstructing, the last context frame when predicting), every frame
        # still reachable
        proj = torch.zeros(self.t_out, self.t_spatial)
        for k in range(self.t_out):
            src = self.t_spatial - self.t_out + k if m.task == "reconstruct" else self.t_spatial - 1
            proj[k, src] = 1.0
        self.time_proj = nn.Parameter(proj)
        self.head = conv3d_block(ce, ce, 1)

    def shallow_features(self, x: Tensor) -> Tensor:
        """The full-resolution stem of every frame: (N, C, H, W) -> (N, cs, H, W), RoIAlign's feature map; with
        temporal kernels, of clips: (B, C, T, H, W) -> (B, cs, T, H, W)."""
        return self.stem(x)

    def latent_features(self, shallow: Tensor) -> Tensor:
        """The spatial path down to the latent grid: (N, cs, H, W) -> (N, C_e, h, w); with temporal kernels
        (B, cs, T, H, W) -> (B, C_e, T, h, w)."""
        return self.down(pad_to_grid(shallow, self.h, self.w, self.latent_downsample))

    def _clip_path(self, fn: Callable[..., Tensor], *args) -> Tensor:
        """fn over whole clips (the temporal-kernel path), recomputed in the backward under activation checkpointing."""
        if not (self.checkpointing and torch.is_grad_enabled()):
            return fn(*args)
        return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False)

    def _per_frame(self, fn, x: Tensor) -> Tensor:
        """fn over frames, recomputed in chunks in the backward under activation checkpointing: nothing random inside
        (no RNG state to keep, and none may be read during CUDA-graph capture); frames are independent, so the
        backward holds one chunk's activations and cuDNN workspace at a time (all 52 launcher frames at once took a
        1 GiB workspace on an H100 in fp32)."""
        if not (self.checkpointing and torch.is_grad_enabled()):
            return fn(x)
        chunks = x.tensor_split(max(1, math.ceil(x.shape[0] / CHECKPOINT_CHUNK_FRAMES)))
        return _cat_chunks([checkpoint(fn, c, use_reentrant=False, preserve_rng_state=False) for c in chunks])

    def _region_map(self, codes: Tensor) -> Tensor:
        """The WuBu-T region codes (B, R, D_t) painted onto the latent grid through the GAAD boxes -> (B, C_e, h, w)."""
        region_map = torch.einsum("brc,rhw->bchw", self.region_to_map(codes), self.paint.to(codes.dtype))
        if self.region_codes == "gated":
            region_map = region_map * self.region_gate.to(region_map.dtype)[None, :, None, None]
        return region_map

    def _clip_features(self, clip: Tensor, stemmed: bool) -> Tensor:
        """The temporal-kernel spatial path: frames (B, T_s, C, H, W), or stem features (B, T_s, cs, H, W) when
        `stemmed` -> (B, T_s, C_e, h, w)."""
        x = clip.transpose(1, 2)
        return self.latent_features(x if stemmed else self.shallow_features(x)).transpose(1, 2)

    def spatial_features(self, frames: Tensor, shallow: Tensor | None) -> Tensor:
        """The wubu_gaad backbone's spatial path: frames (B, T, C, H, W) [and the stem's features (B*T, cs, H, W)
        where they were computed for every frame] -> (B, T_s, C_e, h, w) of the spatial path's frames."""
        b, t = frames.shape[:2]
        if self.kt > 1:
            if shallow is None:
                return self._clip_path(self._clip_features, frames[:, t - self.t_spatial:], False)
            return self._clip_path(self._clip_features, shallow.unflatten(0, (b, t))[:, t - self.t_spatial:], True)
        return self._frame_features(frames, shallow, b, t)

    def _frame_features(self, frames: Tensor, shallow: Tensor | None, b: int, t: int) -> Tensor:
        """The per-frame spatial path. -> (B, T_s, C_e, h, w)"""
        if self.targets_only:  # the frames the latent stands for: each clip's last T_out
            if shallow is not None:
                src = shallow.unflatten(0, (b, t))[:, t - self.t_out:].flatten(0, 1)
            else:
                src = self._per_frame(self.shallow_features, frames[:, t - self.t_out:].flatten(0, 1))
        else:
            src = shallow
        feat = self._per_frame(self.latent_features, src)
        return feat.reshape(b, self.t_spatial, *feat.shape[1:])

    def region_tokens(self, shallow: Tensor, frames: Tensor) -> Tensor:
        """One RoIAlign over all frames and regions. -> (B*T, R, patch_dim)"""
        src = shallow if self.use_roi_align else frames
        return self.roi(src)

    def region_codes_of(self, shallow: Tensor, x: Tensor, b: int, t: int, motion: Tensor | None) -> Tensor:
        """WuBu-S per frame and region, then WuBu-T per region over time. -> (B, R, D_t)"""
        tokens = self.patch_embed(self.region_tokens(shallow, x))  # (B*T, R, D_tan)
        s = self.wubu_s(tokens).reshape(b, t, self.num_regions, -1)  # (B, T, R, D_s)
        if self.motion_dim:
            s = torch.cat([s, motion[:, :, None, :].to(s.dtype).expand(-1, -1, self.num_regions, -1)], -1)
        per_region = s.permute(0, 2, 1, 3).reshape(b, self.num_regions, -1)  # (B, R, T*(D_s+D_m))
        box = self.box_features.to(per_region.dtype)[None].expand(b, -1, -1)
        return self.wubu_t(torch.cat([per_region, box], -1))

    def _launch_codes(self, shallow: Tensor | None, x: Tensor, b: int, t: int, motion: Tensor | None):
        """The region codes (B, R, D_t), and the stream they were queued on (None: the current one). With
        `codes_stream` on CUDA they go on a second stream: WuBu's thousands of small kernels (forward, and through
        autograd's stream rule their backward) then run beside the conv path's large ones instead of after them; a
        CUDA-graph capture records the fork and the join. The codes read only what exists at this point."""
        side = self._codes_side_stream(x)
        if side is None:
            return self.region_codes_of(shallow, x, b, t, motion), None
        main = torch.cuda.current_stream(x.device)
        side.wait_stream(main)
        for inp in (shallow, x, motion):  # made on the current stream, read on the side one: no early reuse
            if inp is not None:
                inp.record_stream(side)
        with torch.cuda.stream(side):
            codes = self.region_codes_of(shallow, x, b, t, motion)
        return codes, side

    def _codes_side_stream(self, x: Tensor) -> torch.cuda.Stream | None:
        """The stream the codes of `x` go on: the device's side stream with `codes_stream` on CUDA, else None."""
        return side_stream(x.device) if self.codes_stream and x.is_cuda else None

    def _start_codes(self, shallow: Tensor | None, x: Tensor, b: int, t: int, motion: Tensor | None):
        """_launch_codes, kept out of a compiled graph with `codes_outside_compile`: WuBu's hyperbolic levels are most
        of the model's operators but under 1% of its FLOPs; out of the graphs they leave inductor fewer operators to
        compile (44% less set-up on the CPU; on an H100 not measured against a same-call baseline yet:
        docs/benchmarks.md, session 10), and eagerly they may run on the side stream."""
        if self.codes_outside_compile:
            return self._codes_eager(shallow, x, b, t, motion), None
        return self._launch_codes(shallow, x, b, t, motion)

    def _finish_codes(self, codes: Tensor | None, stream) -> Tensor | None:
        """_join, the counterpart of _start_codes."""
        if self.codes_outside_compile:
            return self._join_eager(codes)
        return self._join(codes, stream)

    @torch.compiler.disable
    def _codes_eager(self, shallow: Tensor | None, x: Tensor, b: int, t: int, motion: Tensor | None) -> Tensor:
        return self._launch_codes(shallow, x, b, t, motion)[0]

    @torch.compiler.disable
    def _join_eager(self, codes: Tensor) -> Tensor:
        # the stream _launch_codes used, found again here: no compiled graph ever holds it
        return self._join(codes, self._codes_side_stream(codes))

    @staticmethod
    def _join(codes: Tensor | None, stream) -> Tensor | None:
        """Make the current stream wait for the codes' stream before they are read (and keep their memory from being
        reused by that stream while the current one still reads it)."""
        if stream is not None:
            main = torch.cuda.current_stream(codes.device)
            main.wait_stream(stream)
            codes.record_stream(main)
        return codes

    def forward(self, frames: Tensor, motion: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        b, t, c, hh, ww = frames.shape
        x = frames.reshape(b * t, c, hh, ww)
        # the stem runs on every frame only where RoIAlign reads it; otherwise on the spatial path's frames alone
        roi_reads_stem = self.use_regions and self.use_roi_align
        stem_all = roi_reads_stem or (self.use_spatial_path and not self.targets_only)
        if not stem_all:
            shallow = None
        elif self.kt > 1:  # (B, cs, T, H, W) -> (B*T, cs, H, W)
            shallow = self._clip_path(self.shallow_features, frames.transpose(1, 2)).transpose(1, 2).flatten(0, 1)
        else:
            shallow = self._per_frame(self.shallow_features, x)  # (B*T, cs, H, W)
        codes, codes_on = self._start_codes(shallow, x, b, t, motion) if self.use_regions else (None, None)

        if not self.use_spatial_path:
            pooled = self._finish_codes(codes, codes_on).mean(1)
            return self.to_mu(pooled), self.to_logvar(pooled).clamp(*LOGVAR_RANGE), None
        if self.plain:  # the targets as one clip -> (B, C_e, T_out, h, w), the region codes, the posterior
            h = self._clip_path(self.plain_path, frames[:, t - self.t_out:].transpose(1, 2))
            if codes is not None:
                h = h + self._region_map(self._finish_codes(codes, codes_on))[:, :, None]
            return self.to_mu(h), self.to_logvar(h).clamp(*LOGVAR_RANGE), None
        feat = self.spatial_features(frames, shallow)
        context = feat[:, -1]
        codes = self._finish_codes(codes, codes_on)
        if not self.spatial:
            pooled = codes.mean(1)
            return self.to_mu(pooled), self.to_logvar(pooled).clamp(*LOGVAR_RANGE), context

        h = feat.permute(0, 2, 1, 3, 4)  # (B, C_e, T_s, h, w)
        if codes is not None:
            h = h + self._region_map(codes)[:, :, None]
        h = self.time_mix(h)
        h = torch.einsum("bcthw,kt->bckhw", h, self.time_proj.to(h.dtype))  # (B, C_e, T_out, h, w)
        h = self.head(self.res_blocks(h))
        return self.to_mu(h), self.to_logvar(h).clamp(*LOGVAR_RANGE), context
