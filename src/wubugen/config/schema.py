"""The schema: every option of wubugen as a typed dataclass field with its default, and the checks on their values.

This is the single source of truth for options: every field is declared with `opt()`, which carries its description,
range, `--help` group and the training guide's launcher variable as field metadata. Flags, TOML keys, `--help`
(config/arguments.py), docs/options.md (config/reference.py) and the range checks of `validate()` are generated from it.
A field's flag is its name (`--image_h`), or, for the three WuBu stacks, the stack's prefix plus the field's name
(`--wubu_s_hyperbolic_dims`). The original script's flag names are kept where they still mean something.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Literal, get_type_hints

from wubugen.errors import UserError

PRESETS = ("launcher", "original", "tiny", "quickstart")
FLOW_STATS = ("mag_mean", "angle_mean", "mag_std", "angle_std")
VAL_METRICS = ("avg_val_recon_mse", "avg_val_psnr", "avg_val_ssim", "avg_val_lpips")


class ConfigError(UserError, ValueError):
    """A bad option value: reported to the user as one line, exit code 2."""


# --------------------------------------------------------------------------------------------------------------------
# Field metadata: what `--help`, docs/options.md and validate() know of an option
# --------------------------------------------------------------------------------------------------------------------
GROUPS = {  # the --help sections, in order; a field's group defaults to its TOML section's (the stacks': wubu)
    "data": "data: footage, frame size, windows, validation split",
    "model": "model: task, latent, GAAD regions, encoder, generator, motion branch",
    "wubu": "WuBu stacks: S per GAAD region and frame, T per region over time, M per motion region and flow step",
    "disc": "discriminator",
    "train": "training: length, losses, optimizers, non-finite steps",
    "qcontrol": "Q-control: the learning-rate, momentum and lambda_kl controllers",
    "checkpoints": "checkpoints, phases and validation",
    "health": "health monitor: the training guide's troubleshooting rules (its section 6) watched live",
    "log": "logging: console, W&B, TensorBoard, samples",
    "speed": "speed: device, precision, compilation, CUDA graphs, memory",
}
STACK_NAMES = {"wubu_s": "WuBu-S", "wubu_t": "WuBu-T", "wubu_m": "WuBu-M"}  # `{stack}` in a stack field's help


@dataclass(frozen=True)
class Range:
    """The values a numeric option accepts (for a list: each element): bounds, or a few allowed values."""

    text: str  # as written in the schema: "> 0", ">= 0", "[0, 1)", "1 or 3"
    lo: float | None = None
    lo_closed: bool = True
    hi: float | None = None
    hi_closed: bool = True
    allowed: tuple[float, ...] = ()

    def __contains__(self, x: float) -> bool:
        if self.allowed:
            return x in self.allowed
        if self.lo is not None and (x < self.lo or (x == self.lo and not self.lo_closed)):
            return False
        return self.hi is None or x < self.hi or (x == self.hi and self.hi_closed)

    @property
    def phrase(self) -> str:
        """As a message says it: "positive", ">= 0", "in [0, 1)", "1 or 3"."""
        if self.text == "> 0":
            return "positive"
        return f"in {self.text}" if self.text[0] in "[(" else self.text


_NUM = r"(-?[0-9.]+(?:e-?[0-9]+)?)"
_COMPARISON = re.compile(rf"^(>=|>|<=|<) {_NUM}$")
_INTERVAL = re.compile(rf"^([\[(]){_NUM}, {_NUM}([\])])$")
_ALLOWED = re.compile(rf"^{_NUM}(?: or {_NUM})+$")


@functools.lru_cache(maxsize=None)
def parse_range(text: str) -> Range:
    if m := _COMPARISON.match(text):
        op, v = m.group(1), float(m.group(2))
        if op.startswith(">"):
            return Range(text, lo=v, lo_closed=op == ">=")
        return Range(text, hi=v, hi_closed=op == "<=")
    if m := _INTERVAL.match(text):
        return Range(text, float(m.group(2)), m.group(1) == "[", float(m.group(3)), m.group(4) == "]")
    if _ALLOWED.match(text):
        return Range(text, allowed=tuple(float(v) for v in text.split(" or ")))
    raise ValueError(f"unknown range {text!r}: write '> 0', '>= 0', '[0, 1)' or '1 or 3'")


def opt(default: Any, help: str, range: str | None = None, *, group: str | None = None, guide: str | None = None,
        common: bool = False, metavar: str | None = None) -> Any:
    """A config field with what the user is told about it. help: one line, what it does and in which unit (in a stack's
    fields `{stack}` names the stack); range: the values validate() accepts (see `Range`); group: its --help section
    (a key of GROUPS; default: its section's); guide: the training guide's launcher variable for it (LAMBDA_KL);
    common: shown by plain `--help`, where the rest waits for `--help-all`; metavar: for strings (PATH, DIR, NAME).
    A list default is copied for every instance."""
    if range is not None:
        parse_range(range)  # a typo in a range fails at import, not at the first bad value
    if group is not None and group not in GROUPS:
        raise ValueError(f"unknown option group {group!r}")
    meta = {"help": help, "range": range, "group": group, "guide": guide, "common": common, "metavar": metavar}
    if isinstance(default, list):
        return field(default_factory=functools.partial(list, default), metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class WuBuStackConfig:
    """One WuBu nesting stack (S: per region, T: over time, M: motion). Flags: --wubu_{s,t,m}_<field>."""

    num_levels: int = opt(
        2, "{stack}: nesting levels (0: none, a Linear maps the stack's input to its output width)", ">= 0")
    hyperbolic_dims: list[int] = opt(
        [64, 32], "{stack}: each level's dimension (one value is repeated for every level)", "> 0")
    initial_curvatures: list[float] = opt(
        [1.0, 0.8], "{stack}: each level's initial Poincare-ball curvature, learned from there (one value is repeated)",
        "> 0")
    use_rotation: bool = opt(
        False, "{stack}: a learned rotation (orthogonal, by the Cayley map) before each level-to-level map")
    phi_influence_curvature: bool = opt(False, "{stack}: scale level i's initial curvature by phi^((i mod 4) - 1.5)")
    phi_influence_rotation_init: bool = opt(
        False, "{stack}: start the rotations at phi-scaled plane angles (with use_rotation)")
    output_dim: int | None = opt(
        None, "{stack}: output width; none: the last level's dimension (the input width with 0 levels)", "> 0")


@dataclass
class DataConfig:
    video_data_path: str | None = opt(
        None, "training footage: a video file, a folder of videos and frame folders (searched recursively), a frame "
        "folder, a .npy array or a list file; none: the synthetic demo footage (`wubugen data demo`)",
        guide="VIDEO_DATA_PATH", common=True, metavar="PATH")
    validation_video_path: str | None = opt(
        None, "separate validation footage, in the same forms; none: hold out --validation_split_fraction of the "
        "training footage", guide="VALIDATION_VIDEO_PATH", common=True, metavar="PATH")
    validation_split_fraction: float = opt(
        0.1, "share of the training windows held out for validation when there is no --validation_video_path (0: no "
        "validation)", "[0, 1)", common=True)
    val_split_mode: Literal["auto", "files", "time"] = opt(
        "auto", "how the held-out share is chosen: whole files, time blocks, or auto (files when there are several, "
        "else time blocks)")
    val_block_size: int = opt(
        20, "windows per validation time block; training windows sharing frames with a block are dropped as a guard (0 "
        "or 1: single windows)", ">= 0")
    image_h: int = opt(64, "frame height the footage is resized to, in pixels", ">= 8", common=True)
    image_w: int = opt(64, "frame width the footage is resized to, in pixels", ">= 8", common=True)
    num_channels: int = opt(3, "colour channels: 3 (RGB) or 1 (grey)", "1 or 3")
    num_input_frames: int = opt(
        3, "context frames at the start of each window (all the predict task's encoder sees)", "> 0", common=True)
    num_predict_frames: int = opt(
        1, "frames the generator makes: the window's last ones, after the context; also the discriminator's clip "
        "length", "> 0", common=True)
    frame_skip: int = opt(1, "step between the frames of a window, in source frames (2: every other frame)", "> 0")
    window_stride: int = opt(1, "step between the first frames of consecutive windows, in source frames", "> 0")
    resize: Literal["center_crop", "stretch", "pad"] = opt(
        "center_crop", "how footage of another shape becomes image_h x image_w: center_crop (cover, keep the aspect "
        "ratio), stretch, or pad (fit inside, black bars)")
    scene_cut_threshold: float = opt(
        0.0, "> 0: no window straddles a frame change above this (mean absolute difference of 0-255 pixel values); 0: "
        "scene cuts ignored", "[0, 255]")
    cache_dir: str = opt(
        ".wubugen_cache", "folder of the decoded-frame and flow cache, and of torch.compile's caches (`wubugen data "
        "cache` shows and prunes it)", metavar="DIR")
    num_workers: int = opt(
        2, "data-loading worker processes (0: load in the main process, the fastest from the memory-mapped cache "
        "without augmentation)", ">= 0", common=True)
    strict_data: bool = opt(False, "stop at the first unusable file instead of skipping it with a warning")
    # mirror training windows at random (the launcher and quickstart presets do: +0.6 dB, docs/results.md)
    augment_flip: bool = opt(False, "training augmentation: mirror windows horizontally with probability 1/2")
    augment_random_crop: bool = opt(False, "training augmentation: a random scaled crop of each window")
    demo_num_clips: int = opt(8, "clips of synthetic demo footage made when no --video_data_path is given", "> 0")
    demo_clip_frames: int = opt(60, "frames per synthetic demo clip", "> 0")


@dataclass
class ModelConfig:
    task: Literal["reconstruct", "predict"] = opt(
        "reconstruct", "reconstruct: the encoder sees the whole window and the generator rebuilds its last frames; "
        "predict: the encoder sees only the context frames and the generator predicts the rest", common=True)
    # a generator that must rebuild the last context frame through an 8x-downsampled latent loses its fine detail and
    # falls below simply copying it (the baseline the predict task is judged against); predicting the change keeps it
    predict_residual: bool = opt(
        True, "predict task: the generator outputs the change from the last context frame (near zero at the start, "
        "so training starts at the copy-last-frame baseline); false: the frames themselves")
    # redrawing moving edges through the coarse latent blurs them; moving the last frame's own pixels keeps them sharp
    predict_warp: bool = opt(
        False, "predict task: the change is taken from the last context frame warped along a flow the generator "
        "predicts per output frame (starting at zero), not from the frame as it is; needs --predict_residual")
    predict_warp_range: float = opt(
        0.125, "--predict_warp: the largest displacement per output frame, as a fraction of the frame's width "
        "(along x) and height (along y)", "> 0")
    # the generator sees the context only at the latent grid, so its change to the last frame is as coarse as that grid:
    # the last frames themselves at full resolution (a U-Net skip) let it move sharp edges (+0.7 to +1.3 dB at equal
    # steps on real footage, docs/results.md call 23)
    predict_skip_frames: int = opt(
        2, "predict task: the last N context frames (all of them where there are fewer) at full resolution join the "
        "generator's last stage, a skip connection past the latent; 0: none. The reconstruct task has no such input",
        ">= 0")
    predict_skip_channels: int = opt(32, "--predict_skip_frames: the skip's feature channels", "> 0")
    # plain: the plain conv VAE peer's 3-D conv network (models/plain.py); with --region_codes none and
    # --no-gen_region_film it is the zero point of the ablation table
    backbone: Literal["wubu_gaad", "plain"] = opt(
        "wubu_gaad", "the conv backbone of the encoder's spatial path and the generator. wubu_gaad: per-frame 2-D "
        "convs, a time mix and residual blocks; plain: 3-D convs at every scale, as a plain conv VAE (reconstruct task, "
        "spatial latent, widths from --encoder_shallow_cnn_channels and --encoder_channels; the res-block, temporal-"
        "kernel and gen_* width options do not apply). The WuBu-GAAD parts join either (--region_codes, "
        "--gen_region_film, the motion branch)")
    # latent
    latent_type: Literal["spatial", "global"] = opt(
        "spatial", "spatial: a grid of latent_channels at 1/latent_downsample of the frame size per generated frame; "
        "global: one latent_dim vector per clip (the original's shape)", common=True)
    latent_dim: int = opt(
        256, "size of a global latent; with a spatial latent, the width of the WuBu-T region codes fused into it",
        "> 0")
    latent_channels: int = opt(8, "channels of a spatial latent", "> 0")
    latent_downsample: int = opt(
        4, "a spatial latent is 1/N of the frame size in each direction (a power of two)", "> 0")
    kl_reduction: Literal["mean", "sum"] = opt(
        "mean", "the KL term's reduction over latent elements: mean (a lambda_kl means the same for any latent size) "
        "or the guide's sum")
    # GAAD
    gaad_num_regions: int = opt(
        12, "GAAD regions per frame: the encoder's regions and the generator's and discriminator's FiLM maps",
        "> 0", common=True)
    gaad_decomposition_type: Literal["spiral", "subdivide", "hybrid"] = opt(
        "hybrid", "region layout: spiral (phi-spiral boxes), subdivide (golden-ratio subdivision) or hybrid (half "
        "each)")
    gaad_min_size_px: int = opt(4, "smallest side of a golden-subdivision box, in pixels", ">= 1")
    # encoder
    encoder_use_roi_align: bool = opt(
        False, "the regions are read by RoIAlign from a shallow CNN's full-resolution features; false: resized pixel "
        "patches")
    encoder_shallow_cnn_channels: int = opt(
        64, "channels of the encoder's full-resolution CNN (RoIAlign and the spatial path read it)", "> 0")
    encoder_roi_align_output_h: int = opt(4, "RoIAlign output height per region, in feature cells", "> 0")
    encoder_roi_align_output_w: int = opt(4, "RoIAlign output width per region, in feature cells", "> 0")
    encoder_pixel_patch_size: int = opt(8, "side of a region's pixel patch without RoIAlign, in pixels", "> 0")
    encoder_initial_tangent_dim: int = opt(
        128, "width of the region embeddings entering WuBu-S (and of the motion embeddings entering WuBu-M)", "> 0")
    encoder_channels: int = opt(256, "channels of the encoder's spatial path at the latent resolution", "> 0")
    # reconstruct task: the spatial CNN sees only the frames the latent stands for (the context frames still reach the
    # latent through the GAAD/WuBu-T path); False runs it on every encoder frame
    encoder_targets_only: bool = opt(
        True, "reconstruct task, spatial latent: the spatial CNN sees only the frames the latent stands for (the "
        "context still reaches it through GAAD/WuBu-T); false: every encoder frame")
    encoder_res_blocks: int = opt(1, "residual 3-D conv blocks at the latent resolution, encoder side", ">= 0")
    # 1: the spatial path is per frame (2-D convs) until the latent resolution; 3: every scale mixes neighbouring
    # frames, as the plain 3-D conv VAE peer's encoder does (alone it measured worse, call 8 in docs/results.md)
    encoder_temporal_kernel_size: int = opt(
        1, "temporal kernel of the encoder's spatial path at every scale, in frames (odd; 1: per-frame 2-D convs; "
        "has no effect where that path sees one frame, or with --backbone plain)", "> 0")
    # how the WuBu-T region codes join the spatial latent: painted and added, painted through a learned per-channel
    # gate that starts small (the codes then help where they help), or not at all (no WuBu-S/T in the encoder)
    region_codes: Literal["add", "gated", "none"] = opt(
        "gated", "how the WuBu-T region codes join a spatial latent: add (painted onto the grid and added), gated "
        "(through a learned per-channel gate that starts small) or none (no WuBu-S/T in the encoder)")
    # WuBu
    wubu_s: WuBuStackConfig = field(default_factory=lambda: WuBuStackConfig(2, [64, 32], [1.0, 0.8]))
    wubu_t: WuBuStackConfig = field(default_factory=lambda: WuBuStackConfig(1, [128], [0.5]))
    wubu_m: WuBuStackConfig = field(default_factory=lambda: WuBuStackConfig(1, [32], [0.7]))
    wubu_dropout: float = opt(0.1, "dropout in the WuBu levels' tangent combiners", "[0, 1)", group="wubu")
    wubu_boundary_points: int = opt(
        4, "learned boundary points per WuBu level (anchors of its relative vectors)", "> 0", group="wubu")
    wubu_combiner_hidden_ratio: float = opt(
        1.0, "hidden width of a level's tangent combiner, as a multiple of the level's dimension (the original had a "
        "fixed 32)", "> 0", group="wubu")
    wubu_euclidean: bool = opt(
        False, "ablation: every hyperbolic map becomes the identity (flat geometry, same sizes)", group="wubu")
    # motion branch
    use_wubu_motion_branch: bool = opt(
        False, "the motion branch: optical flow between consecutive frames, per-region flow statistics, WuBu-M, joined "
        "with WuBu-T", common=True)
    gaad_motion_num_regions: int = opt(8, "GAAD regions per flow field in the motion branch", "> 0")
    gaad_motion_decomposition_type: Literal["spiral", "subdivide", "hybrid"] = opt(
        "hybrid", "layout of the motion regions, as --gaad_decomposition_type")
    optical_flow_net_type: Literal["raft_small", "raft_large", "dis"] = opt(
        "raft_small", "flow network: raft_small or raft_large (torchvision RAFT; weights from --flow_weights or the "
        "torch hub cache) or dis (OpenCV DIS: no weights, not differentiable)", common=True)
    flow_weights: str | None = opt(None, "RAFT weights file; none: the torch hub cache", metavar="PATH")
    freeze_flow_net: bool = opt(
        True, "keep the flow network fixed in eval mode (each clip's flow is then computed once and cached); false: "
        "train it with the model")
    flow_stats_components: list[str] = opt(
        ["mag_mean", "angle_mean"], "per-region flow statistics fed to WuBu-M, any of: mag_mean, angle_mean, mag_std, "
        "angle_std", metavar="STAT")
    # generator
    gen_base_channels: int = opt(
        64, "generator channels at full resolution, doubled per stage towards the latent (at most 512)", "> 0")
    gen_temporal_kernel_size: int = opt(
        3, "temporal kernel of the generator's latent-resolution and output convs, in frames (odd)", "> 0")
    gen_final_conv_kernel_spatial: int = opt(3, "spatial kernel of the generator's output conv, in pixels", "> 0")
    # first: the original's layout, temporal mixing at the latent resolution and in the output conv only; all: every
    # upsampling stage mixes frames too, as the plain 3-D conv VAE peer's decoder does (alone it measured worse:
    # call 8 in docs/results.md)
    gen_temporal_stages: Literal["first", "all"] = opt(
        "first", "upsampling stages with the temporal kernel: first (the latent-resolution stage only) or all")
    gen_res_blocks: int = opt(1, "residual 3-D conv blocks at the latent resolution, generator side", ">= 0")
    gen_region_film: bool = opt(
        True, "GAAD-region FiLM (modulation from the rasterised region map) on every generator stage")
    # discriminator
    discriminator_type: Literal["spatio_temporal_cnn", "regional_cnn"] = opt(
        "spatio_temporal_cnn", "spatio_temporal_cnn: 3-D convs over the clip; regional_cnn: a 2-D CNN over each GAAD "
        "region's crop", group="disc", common=True)
    disc_apply_spectral_norm: bool = opt(
        True, "spectral normalisation of the discriminator's convs and linear layers (the guide: keep it on)",
        group="disc", guide="DISC_APPLY_SPECTRAL_NORM", common=True)
    disc_base_disc_channels: int = opt(
        64, "channels of the first 3-D conv block, doubled per block up to --disc_max_disc_channels",
        "> 0", group="disc")
    disc_max_disc_channels: int = opt(512, "channel cap of the 3-D conv blocks", "> 0", group="disc")
    disc_temporal_kernel_size: int = opt(
        3, "temporal kernel of the 3-D conv blocks, in frames (odd)", "> 0", group="disc")
    disc_min_hidden_fc_dim: int = opt(
        128, "smallest hidden width of the logit head (at most 1.5x this many features: a single Linear)",
        "> 0", group="disc")
    disc_max_hidden_fc_dim: int = opt(512, "largest hidden width of the logit head", "> 0", group="disc")
    disc_use_gaad_film_condition: bool = opt(
        False, "GAAD-region FiLM in the discriminator, every block modulated by the region map (the guide's phase 3: "
        "start without it)", group="disc", guide="DISC_USE_GAAD_FILM_CONDITION", common=True)
    disc_gaad_condition_dim_disc: int = opt(
        64, "hidden width of the discriminator's FiLM conditioning", "> 0", group="disc")
    disc_patch_size: int = opt(16, "regional_cnn: side of each region's crop, in pixels", "> 0", group="disc")
    disc_cnn_channels_2d: list[int] = opt(
        [64, 128, 256], "regional_cnn: channels of each 2-D conv layer", "> 0", group="disc")
    # spatio-temporal D: a map of patch logits (PatchGAN: every patch judged, as taming's) instead of one per clip
    disc_patch_logits: bool = opt(
        True, "spatio_temporal_cnn: a map of logits, one per space-time patch (PatchGAN, at most 3 blocks), instead of "
        "one per clip", group="disc")


@dataclass
class TrainConfig:
    epochs: int = opt(
        100, "passes over the training windows, counted for this run (a phase started with --load_checkpoint trains "
        "this many)", ">= 0", guide="EPOCHS", common=True)
    max_steps: int = opt(0, "> 0: train this many optimizer steps, whatever --epochs says; 0: off", ">= 0", common=True)
    # > 0: stop after this many seconds since the run started (set-up included), then validate, sample and report as
    # at the last step
    max_seconds: float = opt(
        0.0, "> 0: stop this many seconds after the run started (set-up included), then validate, sample and report as "
        "at the last step; 0: off", ">= 0")
    batch_size: int = opt(4, "clips per micro-batch in each process (per GPU under torchrun)", "> 0", common=True)
    seed: int = opt(42, "seed of the initial weights, the data split, augmentation and sampling", common=True)
    device: str = opt(
        "auto", "auto (cuda when available, else cpu), cpu, cuda or cuda:N",
        group="speed", common=True, metavar="DEVICE")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = opt(
        "auto", "autocast precision: auto (bf16 on CUDA, fp32 on CPU), bf16, fp16 (with a gradient scaler) or fp32",
        group="speed", common=True)
    use_amp: bool = opt(
        False, "the original's flag: fp16 autocast with a gradient scaler (the same as --precision fp16)",
        group="speed")
    compile: bool = opt(
        False, "torch.compile both networks (minutes of compilation at the start, then faster steps)",
        group="speed", common=True)
    # on CUDA, torch.compile of the WuBu stacks alone (the many small hyperbolic ops fused into few kernels: 31.7 ->
    # 48.2 steps/s at 64x64 on an H200, docs/results.md). Off by default: on a cold inductor cache the launcher's first
    # log came 108 s after start against 27 s eagerly, and its 150 s run validated at 21.7 dB against 26.6 eagerly;
    # inductor's caches live under --cache_dir, so repeat runs of a long training start without recompiling
    compile_wubu: bool = opt(
        False, "on CUDA, torch.compile the WuBu stacks alone (faster steps after about 80 s of compilation on a cold "
        "cache, cached under --cache_dir; ignored with --compile)", group="speed")
    # on CUDA, torch.compile of one function: the hyperbolic part of a WuBu level (models/wubu.py poincare_level), shared
    # by every level and stack. Eagerly that part is about 1,950 of the 2,290 operators of the launcher's region codes,
    # forward and backward (benchmarks/wubu_ops.py): launch-bound small kernels. Not yet timed on a GPU
    compile_wubu_maps: bool = opt(
        False, "on CUDA, torch.compile the hyperbolic maps of the WuBu levels as one small shared function (fused "
        "kernels instead of about 550 per level; ignored with --compile or --compile_wubu)", group="speed")
    # on CUDA, torch.compile of one function: the plain backbone's GroupNorm -> region FiLM -> SiLU after every conv and
    # the spatio-temporal D's InstanceNorm -> FiLM -> LeakyReLU (models/normact.py), shared by every block; eagerly
    # memory-bound fp32 passes over full-resolution maps (8 GB a launcher step, benchmarks/roofline.py). Not yet timed
    # on a GPU
    compile_norms: bool = opt(
        False, "on CUDA, torch.compile the norm, region FiLM and activation after each conv of the plain backbone and the "
        "spatio-temporal D as one small shared function, and put those networks' conv weights channels-last (fused "
        "passes over the maps; ignored with --compile)", group="speed")
    # torch.compile mode: max-autotune-no-cudagraphs lets inductor time its own Triton convolution/matmul kernels against
    # cuDNN/cuBLAS per shape (much longer compilation); our CUDA graphs replace torch's, hence no reduce-overhead
    compile_mode: Literal["default", "max-autotune-no-cudagraphs"] = opt(
        "default", "torch.compile mode: default, or max-autotune-no-cudagraphs (inductor times its own kernels per "
        "shape: much longer compilation)", group="speed")
    # WuBu's region codes are most of the model's operators (2,293 launching operators at 64x64 by
    # benchmarks/wubu_ops.py, of 2,686 in the launcher step by benchmarks/roofline.py) and under 1% of its FLOPs. Off,
    # they run uncompiled (on the side stream with --wubu_side_stream) between the compiled parts: 44% less set-up on
    # the CPU; on an H100 the set-up was not shorter than whole-player compilation on other cards and calls, with no
    # same-call baseline yet (docs/benchmarks.md, session 10); hence on
    compile_region_codes: bool = opt(
        True, "with --compile, compile the WuBu region codes too; off: they run uncompiled (on a second stream with "
        "--wubu_side_stream) between the compiled conv path's graphs", group="speed")
    # capture the step's forward+backward in a CUDA graph after 3 eager steps (one CUDA process, no accumulation;
    # elsewhere the step runs eagerly): the host then launches one graph instead of thousands of small kernels
    cuda_graphs: bool = opt(
        True, "replay the training step as a CUDA graph after 3 eager steps (one CUDA process or --ddp_comm flat, "
        "--grad_accum_steps 1; elsewhere eager)", group="speed")
    # ddp: DDP's per-parameter hooks and bucket copies overlap the all-reduce with the backward but run on the host
    # every step, and rule out CUDA graphs; flat: the players are not wrapped, the step (graphed) writes the
    # gradients, then one all-reduce of one flat buffer averages them (train/grad_sync.py)
    ddp_comm: Literal["ddp", "flat"] = opt(
        "ddp", "multi-GPU gradient averaging: ddp (PyTorch DDP, overlapped with the backward) or flat (one all-reduce "
        "of a flat gradient buffer after the backward; CUDA graphs stay on)", group="speed")
    # recompute the full-resolution activations in the backward pass instead of keeping them (the encoder's per-frame
    # CNN, the generator's last stage): about 7% more FLOPs, half the activation memory; the math is unchanged
    activation_checkpointing: bool = opt(
        False, "recompute full-resolution activations in the backward pass: about 7% more FLOPs, half the activation "
        "memory, the same math", group="speed")
    # eager WuBu is thousands of small kernels (about 12 ms of a 31 ms step at 64x64, batch 32, on an H200, under CUDA
    # graphs): on a second stream they overlap the conv path's large kernels instead of queueing behind them
    wubu_side_stream: bool = opt(
        True, "on CUDA (one process, or --ddp_comm flat; with --compile only where --compile_region_codes is off), run "
        "the WuBu region codes on a second stream beside the conv path: the same kernels, so the same model",
        group="speed")
    # frames channels-last on CUDA (and, when compiled, the conv weights too: no cuDNN layout conversions)
    channels_last: bool = opt(
        True, "channels-last frames on CUDA (and conv weights when compiled, or with --compile_norms)",
        group="speed")
    # under --compile the conv weights are channels-last-3d but the norms' outputs contiguous (as eager GroupNorm
    # returns them), and the activations compile saves keep that layout: each 3-D conv's backward copied its input and
    # gradient (3.2 ms of a 23.4 ms compiled step on an H100, read off inductor's generated code, session 10). With
    # --split_norm_stats: 24.95 -> 22.14 ms compiled on an H100 (docs/benchmarks.md, session 12); off until a footage
    # run beside the peer checks it, as every change of a default
    channels_last_maps: bool = opt(
        False, "with --compile and --channels_last, keep the plain backbone's and the spatio-temporal D's maps "
        "channels-last-3d after every norm (the layout of their convs: no copies before the convs' backward; the same "
        "values)", group="speed")
    # GroupNorm's statistics are one reduction per (sample, group): 32 rows at batch 4, which inductor ran on a few dozen
    # thread blocks (GroupNorm's kernels: 4.0 ms of a 23.4 ms compiled step on an H100, docs/benchmarks.md, session 10).
    # On, they are taken per (sample, channel, chunk of rows) and combined exactly (models/group_norm.py), inside
    # --compile's graphs only: eagerly it would be more kernels than GroupNorm's own (validation, sampling and the
    # EMA's passes run the same modules uncompiled). With --channels_last_maps: 24.95 -> 22.14 ms compiled on an H100
    # (docs/benchmarks.md, session 12); off until a footage run beside the peer checks it
    split_norm_stats: bool = opt(
        False, "with --compile, take every GroupNorm's statistics in chunks of rows, combined exactly (many-row "
        "reductions forward and backward; the same function)", group="speed")
    # in fp32 on CUDA, the generator's output conv (3 output channels, where cuDNN is slow) runs as a 1x1 conv and a
    # shifted sum over its kernel taps: the same function, 4.1 -> 2.3 ms forward + backward on an H100 (models/tapconv.py);
    # bf16 keeps cuDNN's kernel, faster there
    tap_convs: bool = opt(
        True, "fp32 on CUDA: the generator's 3-channel output conv as a 1x1 conv and a shifted sum (the same function, "
        "faster than cuDNN there)", group="speed")
    grad_accum_steps: int = opt(1, "micro-batches accumulated per optimizer step", "> 0")
    # losses
    lambda_recon: float = opt(
        10.0, "weight of the reconstruction loss (pixel MSE)", ">= 0", guide="LAMBDA_RECON", common=True)
    lambda_kl: float = opt(
        1e-4, "weight of the KL divergence to the N(0, I) prior (the guide starts at 0.0001 and raises it 10x per "
        "phase)", ">= 0", guide="LAMBDA_KL", common=True)
    lambda_gan: float = opt(1.0, "weight of the generator's adversarial loss", ">= 0", guide="LAMBDA_GAN", common=True)
    gan_loss: Literal["bce", "hinge", "lsgan"] = opt("bce", "adversarial loss: bce (the original's), hinge or lsgan")
    gan_start_step: int = opt(
        0, "optimizer step from which the generator gets the adversarial term (the discriminator trains from the "
        "start)", ">= 0")
    # fixed: G's adversarial term weighs lambda_gan (the guide's); adaptive: lambda_gan times the ratio of the
    # reconstruction and adversarial gradient norms at the generator's output (taming's adaptive weight), clamped
    gan_weighting: Literal["fixed", "adaptive"] = opt(
        "adaptive", "fixed: the adversarial term weighs --lambda_gan; adaptive: --lambda_gan times the ratio of the "
        "reconstruction and adversarial gradient norms at the generator's output (taming's), clamped to "
        "--adaptive_weight_max")
    adaptive_weight_max: float = opt(1e4, "upper clamp of the adaptive adversarial weight", "> 0")
    # optimizers
    optimizer: Literal["riemannian_adam", "riemannian_sgd"] = opt(
        "riemannian_adam", "riemannian_adam, or riemannian_sgd (the original's RiSGD, with per-tensor gradient "
        "clipping); both keep WuBu's ball parameters on the ball")
    learning_rate_gen: float = opt(
        3e-4, "base learning rate of the encoder and generator (the Q-controller scales it)",
        "> 0", guide="LEARNING_RATE_GEN", common=True)
    learning_rate_disc: float = opt(
        1e-4, "base learning rate of the discriminator (the Q-controller scales it)",
        "> 0", guide="LEARNING_RATE_DISC", common=True)
    momentum: float = opt(0.9, "riemannian_sgd momentum (the Q-controller scales it)", "[0, 1)")
    weight_decay: float = opt(0.0, "weight decay of both optimizers", ">= 0")
    adam_betas: list[float] = opt([0.9, 0.99], "riemannian_adam's beta1 and beta2", "[0, 1)")
    risgd_max_grad_norm: float = opt(
        1.0, "riemannian_sgd: clip each parameter tensor's gradient to this norm (<= 0: off)")
    global_max_grad_norm: float = opt(
        5.0, "clip each network's total gradient norm to this (<= 0: off; the guide: 1.0-5.0 against exploding losses)",
        guide="GLOBAL_MAX_GRAD_NORM", common=True)
    # Q-control
    q_controller_enabled: bool = opt(
        False, "Q-learning controllers that scale each optimizer's learning rate and momentum from recent losses (and "
        "lambda_kl, with --lambda_kl_update_interval)", group="qcontrol", guide="Q_CONTROLLER_ENABLED", common=True)
    # optimizer steps between LR/momentum decisions (losses are read from the device then)
    q_control_interval: int = opt(
        10, "optimizer steps between learning-rate and momentum decisions", "> 0", group="qcontrol")
    lambda_kl_update_interval: int = opt(
        0, "> 0: optimizer steps between lambda_kl decisions (each on a new validation result); 0: lambda_kl stays as "
        "given", ">= 0", group="qcontrol", common=True)
    min_lambda_kl_q_control: float = opt(1e-6, "lowest lambda_kl the controller may choose", ">= 0", group="qcontrol")
    max_lambda_kl_q_control: float = opt(0.5, "highest lambda_kl the controller may choose", ">= 0", group="qcontrol")
    lambda_kl_band: float = opt(
        4.0, "the controlled lambda_kl stays within [phase value / band, phase value * band]", ">= 1", group="qcontrol")
    # the guide's section 6 ("narrow lr_scale_options" against exploding losses) and 7 ("tune reward_weights")
    lr_scale_options: list[float] = opt(
        [0.8, 0.9, 1.0, 1.1, 1.2], "the scales of the base learning rate a Q-controller chooses among (the guide: "
        "narrow them against exploding losses)", "> 0", group="qcontrol", common=True)
    momentum_scale_options: list[float] = opt(
        [0.95, 0.98, 1.0, 1.01, 1.02], "the scales of the base momentum a Q-controller chooses among (riemannian_sgd)",
        "> 0", group="qcontrol")
    lambda_kl_scale_options: list[float] = opt(
        [0.94, 0.97, 1.0, 1.03, 1.06], "the factors the lambda_kl controller multiplies lambda_kl by, one per decision",
        "> 0", group="qcontrol")
    reward_weights: list[str] = opt(
        [], "NAME=VALUE overrides of the Q-controllers' reward weights (the guide: tune them for specific behaviours), "
        "e.g. g_recon_improvement=3.0 d_balance_target=1.0; in TOML a table or a list of NAME=VALUE; names: "
        "g_recon_improvement, g_adv_improvement, g_kl_control_penalty, g_loss_stability, d_balance_target, "
        "d_real_low_bonus, d_fake_low_meaningful_bonus, d_loss_stability, gan_balance_g_bonus, gan_balance_d_penalty, "
        "oscillation_penalty, extreme_loss_penalty, lambda_kl_recon_focus, lambda_kl_kl_target_range, "
        "lambda_kl_val_metric_improvement, lambda_kl_stability_penalty", group="qcontrol", common=True,
        metavar="NAME=VALUE")
    q_learning_rate: float = opt(0.01, "the Q-learning step size (alpha) of every controller", "(0, 1]",
                                 group="qcontrol")
    q_discount: float = opt(0.9, "the Q-learning discount factor (gamma)", "[0, 1]", group="qcontrol")
    q_epsilon_start: float = opt(0.5, "the controllers' initial exploration rate (epsilon)", "[0, 1]", group="qcontrol")
    q_epsilon_min: float = opt(0.05, "the lowest exploration rate epsilon decays to", "[0, 1]", group="qcontrol")
    q_epsilon_decay: float = opt(
        0.9995, "epsilon's factor per learning-rate/momentum decision", "(0, 1]", group="qcontrol")
    q_lambda_kl_epsilon_decay: float = opt(
        0.955, "epsilon's factor per lambda_kl decision (one per validation: faster than the others)", "(0, 1]",
        group="qcontrol")
    # reliability
    max_consecutive_nonfinite: int = opt(
        20, "non-finite steps in a row after which the run rolls back to its last checkpoint with halved learning "
        "rates (a second time stops it)", "> 0")
    detect_anomaly: bool = opt(
        False, "autograd anomaly detection: names the operation that made a NaN (very slow; for one diagnostic run)",
        common=True)
    # health monitor (train/health.py): rules over the values already read at log intervals and validations
    health_checks: bool = opt(
        True, "watch the logged losses and validation metrics with the guide's troubleshooting rules: each finding is "
        "one console line (symptom, values, diagnosis, action) and a health/... event in every tracker",
        group="health", common=True)
    auto_remedy: bool = opt(
        False, "when a health rule fires, apply the guide's action (lower D's learning rate, lower lambda_gan for a "
        "while, lower lambda_kl, ...) and log what was done", group="health", common=True)
    health_window: int = opt(
        20, "logged values (one per --log_interval steps) a rule looks at, e.g. D's loss near ln 2 over this many "
        "logs", ">= 2", group="health")
    health_phase1_ranges: bool = opt(
        True, "also check the guide's Phase-1 ranges: D_tot in [0.3, 0.65], D_real and D_fake below 0.7 (its later "
        "phases expect D to leave them: the guide's plan turns this off after Phase 1)", group="health")
    health_remedy_steps: int = opt(
        0, "how long a temporary remedy (a lower lambda_gan) lasts, in optimizer steps; 0: --health_window x "
        "--log_interval", ">= 0", group="health")
    # checkpoints
    checkpoint_dir: str = opt(
        "runs/latest", "the run directory: checkpoints, metrics, samples and the summary",
        group="checkpoints", guide="CHECKPOINT_OUTPUT_DIR", common=True, metavar="DIR")
    load_checkpoint: str | None = opt(
        None, "start a new phase from a run directory (its best checkpoint), a checkpoint directory or a pointer file: "
        "the weights load, this run's options win",
        group="checkpoints", guide="LOAD_CHECKPOINT", common=True, metavar="PATH")
    load_strict: bool = opt(
        False, "--load_checkpoint: every tensor must match or nothing loads; false: the matching tensors load and the "
        "rest are listed", group="checkpoints")
    resume: str | None = opt(
        None, "continue an interrupted run exactly (weights, optimizers, controllers, step, data position) from its "
        "run directory", group="checkpoints", common=True, metavar="PATH")
    resume_fallback: bool = opt(
        False, "--resume: a corrupt last checkpoint falls back to the previous good one (with a note)",
        group="checkpoints")
    save_interval: int = opt(
        1000, "> 0: also keep a checkpoint every this many optimizer steps; 0: off",
        ">= 0", group="checkpoints", common=True)
    save_every_minutes: float = opt(
        5.0, "> 0: also save when this many minutes passed since the last save; 0: off", ">= 0", group="checkpoints")
    keep_last_checkpoints: int = opt(
        3, "step checkpoints kept, the oldest removed first (0: all; the best and the newest are never removed)",
        ">= 0", group="checkpoints")
    # validation
    val_interval: int = opt(
        0, "optimizer steps between validations (0: once per epoch)", ">= 0", group="checkpoints", common=True)
    val_max_batches: int = opt(0, "batches per validation (0: the whole validation set)", ">= 0", group="checkpoints")
    val_primary_metric: Literal["avg_val_recon_mse", "avg_val_psnr", "avg_val_ssim", "avg_val_lpips"] = opt(
        "avg_val_psnr", "the validation metric that picks the best checkpoint and rewards the lambda_kl controller "
        "(lower is better for MSE and LPIPS)", group="checkpoints", common=True)
    # the guide's "when to proceed" (train/stopping.py): a phase may end on a plateau or a threshold of the metric
    stop_plateau_patience: int = opt(
        0, "> 0: end the run when the best --val_primary_metric gained less than --stop_plateau_min_delta over this "
        "many validations (the guide's plateau: phase 1 ends when reconstruction stops improving); 0: off", ">= 0",
        group="checkpoints", common=True)
    stop_plateau_min_delta: float = opt(
        0.2, "the gain --stop_plateau_patience counts as progress, in the metric's unit (dB for PSNR)", ">= 0",
        group="checkpoints")
    stop_metric_threshold: float | None = opt(
        None, "end the run once --val_primary_metric reaches this (PSNR, SSIM: at or above; MSE, LPIPS: at or below; "
        "the guide: PSNR > 20-22 dB before Phase 3); none: off", group="checkpoints", common=True)
    use_lpips_for_verification: bool = opt(
        False, "also compute LPIPS (AlexNet) in validation; needs its weights (--lpips_weights or the torch hub cache)",
        group="checkpoints", common=True)
    lpips_weights: str | None = opt(
        None, "AlexNet weights file for LPIPS; none: the torch hub cache", group="checkpoints", metavar="PATH")
    ema_decay: float = opt(
        0.0, "> 0: keep an exponential moving average of the generator's weights for validation and sampling; 0: off",
        "[0, 1)", group="checkpoints")
    ema_warmup: bool = opt(
        True, "the EMA's decay ramps up as (1 + n) / (10 + n) over its first updates", group="checkpoints")


@dataclass
class LogConfig:
    log_interval: int = opt(50, "optimizer steps between logged scalars (console and trackers)", "> 0", common=True)
    wandb: bool = opt(False, "log to Weights & Biases (the [wandb] extra)", guide="WANDB_ENABLED", common=True)
    wandb_project: str = opt("WuBuGAADHybridGenV01", "W&B project", common=True, metavar="NAME")
    wandb_run_name: str | None = opt(None, "W&B run name; none: W&B's own", metavar="NAME")
    wandb_mode: Literal["online", "offline"] = opt("offline", "online, or offline (upload later with `wandb sync`)")
    tensorboard: bool = opt(False, "also write TensorBoard event files into the run directory", common=True)
    wandb_log_train_recon_interval: int = opt(
        0, "> 0: log training reconstructions (samples/train_recon) every this many steps, to every tracker; 0: off",
        ">= 0")
    wandb_log_fixed_noise_samples_interval: int = opt(
        0, "> 0: log fixed-noise samples (samples/fixed_noise_generated) every this many steps, to every tracker; 0: "
        "off", ">= 0")
    num_val_samples_to_log: int = opt(
        2, "clips per logged sample grid (validation reconstructions, fixed-noise samples)", ">= 0")
    demo_num_samples: int = opt(4, "samples written at the end of training", ">= 0")
    # at the guide's low KL weights the posterior stays far from N(0, I), whose draws then decode to texture noise
    # (docs/results.md); the aggregate prior is a Gaussian fitted to latents of training windows (models/prior.py)
    sample_prior: Literal["aggregate", "normal"] = opt(
        "aggregate", "where logged and final prior samples come from: aggregate (a Gaussian fitted to the latents of "
        "--sample_prior_windows training windows, refitted each time) or normal (N(0, I), the original's)")
    sample_prior_windows: int = opt(128, "training windows the aggregate prior is fitted on", ">= 2")
    report_every_minutes: float = opt(
        10.0, "> 0: rewrite the HTML report (`wubugen report`) at a validation once this many minutes passed since the "
        "last (the first after as many minutes of training), and at the end of a run that wrote one: of the run, or of "
        "its plan when it is a phase of `wubugen phases`; 0: only by `wubugen report`", ">= 0", group="log")
    log_grad_norm: bool = opt(
        False, "also log each network's gradient norm (train/grad_norm_gen, train/grad_norm_disc)")
    progress: bool = opt(True, "progress bars (training, decoding, flow)")
    local_rank: int = opt(-1, "accepted from old launchers and ignored: torchrun's environment gives the rank", ">= -1")


@dataclass(frozen=True)
class FrameGeometry:
    """The clip shape a model is built for; models take this and their ModelConfig, never the run's whole Config."""

    height: int
    width: int
    channels: int
    input_frames: int  # context frames of a window
    predict_frames: int  # frames the generator produces (the window's last ones)

    @property
    def window_frames(self) -> int:
        return self.input_frames + self.predict_frames

    def encoder_frames(self, task: str) -> int:
        """Frames the encoder sees: the whole window (reconstruct) or the context only (predict)."""
        return self.window_frames if task == "reconstruct" else self.input_frames


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    # -- derived values ---------------------------------------------------------------------------------------------
    @property
    def window_frames(self) -> int:
        """Frames in one training window: context + predicted."""
        return self.data.num_input_frames + self.data.num_predict_frames

    @property
    def encoder_frames(self) -> int:
        """Frames the encoder sees: the whole window (reconstruct) or the context only (predict)."""
        return self.window_frames if self.model.task == "reconstruct" else self.data.num_input_frames

    @property
    def geometry(self) -> FrameGeometry:
        """What the models need to know of the data: frame size, channels, the window's frame counts."""
        d = self.data
        return FrameGeometry(d.image_h, d.image_w, d.num_channels, d.num_input_frames, d.num_predict_frames)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = ("data", "model", "train", "log")
STACKS = {"wubu_s": "wubu_s_", "wubu_t": "wubu_t_", "wubu_m": "wubu_m_"}


# --------------------------------------------------------------------------------------------------------------------
# Options: the fields as the user sees them (flag, TOML key, documentation)
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    name: str  # the flag without `--`, and the flat TOML key
    path: tuple[str, ...]  # attribute path in Config: ("train", "lambda_kl"), ("model", "wubu_s", "num_levels")
    type: Any  # the annotated type
    default: Any  # a list default as a tuple (shared by every caller)
    help: str
    group: str
    range: Range | None
    guide: str | None  # the training guide's launcher variable
    common: bool  # shown by plain --help
    metavar: str | None

    @property
    def toml_key(self) -> str:
        """The sectioned TOML key: `train.lambda_kl` ([train] lambda_kl = ...), `model.wubu_s.num_levels`."""
        return ".".join(self.path)


@functools.lru_cache(maxsize=None)
def options() -> tuple[Option, ...]:
    """Every option in schema order: the sections, a stack's fields where the stack is."""
    out: list[Option] = []
    defaults = Config()
    for section in SECTIONS:
        sec = getattr(defaults, section)
        hints = get_type_hints(type(sec))
        for f in fields(sec):
            value = getattr(sec, f.name)
            if is_dataclass(value):
                sub_hints = get_type_hints(type(value))
                for sf in fields(value):
                    out.append(_option(STACKS[f.name] + sf.name, (section, f.name, sf.name), sub_hints[sf.name],
                                       getattr(value, sf.name), sf.metadata, "wubu", STACK_NAMES[f.name]))
            else:
                out.append(_option(f.name, (section, f.name), hints[f.name], value, f.metadata, section))
    names = [o.name for o in out]
    assert len(set(names)) == len(names), "two options share a flag name"
    return tuple(out)


def _option(name: str, path: tuple[str, ...], tp: Any, default: Any, meta: Any, group: str,
            stack: str | None = None) -> Option:
    if "help" not in meta:
        raise TypeError(f"config field {'.'.join(path)} has no description: declare it with opt(default, help, ...)")
    help_text = meta["help"].format(stack=stack) if stack else meta["help"]
    return Option(name, path, tp, tuple(default) if isinstance(default, list) else default, help_text,
                  meta["group"] or group, parse_range(meta["range"]) if meta["range"] else None, meta["guide"],
                  meta["common"], meta["metavar"])


# --------------------------------------------------------------------------------------------------------------------
# Validation: every check is a one-line message naming the option
# --------------------------------------------------------------------------------------------------------------------
def _stack_fixup(name: str, st: WuBuStackConfig) -> None:
    n = st.num_levels
    if n < 0:
        raise ConfigError(f"--{name}_num_levels must be >= 0")
    for attr in ("hyperbolic_dims", "initial_curvatures"):
        lst = getattr(st, attr)
        if n == 0:
            continue
        if len(lst) == 1 and n > 1:
            setattr(st, attr, lst * n)  # a single value is broadcast, as in the original
        elif len(lst) != n:
            raise ConfigError(f"--{name}_{attr} has {len(lst)} values but --{name}_num_levels is {n}")
    if any(c <= 0 for c in st.initial_curvatures[:n]):
        raise ConfigError(f"--{name}_initial_curvatures must be positive (use --wubu_euclidean for the flat ablation)")


def _number(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def check_ranges(cfg: Config) -> None:
    """Every number finite and in its option's range (each element of a list), from the schema's metadata."""
    for o in options():
        obj: Any = cfg
        for p in o.path:
            obj = getattr(obj, p)
        is_list = isinstance(obj, list)
        for v in obj if is_list else [obj]:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            what = f"--{o.name} values" if is_list else f"--{o.name}"
            if not math.isfinite(v):
                raise ConfigError(f"{what} must be finite numbers, not {v}" if is_list else
                                  f"{what} must be a finite number, not {v}")
            if o.range is not None and v not in o.range:
                raise ConfigError(f"{what} must be {o.range.phrase}, not {_number(v)}")


def validate(cfg: Config) -> None:
    """The stacks' list lengths (broadcasting single values), then every option's range, then the combinations."""
    m, t = cfg.model, cfg.train
    for name in STACKS:
        _stack_fixup(name, getattr(m, name))
    check_ranges(cfg)
    ds = m.latent_downsample
    if ds & (ds - 1):
        raise ConfigError(f"--latent_downsample must be a power of two, not {ds}")
    bad = [c for c in m.flow_stats_components if c not in FLOW_STATS]
    if bad or not m.flow_stats_components:
        raise ConfigError(f"--flow_stats_components must be among {', '.join(FLOW_STATS)}")
    if m.use_wubu_motion_branch and m.wubu_m.num_levels < 1:
        raise ConfigError("--use_wubu_motion_branch needs --wubu_m_num_levels >= 1")
    if m.use_wubu_motion_branch and cfg.encoder_frames < 2:
        raise ConfigError("the motion branch needs at least 2 encoder frames")
    if m.use_wubu_motion_branch and m.optical_flow_net_type == "dis" and not m.freeze_flow_net:
        raise ConfigError("--optical_flow_net_type dis is not differentiable: use --freeze_flow_net (the default) "
                          "or a RAFT net to train the flow")
    if m.predict_warp and not m.predict_residual:
        raise ConfigError("--predict_warp changes the warped last context frame: it needs --predict_residual")
    if m.backbone == "plain" and (m.task != "reconstruct" or m.latent_type != "spatial" or not m.encoder_targets_only):
        raise ConfigError("--backbone plain encodes the frames a spatial latent stands for: it needs --task "
                          "reconstruct, --latent_type spatial and --encoder_targets_only (for the predict task or a "
                          "global latent: --backbone wubu_gaad)")
    if m.backbone == "plain" and m.latent_downsample < 2:
        raise ConfigError("--backbone plain downsamples to its latent: it needs --latent_downsample of at least 2")
    if m.encoder_temporal_kernel_size > 1 and m.encoder_use_roi_align and m.region_codes != "none":
        # the stem is shared with RoIAlign and then runs over the whole clip: context frames would leak into the
        # features of the frames the latent stands for, and GroupNorm would take its statistics over all frames
        raise ConfigError("--encoder_temporal_kernel_size > 1 needs pixel-patch regions (--no-encoder_use_roi_align): "
                          "RoIAlign's shared stem would mix the context frames into the targets' features")
    kernels = (m.gen_temporal_kernel_size, m.disc_temporal_kernel_size, m.encoder_temporal_kernel_size)
    if any(k % 2 == 0 for k in kernels):
        raise ConfigError("temporal kernel sizes must be odd so the time axis keeps its length")
    if len(t.adam_betas) != 2:
        raise ConfigError("--adam_betas takes two values in [0, 1)")
    for name in ("lr_scale_options", "momentum_scale_options", "lambda_kl_scale_options"):
        if not getattr(t, name):
            raise ConfigError(f"--{name} needs at least one value")
    for pair in t.reward_weights:
        name, sep, value = pair.partition("=")
        try:
            ok = bool(sep) and bool(name.strip()) and math.isfinite(float(value))
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(f"--reward_weights takes NAME=VALUE pairs with finite values, not {pair!r}")
    if t.q_epsilon_min > t.q_epsilon_start:
        raise ConfigError("--q_epsilon_min must not exceed --q_epsilon_start")
    if t.min_lambda_kl_q_control > t.max_lambda_kl_q_control:
        raise ConfigError("--min_lambda_kl_q_control must not exceed --max_lambda_kl_q_control")
    if t.resume and t.load_checkpoint:
        raise ConfigError("--resume continues a run; --load_checkpoint starts a new phase: give one of them")
