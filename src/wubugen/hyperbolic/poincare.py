"""Poincare-ball maps with a tensor curvature, as pure functions.

The ball of curvature -c (c > 0) is {x : c |x|^2 < 1}. `c` is a tensor (a scalar, or anything that broadcasts against the
last-dim-reduced input, e.g. shape (..., 1)) so that gradients reach it: learnable curvature is part of the graph.

Every function computes in float32 with autocast disabled (hyperbolic maps lose all precision in bf16 near the boundary) and
returns float32. There are no host syncs: clamps replace `if not isfinite(x).all()` checks.

Formulas follow Ganea et al. 2018 ("Hyperbolic Neural Networks") and geoopt's stereographic math with k = -c.
"""
from __future__ import annotations

import torch
from torch import Tensor

MIN_NORM = 1e-15
BALL_EPS = 1e-5  # relative margin kept from the boundary in float32: |x| <= (1 - BALL_EPS) / sqrt(c)
TANH_CLAMP = 15.0


def _f32(*xs: Tensor) -> tuple[Tensor, ...]:
    return tuple(x.float() for x in xs)


def _as_c(c: Tensor | float, like: Tensor) -> Tensor:
    if not torch.is_tensor(c):
        c = torch.tensor(c, dtype=torch.float32, device=like.device)
    return c.float()


def _sqnorm(x: Tensor) -> Tensor:
    return (x * x).sum(-1, keepdim=True)


def _norm(x: Tensor) -> Tensor:
    # sqrt of a clamped square: finite gradient (zero) at x = 0, unlike torch.linalg.norm there
    return _sqnorm(x).clamp_min(MIN_NORM * MIN_NORM).sqrt()


def artanh(x: Tensor) -> Tensor:
    x = x.clamp(-1 + 1e-7, 1 - 1e-7)
    return 0.5 * (torch.log1p(x) - torch.log1p(-x))


def _no_autocast(x: Tensor):
    return torch.autocast(device_type=x.device.type, enabled=False)


def project(x: Tensor, c: Tensor | float, eps: float = BALL_EPS) -> Tensor:
    """Pull points back inside the ball: rows with |x| > (1 - eps)/sqrt(c) are rescaled to that radius. (..., D) -> (..., D)"""
    with _no_autocast(x):
        (x,) = _f32(x)
        c = _as_c(c, x)
        max_norm = (1.0 - eps) / c.sqrt()
        norm = _norm(x)
        scale = torch.where(norm > max_norm, max_norm / norm, torch.ones_like(norm))
        return x * scale


def expmap0(v: Tensor, c: Tensor | float) -> Tensor:
    """Exponential map at the origin: tangent vector (..., D) -> ball point (..., D)."""
    with _no_autocast(v):
        (v,) = _f32(v)
        c = _as_c(c, v)
        sc = c.sqrt()
        vn = _norm(v)
        y = torch.tanh((sc * vn).clamp(max=TANH_CLAMP)) * v / (sc * vn)
        return project(y, c)


def logmap0(y: Tensor, c: Tensor | float) -> Tensor:
    """Logarithmic map at the origin: ball point (..., D) -> tangent vector (..., D). Inverse of expmap0."""
    with _no_autocast(y):
        (y,) = _f32(y)
        c = _as_c(c, y)
        sc = c.sqrt()
        yn = _norm(y)
        return artanh(sc * yn) * y / (sc * yn)


def mobius_add(x: Tensor, y: Tensor, c: Tensor | float) -> Tensor:
    """Mobius addition x (+)_c y. Shapes broadcast over leading dims; last dim D."""
    with _no_autocast(x):
        x, y = _f32(x, y)
        c = _as_c(c, x)
        xy = (x * y).sum(-1, keepdim=True)
        x2 = _sqnorm(x)
        y2 = _sqnorm(y)
        num = (1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y
        den = 1 + 2 * c * xy + c * c * x2 * y2
        return num / den.clamp_min(MIN_NORM)


def dist(x: Tensor, y: Tensor, c: Tensor | float, keepdim: bool = False) -> Tensor:
    """Geodesic distance on the ball: 2/sqrt(c) artanh(sqrt(c) |(-x) (+) y|)."""
    with _no_autocast(x):
        c = _as_c(c, x)
        sc = c.sqrt()
        d = 2.0 / sc * artanh(sc * _norm(mobius_add(-x.float(), y.float(), c)))
        return d if keepdim else d.squeeze(-1)


def lambda_x(x: Tensor, c: Tensor | float) -> Tensor:
    """Conformal factor 2 / (1 - c|x|^2), shape (..., 1)."""
    with _no_autocast(x):
        (x,) = _f32(x)
        c = _as_c(c, x)
        return 2.0 / (1.0 - c * _sqnorm(x)).clamp_min(MIN_NORM)


def expmap(x: Tensor, u: Tensor, c: Tensor | float) -> Tensor:
    """Exponential map at x of the tangent vector u (the optimizer's exact retraction)."""
    with _no_autocast(x):
        x, u = _f32(x, u)
        c = _as_c(c, x)
        sc = c.sqrt()
        un = _norm(u)
        second = torch.tanh((sc * lambda_x(x, c) * un / 2).clamp(max=TANH_CLAMP)) * u / (sc * un)
        return project(mobius_add(x, second, c), c)


def logmap(x: Tensor, y: Tensor, c: Tensor | float) -> Tensor:
    """Logarithmic map at x: the tangent vector at x pointing to y."""
    with _no_autocast(x):
        x, y = _f32(x, y)
        c = _as_c(c, x)
        sc = c.sqrt()
        sub = mobius_add(-x, y, c)
        sn = _norm(sub)
        return 2.0 / (sc * lambda_x(x, c)) * artanh(sc * sn) * sub / sn


def egrad2rgrad(x: Tensor, grad: Tensor, c: Tensor | float) -> Tensor:
    """Euclidean gradient -> Riemannian gradient at x: grad / lambda_x^2."""
    return grad.float() / lambda_x(x, c).pow(2)


def inner(x: Tensor, u: Tensor, v: Tensor, c: Tensor | float, keepdim: bool = False) -> Tensor:
    """Riemannian inner product <u, v>_x = lambda_x^2 <u, v>."""
    out = lambda_x(x, c).pow(2) * (u.float() * v.float()).sum(-1, keepdim=True)
    return out if keepdim else out.squeeze(-1)


def gyration(a: Tensor, b: Tensor, w: Tensor, c: Tensor | float) -> Tensor:
    """gyr[a, b] w = -(a (+) b) (+) (a (+) (b (+) w)), in the closed form of geoopt (k = -c)."""
    with _no_autocast(a):
        a, b, w = _f32(a, b, w)
        k = -_as_c(c, a)
        a2, b2 = _sqnorm(a), _sqnorm(b)
        ab = (a * b).sum(-1, keepdim=True)
        aw = (a * w).sum(-1, keepdim=True)
        bw = (b * w).sum(-1, keepdim=True)
        k2 = k * k
        p = -k2 * aw * b2 - k * bw + 2 * k2 * ab * bw
        q = -k2 * bw * a2 + k * aw
        d = 1 - 2 * k * ab + k2 * a2 * b2
        return w + 2 * (p * a + q * b) / d.clamp_min(MIN_NORM)


def transport(x: Tensor, y: Tensor, v: Tensor, c: Tensor | float) -> Tensor:
    """Parallel transport of the tangent vector v from x to y."""
    return gyration(y, -x, v, c) * lambda_x(x, c) / lambda_x(y, c)
