"""The single source of truth for every option of wubugen.

Every option is a field of a dataclass below; its flag is the field's name (`--image_h`), or, for the three WuBu stacks,
the stack's prefix plus the field's name (`--wubu_s_hyperbolic_dims`). The original script's flag names are kept where they
still mean something (SPEC §10). Values are resolved in this order, later winning:
field defaults < `--preset NAME` (a TOML file in wubugen/presets) < `--config FILE.toml` < flags.

TOML files may use sections (`[data]`, `[model]`, `[model.wubu_s]`, `[train]`, `[log]`) or flat flag names at the top level.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from wubugen.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

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


@dataclass
class TrainConfig:
    epochs: int = 100
    max_steps: int = 0  # > 0: train this many optimizer steps (overrides --epochs)
    batch_size: int = 4
    seed: int = 42
    device: str = "auto"  # auto: cuda if available, else cpu
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    use_amp: bool = False  # the original's flag: fp16 autocast with a GradScaler (same as --precision fp16)
    compile: bool = False
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
    save_interval: int = 1000
    keep_last_checkpoints: int = 3
    # validation
    val_interval: int = 0  # optimizer steps between validations (0: once per epoch)
    val_max_batches: int = 0  # 0: the whole validation set
    val_primary_metric: Literal["avg_val_recon_mse", "avg_val_psnr", "avg_val_ssim", "avg_val_lpips"] = "avg_val_psnr"
    use_lpips_for_verification: bool = False
    lpips_weights: str | None = None
    ema_decay: float = 0.0  # > 0: keep an EMA of the generator's weights for validation and sampling


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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return dump_toml(self.to_dict())


SECTIONS = ("data", "model", "train", "log")
STACKS = {"wubu_s": "wubu_s_", "wubu_t": "wubu_t_", "wubu_m": "wubu_m_"}


# --------------------------------------------------------------------------------------------------------------------
# Flag table: flag name -> (path of attribute names, annotated type, default)
# --------------------------------------------------------------------------------------------------------------------
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def flag_table() -> dict[str, tuple[tuple[str, ...], Any, Any]]:
    table: dict[str, tuple[tuple[str, ...], Any, Any]] = {}
    cfg = Config()
    for section in SECTIONS:
        sec_obj = getattr(cfg, section)
        hints = _hints(type(sec_obj))
        for f in fields(sec_obj):
            value = getattr(sec_obj, f.name)
            if is_dataclass(value):
                prefix = STACKS[f.name]
                sub_hints = _hints(type(value))
                for sf in fields(value):
                    name = prefix + sf.name
                    assert name not in table, name
                    table[name] = ((section, f.name, sf.name), sub_hints[sf.name], getattr(value, sf.name))
            else:
                assert f.name not in table, f.name
                table[f.name] = ((section, f.name), hints[f.name], value)
    return table


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) for `X | None`."""
    if get_origin(tp) in (Union, getattr(__import__("types"), "UnionType", Union)):
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Turn a TOML or string value into the field's type, or raise ConfigError naming the option."""
    inner, optional = _base_type(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "")):
        if optional:
            return None
        raise ConfigError(f"--{name} needs a value")
    origin = get_origin(inner)
    try:
        if origin is list:
            (elem,) = get_args(inner)
            items = value if isinstance(value, (list, tuple)) else str(value).replace(",", " ").split()
            return [_coerce(name, elem, v) for v in items]
        if origin is Literal:
            choices = get_args(inner)
            if value not in choices:
                raise ConfigError(f"--{name} must be one of {', '.join(map(str, choices))}, not {value!r}")
            return value
        if inner is bool:
            if isinstance(value, bool):
                return value
            s = str(value).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"--{name} takes true or false, not {value!r}")
        if inner is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if inner is float:
            return float(value)
        if inner is str:
            return str(value)
    except ConfigError:
        raise
    except (TypeError, ValueError):
        raise ConfigError(f"--{name}: {value!r} is not a valid {getattr(inner, '__name__', inner)}") from None
    raise TypeError(f"unsupported option type for {name}: {tp}")


def _set(cfg: Config, path: tuple[str, ...], value: Any) -> None:
    obj: Any = cfg
    for p in path[:-1]:
        obj = getattr(obj, p)
    setattr(obj, path[-1], value)


def _get(cfg: Config, path: tuple[str, ...]) -> Any:
    obj: Any = cfg
    for p in path:
        obj = getattr(obj, p)
    return obj


