"""GroupNorm with its statistics taken in chunks: the same function as nn.GroupNorm, written so that every reduction,
forward and backward, has many rows.

GroupNorm's statistics are one reduction per (sample, group): at batch 4 and 8 groups, 32 rows of 1.6 M elements for
a 64-channel 3-frame 256x256 map. Inductor lowered those (and their backward) as reductions over a few dozen thread
blocks on a 132-SM card: 4.0 ms of a 23.4 ms compiled launcher step on an H100 went to GroupNorm's kernels, about four
times their memory-traffic floor (docs/benchmarks.md, session 10). Here the statistics are first taken per (sample,
channel, chunk of rows) and then combined exactly (Chan et al.'s pairwise variance over equal-sized parts), and the mean
and inverse std are broadcast back through the same (sample, channel, chunk) shape, so the gradients' reductions also
have B*C*K rows instead of B*G. The parts are a view of the map in either memory layout (contiguous or
channels-last-3d): no layout copy (a bf16 map is cast to fp32 for the statistics, as autocast's GroupNorm does).

`--split_norm_stats` (a runtime switch, not a model option: the same parameters, the same math up to float
reordering), used inside torch.compile's graphs only (`--compile`; `--compile_norms`' fused function keeps
F.group_norm).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def norm_chunks(height: int, target: int = 16) -> int:
    """How many equal parts the rows (dim -2) of a map are split into: the largest power of two up to `target` that
    divides `height` (1 when it is odd)."""
    k = 1
    while k * 2 <= target and height % (k * 2) == 0:
        k *= 2
    return k


def group_norm_split(x: Tensor, groups: int, weight: Tensor | None, bias: Tensor | None, eps: float,
                     chunks: int | None = None) -> Tensor:
    """F.group_norm(x, groups, weight, bias, eps) for x (B, C, ..., H, W) with at least one spatial dim, statistics in
    fp32 (or x's wider dtype) from `chunks` equal parts of dim -2 (of the last dim for (B, C, L) inputs; default
    norm_chunks). -> x's shape and dtype (fp32 under CUDA's autocast, as F.group_norm there)."""
    b, c = x.shape[:2]
    if c % groups:
        raise ValueError(f"{c} channels do not split into {groups} groups")
    spatial = x.shape[2:]
    if not spatial:
        raise ValueError("group_norm_split needs at least one spatial dim")
    stat_dtype = torch.promote_types(x.dtype, torch.float32)  # fp32 at least (float64 stays float64)
    # as F.group_norm: CUDA's autocast runs it in fp32, the CPU's in the input's dtype
    out_dtype = stat_dtype if x.is_cuda and torch.is_autocast_enabled("cuda") else x.dtype
    xf = x.to(stat_dtype)
    rows = spatial[-2] if len(spatial) >= 2 else spatial[-1]
    k = chunks if chunks is not None else norm_chunks(rows)
    if rows % k:
        raise ValueError(f"dim of size {rows} does not split into {k} chunks")
    # (B, C, *lead, K, rows/K, *trail): only splits a dim, so a view in any layout
    split_at = x.dim() - 2 if len(spatial) >= 2 else x.dim() - 1
    shape = (*x.shape[:split_at], k, rows // k, *x.shape[split_at + 1:])
    xv = xf.view(shape)
    red = tuple(d for d in range(2, len(shape)) if d != split_at)
    var_k, mean_k = torch.var_mean(xv, dim=red, correction=0)  # (B, C, K)
    # exact combination over the group's channels and chunks (all parts hold the same number of elements)
    cg = c // groups
    mk = mean_k.view(b, groups, cg * k)
    mean = mk.mean(-1, keepdim=True)
    var = var_k.view(b, groups, cg * k).mean(-1, keepdim=True) + (mk - mean).square().mean(-1, keepdim=True)
    rstd = torch.rsqrt(var + eps)
    # one scale and shift per (B, C, K), broadcast back through that shape: the backward's reductions keep B*C*K
    # rows, and autograd keeps the map once (xv) besides them
    kshape = [b, c] + [1] * (len(shape) - 2)
    kshape[split_at] = k
    scale = rstd.expand(b, groups, cg * k).reshape(b, c, k)
    shift = -mean.expand(b, groups, cg * k).reshape(b, c, k) * scale
    if weight is not None:
        w = weight.to(stat_dtype).view(1, c, 1)
        scale, shift = scale * w, shift * w
    if bias is not None:
        shift = shift + bias.to(stat_dtype).view(1, c, 1)
    y = xv * scale.reshape(kshape) + shift.reshape(kshape)
    return y.reshape(x.shape).to(out_dtype)


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm (the same parameters and state-dict keys) whose forward takes its statistics in chunks
    (group_norm_split) inside torch.compile's graphs while the runtime switch `split_stats` (--split_norm_stats) is
    on; eager calls run GroupNorm's own kernel."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True):
        super().__init__(num_groups, num_channels, eps, affine)
        self.split_stats = False  # a runtime switch, not a model option

    def forward(self, x: Tensor) -> Tensor:
        # only inside torch.compile's tracing: eagerly (validation, sampling, the EMA's passes through the same
        # modules) it is more kernels and keeps more for the backward than GroupNorm's own
        if self.split_stats and x.dim() >= 3 and torch.compiler.is_compiling():
            return group_norm_split(x, self.num_groups, self.weight, self.bias, self.eps)
        return super().forward(x)

