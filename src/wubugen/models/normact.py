"""GroupNorm -> GAAD-region FiLM -> SiLU, the plain backbone's post-conv step (and InstanceNorm -> FiLM -> LeakyReLU,
the spatio-temporal discriminator's), as pure functions, one per activation, and their torch.compile'd twins
(`--compile_norms`).

Eagerly the step is five to seven kernels forward and more backward, each reading and writing the whole map in fp32
(autocast runs GroupNorm in fp32): at full resolution memory-bound work, not math. Compiled, inductor fuses it into
a reduction and one elementwise pass each way, and keeps less for the backward (it recomputes the cheap elementwise
part instead of saving its outputs). Each function is compiled once per process and shared by every block of every
network (dynamic shapes: one graph per variant, with or without FiLM, per activation, for training and for
validation's no-grad passes), so the set-up is a few small graphs, cached under --cache_dir. A compiled backward
cannot be retained, which is why the adaptive GAN weight walks D's part of the graph once without retaining it
(train/losses.py).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wubugen.models.layers import set_runtime_switch

# torch.compile's backend for the fused twin; tests on the CPU set "aot_eager" (inductor's C++ build takes minutes)
COMPILE_BACKEND = "inductor"
_FUSED: dict[tuple[str, str], Callable] = {}


def _norm_film(x: Tensor, weight: Tensor | None, bias: Tensor | None, groups: int, eps: float,
               gamma: Tensor | None, beta: Tensor | None) -> Tensor:
    y = F.group_norm(x, groups, weight, bias, eps)
    if gamma is not None:
        y = y * (1 + gamma) + beta
    return y


def group_norm_film_silu(x: Tensor, weight: Tensor | None, bias: Tensor | None, groups: int, eps: float,
                         gamma: Tensor | None = None, beta: Tensor | None = None) -> Tensor:
    """SiLU(GroupNorm(x) * (1 + gamma) + beta), or SiLU(GroupNorm(x)) without FiLM (gamma None). x (B, C, ...); gamma
    and beta broadcast against it (RegionFiLM.maps: (1, C, 1, h, w) for 5-D maps). -> x's shape."""
    return F.silu(_norm_film(x, weight, bias, groups, eps, gamma, beta))


def group_norm_film_lrelu(x: Tensor, weight: Tensor | None, bias: Tensor | None, groups: int, eps: float,
                          gamma: Tensor | None = None, beta: Tensor | None = None) -> Tensor:
    """The same with LeakyReLU(0.2), the discriminators'; groups == C is InstanceNorm (weight and bias None when it
    has no affine part)."""
    return F.leaky_relu(_norm_film(x, weight, bias, groups, eps, gamma, beta), 0.2)


# one function per activation: dynamo keeps its compiled variants (FiLM or not, grad mode, which inputs need grad)
# per code object, up to its recompile limit, so the model's and D's variants do not crowd each other out
ACTIVATIONS: dict[str, Callable] = {"silu": group_norm_film_silu, "lrelu": group_norm_film_lrelu}


def norm_act_function(fused: bool, act: str = "silu") -> Callable:
    """The eager function for `act`, or its compiled twin (made on first use, shared by every block)."""
    fn = ACTIVATIONS[act]
    if not fused:
        return fn
    key = (COMPILE_BACKEND, act)
    if key not in _FUSED:
        _FUSED[key] = torch.compile(fn, backend=COMPILE_BACKEND, dynamic=True)
    return _FUSED[key]


def norm_groups(norm: nn.Module) -> int:
    """GroupNorm's groups; InstanceNorm's channels (it is GroupNorm with one channel per group, when it keeps no
    running statistics: then train and eval normalise alike)."""
    if isinstance(norm, nn.GroupNorm):
        return norm.num_groups
    if isinstance(norm, nn.modules.instancenorm._InstanceNorm) and not norm.track_running_stats:
        return norm.num_features
    raise TypeError(f"no fused form of {type(norm).__name__}")


def norm_film_act(x: Tensor, norm: nn.Module, film: nn.Module | None, fused: bool, act: str = "silu") -> Tensor:
    """`norm`: a GroupNorm or InstanceNorm; `film`: a RegionFiLM, or nn.Identity / None (no region FiLM). The same
    math as act(film(norm(x))) with SiLU or LeakyReLU(0.2)."""
    maps = film.maps(x.dim()) if hasattr(film, "maps") else (None, None)
    return norm_act_function(fused, act)(x, norm.weight, norm.bias, norm_groups(norm), norm.eps, *maps)


def set_fused_norms(module: nn.Module, on: bool) -> int:
    """Switch the plain backbone's blocks and the spatio-temporal D's in `module` to the compiled function (a runtime
    switch: the same math, inductor's float reordering aside). -> how many modules switched."""
    return set_runtime_switch(module, "fused_norms", on)
