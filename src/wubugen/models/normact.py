"""GroupNorm -> GAAD-region FiLM -> SiLU, the plain backbone's post-conv step, as one pure function, and its
torch.compile'd twin (`--compile_norms`).

Eagerly the step is five to seven kernels forward and more backward, each reading and writing the whole map in fp32
(autocast runs GroupNorm in fp32): at full resolution memory-bound work, not math. Compiled, inductor fuses it into
a reduction and one elementwise pass each way, and keeps less for the backward (it recomputes the cheap elementwise
part instead of saving its outputs). The function is compiled once per process and shared by every block of every
model (dynamic shapes: one graph with FiLM and one without, for training and again for validation's no-grad
passes), so the set-up is a few small graphs, cached under --cache_dir.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wubugen.models.layers import set_runtime_switch

# torch.compile's backend for the fused twin; tests on the CPU set "aot_eager" (inductor's C++ build takes minutes)
COMPILE_BACKEND = "inductor"
_FUSED: dict[str, Callable] = {}


def group_norm_film_silu(x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float,
                         gamma: Tensor | None = None, beta: Tensor | None = None) -> Tensor:
    """SiLU(GroupNorm(x) * (1 + gamma) + beta), or SiLU(GroupNorm(x)) without FiLM. x (B, C, ...); gamma and beta
    broadcast against it (RegionFiLM.maps: (1, C, 1, h, w) for 5-D maps). -> x's shape."""
    y = F.group_norm(x, groups, weight, bias, eps)
    if gamma is not None:
        y = y * (1 + gamma) + beta
    return F.silu(y)


def norm_act_function(fused: bool) -> Callable:
    """The eager function, or its compiled twin (made on first use, shared by every block)."""
    if not fused:
        return group_norm_film_silu
    if COMPILE_BACKEND not in _FUSED:
        _FUSED[COMPILE_BACKEND] = torch.compile(group_norm_film_silu, backend=COMPILE_BACKEND, dynamic=True)
    return _FUSED[COMPILE_BACKEND]


def norm_film_act(x: Tensor, norm: nn.GroupNorm, film: nn.Module | None, fused: bool) -> Tensor:
    """`film`: a RegionFiLM, or nn.Identity / None (no --gen_region_film). The same math as SiLU(film(norm(x)))."""
    maps = film.maps(x.dim()) if hasattr(film, "maps") else (None, None)
    return norm_act_function(fused)(x, norm.weight, norm.bias, norm.num_groups, norm.eps, *maps)


def set_fused_norms(module: nn.Module, on: bool) -> int:
    """Switch the plain backbone's blocks in `module` to the compiled function (a runtime switch: the same math,
    inductor's float reordering aside). -> how many modules (the plain encoder path and generator)."""
    return set_runtime_switch(module, "fused_norms", on)
