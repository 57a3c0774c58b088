"""The players of a run, built in one place: the VAE (model) and the discriminator, the modules the step calls (DDP and
torch.compile wrappers), the frozen D of the generator's adversarial term, both optimizers, the EMA, the objective and
the Q-controllers. The trainer, `wubugen inspect` and `benchmarks/bench_step.py` all build through `build_players`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from wubugen.config import Config, ConfigError
from wubugen.eval.metrics import HIGHER_IS_BETTER
from wubugen.models.discriminator import build_discriminator
from wubugen.models.layers import set_activation_checkpointing, set_codes_outside_compile, set_codes_stream
from wubugen.models.normact import set_fused_norms
from wubugen.models.vaegan import WuBuGAADHybridGen, build_model
from wubugen.models.wubu import set_fused_maps
from wubugen.train.distributed import DistInfo
from wubugen.train.ema import EMA
from wubugen.train.grad_sync import FlatGradReducer, broadcast_state
from wubugen.train.losses import VAEGANLoss
from wubugen.train.optim import build_optimizer
from wubugen.train.qcontrol import LambdaKLController, LRMomentumController, QSettings, RewardWeights
from wubugen.train.speed import (Precision, compile_player, compile_wubu_stacks, resolve_precision, speed_layout,
                                 use_compile_cache)


@dataclass
class Players:
    cfg: Config
    device: torch.device
    precision: Precision
    model: WuBuGAADHybridGen  # the plain modules: checkpoints, validation and sampling use these
    disc: nn.Module
    model_step: nn.Module  # what the training step calls: the model under DDP and/or torch.compile
    disc_step: nn.Module
    frozen_disc: nn.Module  # D for the generator's adversarial term: never DDP-wrapped (its reducer expects no grads)
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    loss: VAEGANLoss
    ema: EMA | None = None
    q_gen: LRMomentumController | None = None
    q_disc: LRMomentumController | None = None
    q_lkl: LambdaKLController | None = None
    # --ddp_comm flat under torchrun: the players are plain modules and this averages their gradients after the
    # backward (train/grad_sync.py); None with DDP or one process
    grad_sync: FlatGradReducer | None = None

    def __post_init__(self) -> None:
        self.g_params = [p for p in self.model.parameters() if p.requires_grad]
        self.d_params = [p for p in self.disc.parameters() if p.requires_grad]

    def modules_to_save(self) -> dict[str, Any]:
        """What a checkpoint's weights file holds: both players and, when on, the EMA."""
        mods: dict[str, Any] = {"model": self.model, "disc": self.disc}
        if self.ema is not None:
            mods["ema"] = self.ema.state_dict()
        return mods


