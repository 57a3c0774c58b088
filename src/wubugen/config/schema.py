"""The schema: every option of wubugen as a typed dataclass field with its default, and the checks on their values.

This is the single source of truth for options: flags, TOML keys and `--help` are generated from it (config/loading.py).
A field's flag is its name (`--image_h`), or, for the three WuBu stacks, the stack's prefix plus the field's name
(`--wubu_s_hyperbolic_dims`). The original script's flag names are kept where they still mean something.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from wubugen.errors import UserError

PRESETS = ("launcher", "tiny", "quickstart")
FLOW_STATS = ("mag_mean", "angle_mean", "mag_std", "angle_std")
VAL_METRICS = ("avg_val_recon_mse", "avg_val_psnr", "avg_val_ssim", "avg_val_lpips")


class ConfigError(UserError, ValueError):
    """A bad option value: reported to the user as one line, exit code 2."""


# --------------------------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class WuBuStackConfig:
    """One WuBu nesting stack (S: per region, T: over time, M: motion). Flags: --wubu_{s,t,m}_<field>."""

    num_levels: int = 2
    hyperbolic_dims: list[int] = field(default_factory=lambda: [64, 32])
    initial_curvatures: list[float] = field(default_factory=lambda: [1.0, 0.8])
    use_rotation: bool = False
    phi_influence_curvature: bool = False
    phi_influence_rotation_init: bool = False
    output_dim: int | None = None  # None: the last level's dim


@dataclass
class DataConfig:
    video_data_path: str | None = None  # None: the synthetic demo footage (`wubugen data demo`)
    validation_video_path: str | None = None
    validation_split_fraction: float = 0.1
    val_split_mode: Literal["auto", "files", "time"] = "auto"  # auto: by files when there are several, else time blocks
    val_block_size: int = 20  # windows per validation time block
    image_h: int = 64
    image_w: int = 64
    num_channels: int = 3
    num_input_frames: int = 3
    num_predict_frames: int = 1
    frame_skip: int = 1
    window_stride: int = 1
    resize: Literal["center_crop", "stretch", "pad"] = "center_crop"
    scene_cut_threshold: float = 0.0  # > 0: windows never straddle a frame difference above this (mean abs, 0-255)
    cache_dir: str = ".wubugen_cache"
    num_workers: int = 2
    strict_data: bool = False
    augment_flip: bool = False
    augment_random_crop: bool = False
    demo_num_clips: int = 8  # synthetic footage size when no data path is given
    demo_clip_frames: int = 60


@dataclass
class ModelConfig:
    task: Literal["reconstruct", "predict"] = "reconstruct"
    # latent
    latent_type: Literal["spatial", "global"] = "spatial"
    latent_dim: int = 256  # global latent size; also the width of the WuBu-T region codes fused into a spatial latent
    latent_channels: int = 8  # spatial latent channels
    latent_downsample: int = 4  # spatial latent at 1/latent_downsample of the frame size
    kl_reduction: Literal["mean", "sum"] = "mean"  # mean over latent elements (any latent shape) or the guide's sum
    # GAAD
    gaad_num_regions: int = 12
    gaad_decomposition_type: Literal["spiral", "subdivide", "hybrid"] = "hybrid"
    gaad_min_size_px: int = 4
    # encoder
    encoder_use_roi_align: bool = True
    encoder_shallow_cnn_channels: int = 32
    encoder_roi_align_output_h: int = 4
    encoder_roi_align_output_w: int = 4
    encoder_pixel_patch_size: int = 8
    encoder_initial_tangent_dim: int = 128
    encoder_channels: int = 64  # width of the spatial feature path
    # reconstruct task: the spatial CNN sees only the frames the latent stands for (the context frames still reach the
    # latent through the GAAD/WuBu-T path); False runs it on every encoder frame
    encoder_targets_only: bool = False
    encoder_res_blocks: int = 0  # residual 3-D conv blocks at the latent resolution, encoder side
    # how the WuBu-T region codes join the spatial latent: painted and added, painted through a learned per-channel
    # gate that starts small (the codes then help where they help), or not at all (no WuBu-S/T in the encoder)
    region_codes: Literal["add", "gated", "none"] = "add"
    # WuBu
    wubu_s: WuBuStackConfig = field(default_factory=lambda: WuBuStackConfig(2, [64, 32], [1.0, 0.8]))
    wubu_t: WuBuStackConfig = field(default_factory=lambda: WuBuStackConfig(1, [128], [0.5]))
    wubu_m: WuBuStackConfig = field(default_factory=lambda: WuBuStackConfig(1, [32], [0.7]))
    wubu_dropout: float = 0.1
    wubu_boundary_points: int = 4
    wubu_combiner_hidden_ratio: float = 1.0  # combiner hidden width = ratio * level dim (no fixed 32-wide bottleneck)
    wubu_euclidean: bool = False  # ablation: every hyperbolic map becomes the identity (same sizes)
    # motion branch
    use_wubu_motion_branch: bool = False
    gaad_motion_num_regions: int = 8
    gaad_motion_decomposition_type: Literal["spiral", "subdivide", "hybrid"] = "hybrid"
    optical_flow_net_type: Literal["raft_small", "raft_large", "dis"] = "raft_small"
    flow_weights: str | None = None
    freeze_flow_net: bool = True
    flow_stats_components: list[str] = field(default_factory=lambda: ["mag_mean", "angle_mean"])
    # generator
    gen_base_channels: int = 64
    gen_temporal_kernel_size: int = 3
    gen_final_conv_kernel_spatial: int = 3
    gen_res_blocks: int = 0  # residual 3-D conv blocks at the latent resolution, generator side
    gen_region_film: bool = True  # GAAD-region FiLM on every generator stage
    # discriminator
    discriminator_type: Literal["spatio_temporal_cnn", "regional_cnn"] = "spatio_temporal_cnn"
    disc_apply_spectral_norm: bool = True
    disc_base_disc_channels: int = 64
    disc_max_disc_channels: int = 512
    disc_temporal_kernel_size: int = 3
    disc_min_hidden_fc_dim: int = 128
    disc_max_hidden_fc_dim: int = 512
    disc_use_gaad_film_condition: bool = False
    disc_gaad_condition_dim_disc: int = 64
    disc_patch_size: int = 16
    disc_cnn_channels_2d: list[int] = field(default_factory=lambda: [64, 128, 256])
    # spatio-temporal D: a map of patch logits (PatchGAN: every patch judged, as taming's) instead of one per clip
    disc_patch_logits: bool = False


@dataclass
class TrainConfig:
    epochs: int = 100
    max_steps: int = 0  # > 0: train this many optimizer steps (overrides --epochs)
    # > 0: stop after this many seconds since the run started (set-up included), then validate, sample and report as
    # at the last step
    max_seconds: float = 0.0
    batch_size: int = 4
    seed: int = 42
    device: str = "auto"  # auto: cuda if available, else cpu
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    use_amp: bool = False  # the original's flag: fp16 autocast with a GradScaler (same as --precision fp16)
    compile: bool = False
    # torch.compile of the WuBu stacks alone (the many small hyperbolic ops fused into few kernels; compiles in
    # seconds, where the whole players take minutes); inductor's caches live under --cache_dir, so a repeat run starts
    # without recompiling
    compile_wubu: bool = False
    # torch.compile mode: max-autotune-no-cudagraphs lets inductor time its own Triton convolution/matmul kernels against
    # cuDNN/cuBLAS per shape (much longer compilation); our CUDA graphs replace torch's, hence no reduce-overhead
    compile_mode: Literal["default", "max-autotune-no-cudagraphs"] = "default"
    # capture the step's forward+backward in a CUDA graph after 3 eager steps (one CUDA process, no accumulation;
    # elsewhere the step runs eagerly): the host then launches one graph instead of thousands of small kernels
    cuda_graphs: bool = True
    # recompute the full-resolution activations in the backward pass instead of keeping them (the encoder's per-frame
    # CNN, the generator's last stage): about 7% more FLOPs, half the activation memory; the math is unchanged
    activation_checkpointing: bool = False
    # frames channels-last on CUDA (and, when compiled, the conv weights too: no cuDNN layout conversions)
    channels_last: bool = True
    # in fp32 on CUDA, the generator's output conv (3 output channels, where cuDNN is slow) runs as a 1x1 conv and a
    # shifted sum over its kernel taps: the same function, 4.1 -> 2.3 ms forward + backward on an H100 (models/tapconv.py);
    # bf16 keeps cuDNN's kernel, faster there
    tap_convs: bool = True
    grad_accum_steps: int = 1
    # losses
    lambda_recon: float = 10.0
    lambda_kl: float = 1e-4
    lambda_gan: float = 1.0
    gan_loss: Literal["bce", "hinge", "lsgan"] = "bce"
    gan_start_step: int = 0  # adversarial term for G from this step on (D trains from the start)
    # fixed: G's adversarial term weighs lambda_gan (the guide's); adaptive: lambda_gan times the ratio of the
    # reconstruction and adversarial gradient norms at the generator's output (taming's adaptive weight), clamped
    gan_weighting: Literal["fixed", "adaptive"] = "fixed"
    adaptive_weight_max: float = 1e4
    # optimizers
    optimizer: Literal["riemannian_adam", "riemannian_sgd"] = "riemannian_adam"
    learning_rate_gen: float = 3e-4
    learning_rate_disc: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    risgd_max_grad_norm: float = 1.0
    global_max_grad_norm: float = 5.0
    # Q-control
    q_controller_enabled: bool = False
    q_control_interval: int = 10  # optimizer steps between LR/momentum decisions (losses are read from the device then)
    lambda_kl_update_interval: int = 0  # optimizer steps between lambda_kl decisions (0: off)
    min_lambda_kl_q_control: float = 1e-6
    max_lambda_kl_q_control: float = 0.5
    lambda_kl_band: float = 4.0  # lambda_kl stays within [phase value / band, phase value * band]
    # reliability
    max_consecutive_nonfinite: int = 20
    detect_anomaly: bool = False
    # checkpoints
    checkpoint_dir: str = "runs/latest"
    load_checkpoint: str | None = None
    load_strict: bool = False
    resume: str | None = None
    resume_fallback: bool = False  # --resume: a corrupt last checkpoint falls back to the previous good one (with a note)
    save_interval: int = 1000
    save_every_minutes: float = 5.0  # > 0: also save when this many minutes passed since the last save (0: off)
    keep_last_checkpoints: int = 3
    # validation
    val_interval: int = 0  # optimizer steps between validations (0: once per epoch)
    val_max_batches: int = 0  # 0: the whole validation set
    val_primary_metric: Literal["avg_val_recon_mse", "avg_val_psnr", "avg_val_ssim", "avg_val_lpips"] = "avg_val_psnr"
    use_lpips_for_verification: bool = False
    lpips_weights: str | None = None
    ema_decay: float = 0.0  # > 0: keep an EMA of the generator's weights for validation and sampling
    ema_warmup: bool = True  # the EMA's decay ramps up as (1 + n) / (10 + n) over its first updates


@dataclass
class LogConfig:
    log_interval: int = 50
    wandb: bool = False
    wandb_project: str = "WuBuGAADHybridGenV01"
    wandb_run_name: str | None = None
    wandb_mode: Literal["online", "offline"] = "offline"
    tensorboard: bool = False
    wandb_log_train_recon_interval: int = 0
    wandb_log_fixed_noise_samples_interval: int = 0
    num_val_samples_to_log: int = 2
    demo_num_samples: int = 4
    log_grad_norm: bool = False
    progress: bool = True
    local_rank: int = -1  # accepted for old launchers; torchrun's environment is what counts


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
    if any(d <= 0 for d in st.hyperbolic_dims[:n]):
        raise ConfigError(f"--{name}_hyperbolic_dims must be positive")
    if any(c <= 0 for c in st.initial_curvatures[:n]):
        raise ConfigError(f"--{name}_initial_curvatures must be positive (use --wubu_euclidean for the flat ablation)")
    if st.output_dim is not None and st.output_dim <= 0:
        raise ConfigError(f"--{name}_output_dim must be positive")


def validate(cfg: Config) -> None:
    d, m, t, lg = cfg.data, cfg.model, cfg.train, cfg.log
    positive = {
        "image_h": d.image_h, "image_w": d.image_w, "num_channels": d.num_channels, "num_input_frames": d.num_input_frames,
        "num_predict_frames": d.num_predict_frames, "frame_skip": d.frame_skip, "window_stride": d.window_stride,
        "batch_size": t.batch_size, "grad_accum_steps": t.grad_accum_steps, "latent_dim": m.latent_dim,
        "latent_channels": m.latent_channels, "latent_downsample": m.latent_downsample, "gaad_num_regions": m.gaad_num_regions,
        "encoder_initial_tangent_dim": m.encoder_initial_tangent_dim, "encoder_channels": m.encoder_channels,
        "gen_base_channels": m.gen_base_channels, "disc_base_disc_channels": m.disc_base_disc_channels,
        "log_interval": lg.log_interval, "wubu_boundary_points": m.wubu_boundary_points,
    }
    for k, v in positive.items():
        if v <= 0:
            raise ConfigError(f"--{k} must be positive, not {v}")
    if d.num_channels not in (1, 3):
        raise ConfigError(f"--num_channels must be 1 or 3, not {d.num_channels}")
    ds = m.latent_downsample
    if ds & (ds - 1):
        raise ConfigError(f"--latent_downsample must be a power of two, not {ds}")
    if min(d.image_h, d.image_w) < 8:
        raise ConfigError(f"--image_h and --image_w must be at least 8, not {d.image_h}x{d.image_w}")
    if not 0.0 <= d.validation_split_fraction < 1.0:
        raise ConfigError("--validation_split_fraction must be in [0, 1)")
    for name in STACKS:
        _stack_fixup(name, getattr(m, name))
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
    if m.gaad_min_size_px < 1:
        raise ConfigError("--gaad_min_size_px must be >= 1")
    if not 0.0 <= m.wubu_dropout < 1.0:
        raise ConfigError("--wubu_dropout must be in [0, 1)")
    if m.gen_temporal_kernel_size % 2 == 0 or m.disc_temporal_kernel_size % 2 == 0:
        raise ConfigError("temporal kernel sizes must be odd so the time axis keeps its length")
    if len(t.adam_betas) != 2 or not all(0 <= b < 1 for b in t.adam_betas):
        raise ConfigError("--adam_betas takes two values in [0, 1)")
    if t.lambda_kl < 0 or t.lambda_recon < 0 or t.lambda_gan < 0:
        raise ConfigError("loss weights must be >= 0")
    if t.learning_rate_gen <= 0 or t.learning_rate_disc <= 0:
        raise ConfigError("learning rates must be positive")
    if t.min_lambda_kl_q_control > t.max_lambda_kl_q_control:
        raise ConfigError("--min_lambda_kl_q_control must not exceed --max_lambda_kl_q_control")
    if t.lambda_kl_band < 1.0:
        raise ConfigError("--lambda_kl_band must be >= 1")
    if t.resume and t.load_checkpoint:
        raise ConfigError("--resume continues a run; --load_checkpoint starts a new phase: give one of them")
