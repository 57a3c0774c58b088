"""Choices of precision and kernels that leave the math alone: autocast dtype, channels-last weights, tap convs,
torch.compile, CUDA graphs. Made once when the players are built."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from wubugen.config import Config
from wubugen.models.layers import set_channels_last_maps, set_split_norm_stats, to_channels_last
from wubugen.models.tapconv import set_tap_convs


@dataclass
class Precision:
    """Autocast dtype (None: fp32) and whether fp16 loss scaling is on."""

    dtype: torch.dtype | None
    device_type: str

    @property
    def scaled(self) -> bool:
        return self.dtype == torch.float16

    def autocast(self, cache: bool = True):
        """cache=False inside CUDA-graph capture: autocast's weight-cast cache would outlive the captured pool."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype, cache_enabled=cache)


def resolve_precision(cfg: Config, device: torch.device) -> Precision:
    p = cfg.train.precision
    if p == "auto":
        p = "bf16" if device.type == "cuda" else "fp32"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[p]
    if dtype == torch.float16 and device.type != "cuda":
        dtype = None  # fp16 autocast is a CUDA feature; the CPU runs fp32 (said once by the trainer)
    return Precision(dtype, device.type)


def speed_layout(cfg: Config, model: nn.Module, disc: nn.Module, device: torch.device, precision: Precision) -> None:
    """Kernel choices that leave the math alone, made once before DDP, EMA and the optimizers see the parameters:
    channels-last weights under torch.compile on CUDA (eagerly, GroupNorm's channels-last kernel made the step slower:
    56.1 vs 46.3 ms bf16 on an H100, docs/benchmarks.md), those whose norms are compiled under --compile_norms, and,
    in fp32 on CUDA, the generator's output conv as taps; GroupNorm's chunked statistics inside compiled graphs
    (--split_norm_stats)."""
    t = cfg.train
    if t.split_norm_stats:  # acts inside torch.compile's graphs only, on any device (models/group_norm.py)
        set_split_norm_stats(model, True)
        set_split_norm_stats(disc, True)
    if device.type != "cuda":
        return
    if t.channels_last and t.compile:
        to_channels_last(model)
        to_channels_last(disc)
        if t.channels_last_maps:
            set_channels_last_maps(model, True)
            set_channels_last_maps(disc, True)
    elif t.channels_last and t.compile_norms:
        # the compiled norms (models/normact.py) read channels-last maps as they are, where eager GroupNorm copied them
        # (the slowdown above), so the convolutions of a network whose norms --compile_norms compiles (it has the
        # switch: the plain backbone's model, the spatio-temporal D) may take cuDNN's channels-last kernels; others
        # keep their layout
        for net in (model, disc):
            if any(hasattr(m, "fused_norms") for m in net.modules()):
                to_channels_last(net)
    if t.tap_convs and precision.dtype is None:
        set_tap_convs(model, True)


def use_compile_cache(cache_dir: str) -> None:
    """Keep inductor's compiled kernels and graphs under the run's cache dir (unless the user chose a place), so a
    repeat run of the same configuration loads them instead of compiling again."""
    import os
    from pathlib import Path

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(cache_dir).resolve() / "inductor"))


def compile_wubu_stacks(model: nn.Module, mode: str = "default") -> int:
    """torch.compile each WuBu stack in place (parameter names unchanged). -> how many were compiled."""
    from wubugen.models.wubu import WuBuStack

    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = True  # dropout draws the same numbers as eagerly (see compile_player)
    stacks = [m for m in model.modules() if isinstance(m, WuBuStack) and len(m.levels)]
    for m in stacks:
        m.compile(mode=mode)
    return len(stacks)


# torch.compile's backend for the players: inductor; the CPU tests set "aot_eager" (the same traced forward and
# backward graphs, run without inductor's minutes of C++ builds)
COMPILE_BACKEND = "inductor"


def compile_player(module: nn.Module, mode: str = "default") -> nn.Module:
    """torch.compile for the training step's players (`mode`: `--compile_mode`). Inductor draws random numbers with
    torch's own ops (fallback_random), so a compiled run samples the same posterior noise and dropout masks as an eager
    one, and the CUDA-graph capture sees ordinary RNG ops.

    Static shapes (dynamic=False): training batches are all one size (drop_last), but D is called at two batch sizes
    (the generator's term on the fakes, D's own step on reals and fakes), and dynamo's automatic dynamic shapes then
    recompiled D's training graph with a symbolic batch dim (kernels for any batch size). Each shape now gets its
    own static graph."""
    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = True
    if COMPILE_BACKEND != "inductor":
        return torch.compile(module, backend=COMPILE_BACKEND, dynamic=False)
    return torch.compile(module, mode=mode, dynamic=False)


def use_cuda_graphs(cfg: Config, device: torch.device, world_size: int) -> bool:
    """`--cuda_graphs`: on without gradient accumulation where no DDP hooks run in the backward (what capture supports
    here). world_size: the processes whose gradients DDP syncs in the backward (1 for one process or `--ddp_comm
    flat`, whose all-reduce runs after it)."""
    if not cfg.train.cuda_graphs or device.type != "cuda":
        return False
    return world_size == 1 and cfg.train.grad_accum_steps == 1