def set_seed(seed: int) -> None:
    """Python's, NumPy's and torch's global generators (torch's also draws the initial weights)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def build_players(cfg: Config, device: torch.device, dist: DistInfo | None = None, *,
                  ddp_kwargs: dict[str, Any] | None = None, log: Callable[[str], Any] = print) -> Players:
    """Everything a training step needs, on `device`. The caller seeds torch first (identical initial weights on every
    rank). Kernel layout choices are made before DDP, the EMA and the optimizers see the parameters."""
    t = cfg.train
    precision = resolve_precision(cfg, device)
    model = build_model(cfg.model, cfg.geometry).to(device)
    disc = build_discriminator(cfg.model, cfg.geometry).to(device)
    set_activation_checkpointing(model, t.activation_checkpointing)
    # not under DDP's hooks, which would fire on the second stream's gradients (flat sync reads them after the
    # backward), nor inside --compile's graphs, which would have to trace the stream switches
    # --no-compile_region_codes: the codes stay out of the compiled graphs, eager code that may switch streams
    codes_outside = t.compile and not t.compile_region_codes
    set_codes_outside_compile(model, codes_outside)
    set_codes_stream(model, t.wubu_side_stream and device.type == "cuda" and (not t.compile or codes_outside)
                     and not (dist is not None and dist.enabled and t.ddp_comm == "ddp"))
    speed_layout(cfg, model, disc, device, precision)
    model_step: nn.Module = model
    disc_step: nn.Module = disc
    flat_sync = dist is not None and dist.enabled and t.ddp_comm == "flat"
    if flat_sync:
        broadcast_state([model, disc])  # plain modules: the step's gradients are averaged by grad_sync below
    elif dist is not None and dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        model_step = DDP(model, device_ids=ids, **(ddp_kwargs or {}))
        disc_step = DDP(disc, device_ids=ids, **(ddp_kwargs or {}))
    frozen_disc: nn.Module = disc
    # the WuBu stacks are compiled on CUDA only: on the CPU inductor's C++ build takes minutes, more than it saves
    wubu_compiled = t.compile_wubu and not t.compile and device.type == "cuda"
    maps_fused = t.compile_wubu_maps and not (t.compile or wubu_compiled) and device.type == "cuda"
    norms_fused = t.compile_norms and not t.compile and device.type == "cuda"
    if t.compile or wubu_compiled or maps_fused or norms_fused:
        use_compile_cache(cfg.data.cache_dir)
    if norms_fused:
        set_fused_norms(model, True)
        set_fused_norms(disc, True)
    if wubu_compiled:
        compile_wubu_stacks(model, t.compile_mode)
    if maps_fused:
        set_fused_maps(model, True)
    if t.compile:
        # A run compiles from a clean slate (inductor's cache on disk still serves it): dynamo's compiled code is kept
        # per code object, guarded on the module instances, and each earlier run in this process (a plan's phases)
        # had added its own entries to D's forward; past torch's recompile limit (8) the players ran uncompiled
        torch.compiler.reset()
        # the step's players go through torch.compile; checkpoints, validation and sampling use the plain modules
        # (same parameters), so saved weights keep their names
        model_step = compile_player(model_step, t.compile_mode)
        disc_step = compile_player(disc_step, t.compile_mode)
        frozen_disc = compile_player(disc, t.compile_mode)
    players = players_from_modules(cfg, device, model, disc, model_step, disc_step, frozen_disc, precision)
    if flat_sync:
        players.grad_sync = FlatGradReducer(players.g_params + players.d_params, dist.world_size)
    if t.q_controller_enabled:
        settings = q_settings(cfg)
        players.q_gen = LRMomentumController("gen", seed=t.seed + 1, settings=settings)
        players.q_disc = LRMomentumController("disc", seed=t.seed + 2, settings=settings)
        if t.lambda_kl_update_interval > 0 and not t.min_lambda_kl_q_control <= t.lambda_kl <= t.max_lambda_kl_q_control:
            log(f"note: lambda_kl {t.lambda_kl:g} is outside [--min_lambda_kl_q_control, --max_lambda_kl_q_control]: "
                "its Q-controller stays off")
        elif t.lambda_kl_update_interval > 0:
            players.q_lkl = LambdaKLController(t.lambda_kl, t.lambda_kl_band, t.min_lambda_kl_q_control,
                                               t.max_lambda_kl_q_control, seed=t.seed + 3,
                                               higher_is_better=HIGHER_IS_BETTER[t.val_primary_metric],
                                               settings=settings)
    return players


def q_settings(cfg: Config) -> QSettings:
    """The Q-controllers' settings from the options (--lr_scale_options, --reward_weights, --q_epsilon_*, ...)."""
    t = cfg.train
    try:
        weights = RewardWeights.with_overrides(t.reward_weights)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return QSettings(tuple(t.lr_scale_options), tuple(t.momentum_scale_options), tuple(t.lambda_kl_scale_options),
                     t.q_learning_rate, t.q_discount, t.q_epsilon_start, t.q_epsilon_min, t.q_epsilon_decay,
                     t.q_lambda_kl_epsilon_decay, weights)


def players_from_modules(cfg: Config, device: torch.device, model: WuBuGAADHybridGen, disc: nn.Module,
                         model_step: nn.Module | None = None, disc_step: nn.Module | None = None,
                         frozen_disc: nn.Module | None = None, precision: Precision | None = None) -> Players:
    """Players around modules already built (tests, and build_players): optimizers, objective and EMA from `cfg`; the
    step calls the plain modules unless wrappers are given. No Q-controllers."""
    t = cfg.train
    opt_g = build_optimizer(t.optimizer, [p for p in model.parameters() if p.requires_grad], t.learning_rate_gen, t)
    opt_d = build_optimizer(t.optimizer, list(disc.parameters()), t.learning_rate_disc, t)
    # `is None`, not `or`: a compiled module's truth value calls its __len__, which torch 2.14 proxies to the module
    # (a TypeError for ours)
    return Players(cfg, device, precision or resolve_precision(cfg, device), model, disc,
                   model if model_step is None else model_step, disc if disc_step is None else disc_step,
                   disc if frozen_disc is None else frozen_disc, opt_g, opt_d, VAEGANLoss(cfg, device),
                   EMA(model, t.ema_decay, t.ema_warmup) if t.ema_decay > 0 else None)
