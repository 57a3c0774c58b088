"""WuBu nesting: a stack of hyperbolic levels joined by rotations and linear maps.

Each level lives on a Poincare ball whose curvature, scale and spread are learnable tensors in the graph (the original read
them with `.item()`, so they never learned). A level

  1. combines its inputs (the incoming tangent vector, the boundary-relative vector and the descriptor of the previous level)
     with an MLP whose width follows the level's (no fixed 32-wide bottleneck),
  2. scales the result to a tangent norm of about `scale` (LayerNorm outputs have norm ~sqrt(dim); mapping those straight to
     the ball saturates tanh and reduces the geometry to direction normalisation) and maps it onto the ball,
  3. translates the point by its learnable level descriptor (Mobius addition),
  4. measures it against learnable boundary points: relative vectors log0(-y (+) b_k) (the log map at y, transported to the
     origin) weighted by a Gaussian kernel of the hyperbolic distance with learnable width `spread`,
  5. emits [log0(y), relative vector] for the stack's output and passes (log0(y), relative vector, descriptor) on.

So curvature, scale, spread, descriptor and boundary points shape the output of every level, the last one included (the original's last level ignored them).
Inter-level transforms apply a real rotation (orthogonal by construction: the Cayley transform of a skew-symmetric
matrix, optionally initialised with phi-scaled plane rotations) and a linear map (the original's were identities). Cayley rather than the
matrix exponential because torch's matrix_exp synchronises with the host on CUDA to pick its degree.

`euclidean=True` is the ablation: every hyperbolic map becomes the identity (Mobius addition becomes +), sizes unchanged.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wubugen import hyperbolic as hb
from wubugen.config import WuBuStackConfig
from wubugen.gaad import PHI
from wubugen.hyperbolic.params import tag_ball
from wubugen.models.layers import set_runtime_switch

CURVATURE_MIN = 1e-3
SCALE_MIN, SCALE_MAX = 1e-3, 10.0
SPREAD_MIN = 1e-2


def phi_curvature(base: float, level_idx: int) -> float:
    """The original's phi influence on the initial curvature: c * phi^((i mod 4) - 1.5)."""
    return base * PHI ** ((level_idx % 4) - 1.5)


def inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def poincare_level(v: Tensor, scale: Tensor, spread: Tensor, c: Tensor, descriptor: Tensor,
                   boundary: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The hyperbolic part of a level as one pure function (steps 2-5 of the module docstring), so that
    `--compile_wubu_maps` can fuse it: eagerly it is about 550 small kernels per level, forward and backward
    (benchmarks/wubu_ops.py). v: the combiner's output (N, D); scale, spread, c: scalars; descriptor (D,), boundary
    (P, D): ball points. -> (log0(y) (N, D), relative vector (N, D), the descriptor as a tangent vector (D,))."""
    u = v.float() * (scale / math.sqrt(v.shape[-1]))
    ld = hb.project(descriptor, c)
    y = hb.mobius_add(ld, hb.expmap0(u, c), c)  # (N, D) on the ball
    bnd = hb.project(boundary, c)  # (P, D)
    rel_k = hb.logmap0(hb.mobius_add(-y[:, None, :], bnd[None], c), c)  # (N, P, D): log map at y, transported to 0
    r = _boundary_mix(rel_k, 4.0 * (rel_k * rel_k).sum(-1), spread)  # 4|v|^2: squared distances on the ball
    return hb.logmap0(y, c), r, hb.logmap0(ld, c)


def _boundary_mix(rel_k: Tensor, d2: Tensor, spread: Tensor) -> Tensor:
    """The relative vectors (N, P, D) weighted by a Gaussian kernel of their squared distances d2 (N, P). -> (N, D)"""
    w = torch.softmax(-d2 / (2.0 * spread ** 2), dim=-1)  # (N, P)
    return (w[..., None] * rel_k).sum(1)


def euclidean_level(v: Tensor, scale: Tensor, spread: Tensor, c: None, descriptor: Tensor,
                    boundary: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """`poincare_level` with every hyperbolic map the identity and Mobius addition +: the ablation."""
    u = v.float() * (scale / math.sqrt(v.shape[-1]))
    y = descriptor + u
    rel_k = -y[:, None, :] + boundary[None]
    return y, _boundary_mix(rel_k, (rel_k * rel_k).sum(-1), spread), descriptor


_FUSED: dict[bool, Callable] = {}


def level_maps(euclidean: bool, fused: bool) -> Callable:
    """The level function, or its torch.compile'd twin, made once per process and shared by every level (dynamic
    shapes: one graph, forward and backward, for all levels and stacks of any size, where compiling whole stacks took
    about 80 s on a cold cache). No random numbers are drawn inside it, so compiled and eager levels see the same
    dropout masks."""
    fn = euclidean_level if euclidean else poincare_level
    if not fused:
        return fn
    if euclidean not in _FUSED:
        _FUSED[euclidean] = torch.compile(fn, dynamic=True)
    return _FUSED[euclidean]


def set_fused_maps(module: nn.Module, on: bool) -> int:
    """Switch every WuBu level of `module` to the compiled level function (a runtime switch: the same math, inductor's
    float reordering aside). -> how many levels."""
    return set_runtime_switch(module, "fused_maps", on)


class WuBuLevel(nn.Module):
    """One level. (N, D) tangent input [+ relative (N, D) and descriptor (D,) from the previous level] -> see forward."""

    def __init__(self, dim: int, curvature: float, *, has_context: bool, boundary_points: int, dropout: float,
                 hidden_ratio: float, euclidean: bool, scale: float = 1.0, spread: float = 1.0):
        super().__init__()
        self.dim = dim
        self.has_context = has_context
        self.euclidean = euclidean
        self.fused_maps = False  # a runtime switch (set_fused_maps, --compile_wubu_maps), not a model option
        if euclidean:
            self.curvature_u = None
        else:
            self.curvature_u = nn.Parameter(torch.tensor(inverse_softplus(curvature - CURVATURE_MIN)))
        s = min(max(scale, SCALE_MIN * 2), SCALE_MAX - SCALE_MIN)
        self.scale_u = nn.Parameter(torch.tensor(math.log((s - SCALE_MIN) / (SCALE_MAX - s))))
        self.spread_u = nn.Parameter(torch.tensor(inverse_softplus(spread - SPREAD_MIN)))
        in_dim = dim * (3 if has_context else 1)
        hidden = max(16, int(round(hidden_ratio * dim)))
        self.combiner = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, dim), nn.LayerNorm(dim),
        )
        # Ball points, initialised through exp0 of small tangent vectors. Boundary points spread over a tangent radius of
        # ~0.5 so that relative vectors differ between them from the start.
        c0 = torch.tensor(curvature)
        desc = torch.empty(dim).uniform_(-0.01, 0.01)
        bnd = torch.randn(boundary_points, dim) * (0.5 / math.sqrt(dim))
        self.descriptor = nn.Parameter(hb.expmap0(desc, c0) if not euclidean else desc)
        self.boundary = nn.Parameter(hb.expmap0(bnd, c0) if not euclidean else bnd)
        if not euclidean:
            tag_ball(self.descriptor, self.curvature)
            tag_ball(self.boundary, self.curvature)

    def curvature(self) -> Tensor | None:
        if self.curvature_u is None:
            return None
        return F.softplus(self.curvature_u.float()) + CURVATURE_MIN

    def scale(self) -> Tensor:
        return SCALE_MIN + (SCALE_MAX - SCALE_MIN) * torch.sigmoid(self.scale_u.float())

    def spread(self) -> Tensor:
        return F.softplus(self.spread_u.float()) + SPREAD_MIN

    def forward(self, t: Tensor, rel: Tensor | None = None, desc: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """t, rel: (N, D) tangent vectors; desc: (D,) tangent vector.
        -> (point tangent log0(y) (N, D), relative vector (N, D), this level's descriptor as a tangent vector (D,))."""
        if self.has_context:
            h = torch.cat([t, rel.to(t.dtype), desc.to(t.dtype).expand_as(t)], -1)
        else:
            h = t
        v = self.combiner(h)
        maps = level_maps(self.euclidean, self.fused_maps)
        return maps(v, self.scale(), self.spread(), self.curvature(), self.descriptor, self.boundary)


class LevelTransform(nn.Module):
    """Between level i (dim_in) and level i+1 (dim_out): rotation (orthogonal) then a linear map."""

    def __init__(self, dim_in: int, dim_out: int, *, use_rotation: bool, phi_rotation_init: bool, level_idx: int):
        super().__init__()
        self.use_rotation = use_rotation
        if use_rotation:
            a = torch.zeros(dim_in, dim_in)
            if phi_rotation_init:
                # plane rotations in the (2j, 2j+1) planes with phi-scaled angles (the original's phi rotation init,
                # generalised from its 2-D/4-D special cases to any dimension)
                for j in range(dim_in // 2):
                    angle = (math.pi / 4) * PHI ** (((level_idx + j) % 5) - 2) / 2
                    a[2 * j, 2 * j + 1] = math.tan(angle / 2)  # the Cayley map turns tan(angle/2) into that angle
            self.skew = nn.Parameter(a)
        self.map = nn.Linear(dim_in, dim_out)

    def rotation(self) -> Tensor:
        """R = (I - K)^-1 (I + K) for the skew-symmetric K: orthogonal with det 1 for any K (I - K is always
        invertible), without host syncs (solve_ex does not check for errors on the host)."""
        s = self.skew.float()
        k = s - s.T
        eye = torch.eye(k.shape[0], dtype=k.dtype, device=k.device)
        return torch.linalg.solve_ex(eye - k, eye + k).result

    def forward(self, t: Tensor, rel: Tensor, desc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.use_rotation:
            rot = self.rotation()
            t, rel, desc = t @ rot.T, rel @ rot.T, desc @ rot.T
        # relative vectors are differences of points: no bias for them
        return self.map(t), F.linear(rel, self.map.weight), self.map(desc)


class WuBuStack(nn.Module):
    """(..., in_dim) -> (..., out_dim). Aggregation: concatenation of every level's [log0(y), relative vector]."""

    def __init__(self, in_dim: int, cfg: WuBuStackConfig, *, dropout: float, boundary_points: int, hidden_ratio: float,
                 euclidean: bool, out_dim: int | None = None):
        super().__init__()
        n = cfg.num_levels
        dims = list(cfg.hyperbolic_dims[:n])
        self.out_dim = out_dim or cfg.output_dim or (dims[-1] if n else in_dim)
        if n == 0:
            self.levels = nn.ModuleList()
            self.transforms = nn.ModuleList()
            self.input_proj = nn.Identity()
            self.output_proj = nn.Linear(in_dim, self.out_dim)
            return
        self.input_proj = nn.Sequential(nn.Linear(in_dim, dims[0]), nn.LayerNorm(dims[0]))
        curv = [phi_curvature(c, i) if cfg.phi_influence_curvature else c
                for i, c in enumerate(cfg.initial_curvatures[:n])]
        self.levels = nn.ModuleList(
            WuBuLevel(d, curv[i], has_context=i > 0, boundary_points=boundary_points, dropout=dropout,
                      hidden_ratio=hidden_ratio, euclidean=euclidean)
            for i, d in enumerate(dims)
        )
        self.transforms = nn.ModuleList(
            LevelTransform(dims[i], dims[i + 1], use_rotation=cfg.use_rotation,
                           phi_rotation_init=cfg.phi_influence_rotation_init, level_idx=i)
            for i in range(n - 1)
        )
        self.output_proj = nn.Linear(2 * sum(dims), self.out_dim)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        if not len(self.levels):
            return self.output_proj(x).reshape(*lead, self.out_dim)
        t = self.input_proj(x)
        rel = desc = None
        outs = []
        for i, level in enumerate(self.levels):
            o, r, d = level(t, rel, desc)
            outs.append(o)
            outs.append(r)
            if i < len(self.transforms):
                t, rel, desc = self.transforms[i](o, r, d)
        # the hyperbolic parts run in float32; autocast casts for the Linear where it is on
        y = self.output_proj(torch.cat(outs, -1))
        return y.reshape(*lead, self.out_dim)