# --------------------------------------------------------------------------------------------------------------------
# TOML
# --------------------------------------------------------------------------------------------------------------------
def _flatten_toml(doc: dict[str, Any], source: str) -> dict[str, Any]:
    """Sectioned or flat TOML -> {flag name: value}."""
    table = flag_table()
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        if key in SECTIONS and isinstance(value, dict):
            for k, v in value.items():
                if k in STACKS and isinstance(v, dict):
                    for sk, sv in v.items():
                        flat[STACKS[k] + sk] = sv
                else:
                    flat[k] = v
        else:
            flat[key] = value
    unknown = sorted(k for k in flat if k not in table)
    if unknown:
        raise ConfigError(f"{source}: unknown option(s) {', '.join(unknown)}")
    return flat


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        doc = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
    return _flatten_toml(doc, str(p))


def preset_values(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    text = resources.files("wubugen.presets").joinpath(f"{name}.toml").read_text()
    return _flatten_toml(tomllib.loads(text), f"preset {name}")


def dump_toml(d: dict[str, Any]) -> str:
    """A small TOML writer for our own config dicts (sections, scalars, lists of scalars)."""

    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return repr(v)

    lines: list[str] = []

    def section(name: str, body: dict[str, Any]) -> None:
        scalars = {k: v for k, v in body.items() if not isinstance(v, dict)}
        lines.append(f"[{name}]")
        for k, v in scalars.items():
            if v is None:
                continue  # TOML has no null: absent means the default (None)
            lines.append(f"{k} = {val(v)}")
        lines.append("")
        for k, v in body.items():
            if isinstance(v, dict):
                section(f"{name}.{k}", v)

    for name, body in d.items():
        section(name, body)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# Argument parsing
# --------------------------------------------------------------------------------------------------------------------
class _BoolAction(argparse.Action):
    """`--flag`, `--flag true|false` and `--no-flag` all work, as old launchers pass store_true flags."""

    def __init__(self, option_strings, dest, **kw):
        opts = list(option_strings) + [s.replace("--", "--no-", 1) for s in option_strings if s.startswith("--")]
        super().__init__(opts, dest, nargs="?", **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string and option_string.startswith("--no-"):
            setattr(namespace, self.dest, "false")
        else:
            setattr(namespace, self.dest, "true" if values is None else values)


def add_config_arguments(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """Add `--preset`, `--config` and one flag per option (all as strings; coerced in `config_from_args`)."""
    parser.add_argument("--preset", default=None, help=f"start from a preset: {', '.join(PRESETS)}")
    parser.add_argument("--config", default=None, metavar="FILE.toml", help="TOML file of options (after the preset)")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, (path, tp, default) in flag_table().items():
        section = path[0]
        if only is not None and section not in only:
            continue
        grp = groups.setdefault(section, parser.add_argument_group(f"{section} options"))
        inner, _ = _base_type(tp)
        help_default = f"default: {default}"
        if inner is bool:
            grp.add_argument(f"--{name}", dest=f"opt__{name}", action=_BoolAction, default=None, help=help_default)
        elif get_origin(inner) is list:
            grp.add_argument(f"--{name}", dest=f"opt__{name}", nargs="+", default=None, help=help_default)
        else:
            choices = get_args(inner) if get_origin(inner) is Literal else None
            grp.add_argument(f"--{name}", dest=f"opt__{name}", default=None, choices=choices, help=help_default)


def build_config(preset: str | None = None, config_file: str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults < preset < config file < overrides (flag name -> value, strings allowed)."""
    table = flag_table()
    cfg = Config()
    layers: list[dict[str, Any]] = []
    if preset:
        layers.append(preset_values(preset))
    if config_file:
        layers.append(load_toml(config_file))
    if overrides:
        unknown = sorted(k for k in overrides if k not in table)
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(unknown)}")
        layers.append(overrides)
    for layer in layers:
        for name, value in layer.items():
            path, tp, _ = table[name]
            _set(cfg, path, _coerce(name, tp, value))
    if cfg.train.use_amp:
        cfg.train.precision = "fp16"
    validate(cfg)
    return cfg


def config_from_args(ns: argparse.Namespace) -> Config:
    overrides = {k[len("opt__"):]: v for k, v in vars(ns).items() if k.startswith("opt__") and v is not None}
    return build_config(getattr(ns, "preset", None), getattr(ns, "config", None), overrides)


def config_from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a Config from `Config.to_dict()` output (e.g. stored in a checkpoint)."""
    return build_config(overrides=_flatten_toml(d, "stored config"))


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
