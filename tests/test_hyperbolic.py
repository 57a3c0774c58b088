"""Poincare-ball maps against float64 references (closed forms, written out independently below) and properties."""
import math

import pytest
import torch

from wubugen import hyperbolic as hb


# ---- float64 references, written from the textbook formulas (Ganea et al. 2018), no shared code with the package ----
def ref_expmap0(v, c):
    n = v.norm(dim=-1, keepdim=True)
    return torch.tanh(math.sqrt(c) * n) * v / (math.sqrt(c) * n)


def ref_logmap0(y, c):
    n = y.norm(dim=-1, keepdim=True)
    return torch.atanh(math.sqrt(c) * n) * y / (math.sqrt(c) * n)


def ref_mobius_add(x, y, c):
    xy = (x * y).sum(-1, keepdim=True)
    x2 = (x * x).sum(-1, keepdim=True)
    y2 = (y * y).sum(-1, keepdim=True)
    return ((1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y) / (1 + 2 * c * xy + c * c * x2 * y2)


def ref_dist(x, y, c):
    # the cosh form, independent of Mobius addition
    x2 = (x * x).sum(-1)
    y2 = (y * y).sum(-1)
    d2 = ((x - y) ** 2).sum(-1)
    return torch.acosh(1 + 2 * c * d2 / ((1 - c * x2) * (1 - c * y2))) / math.sqrt(c)


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("c", [0.1, 0.486, 1.0, 2.5])
def test_expmap0_logmap0_match_float64(c, gen):
    # tangent norms up to ~2/sqrt(c): well inside float32's reach (near the boundary see the test below)
    v = torch.randn(64, 16, generator=gen, dtype=torch.float64) * 0.5 / math.sqrt(c)
    ct = torch.tensor(c)
    assert rel(hb.expmap0(v, ct), ref_expmap0(v, c)) < 1e-5
    y = ref_expmap0(v, c)
    assert rel(hb.logmap0(y, ct), ref_logmap0(y, c)) < 1e-5
    assert rel(hb.logmap0(hb.expmap0(v, ct), ct), v) < 1e-5  # round trip


@pytest.mark.parametrize("c", [0.3, 1.0])
def test_mobius_add_and_dist_match_float64(c, gen):
    x = ref_expmap0(torch.randn(50, 8, generator=gen, dtype=torch.float64) * 0.4, c)
    y = ref_expmap0(torch.randn(50, 8, generator=gen, dtype=torch.float64) * 0.4, c)
    ct = torch.tensor(c)
    assert rel(hb.mobius_add(x, y, ct), ref_mobius_add(x, y, c)) < 1e-5
    assert rel(hb.dist(x, y, ct), ref_dist(x, y, c)) < 1e-4
    # left cancellation: -x (+) (x (+) y) = y
    assert rel(hb.mobius_add(-x, hb.mobius_add(x, y, ct), ct), y) < 1e-4


def test_distance_from_origin_is_twice_tangent_norm(gen):
    v = torch.randn(20, 5, generator=gen) * 0.5
    c = torch.tensor(0.8)
    d = hb.dist(torch.zeros_like(v), hb.expmap0(v, c), c)
    assert torch.allclose(d, 2 * v.norm(dim=-1), rtol=1e-4)


def test_expmap_logmap_at_point_are_inverse(gen):
    c = torch.tensor(0.7)
    x = hb.expmap0(torch.randn(30, 6, generator=gen) * 0.25, c)
    u = torch.randn(30, 6, generator=gen) * 0.15
    y = hb.expmap(x, u, c)
    assert rel(hb.logmap(x, y, c), u) < 1e-3
    assert torch.allclose(hb.dist(x, y, c), hb.lambda_x(x, c).squeeze(-1) * u.norm(dim=-1), rtol=1e-3)


def test_values_near_the_boundary_stay_inside_and_finite():
    c = torch.tensor(1.0)
    huge = torch.tensor([[1e6, 0.0], [30.0, 40.0], [1e-30, 0.0], [0.0, 0.0]])
    y = hb.expmap0(huge, c)
    assert torch.isfinite(y).all()
    assert (y.norm(dim=-1) < 1.0).all()
    outside = torch.tensor([[2.0, 0.0], [0.999999, 0.0]])
    p = hb.project(outside, c)
    assert (p.norm(dim=-1) <= 1 - hb.poincare.BALL_EPS + 1e-7).all()
    t = hb.logmap0(p, c)
    assert torch.isfinite(t).all()
    # the largest tangent norm representable is bounded (float32 boundary margin)
    assert t.norm(dim=-1).max() < 7.0


def test_gradients_finite_wrt_inputs_and_curvature(gen):
    v = (torch.randn(16, 8, generator=gen) * 3).requires_grad_()
    c = torch.tensor(0.5, requires_grad=True)
    y = hb.expmap0(v, c)
    b = hb.expmap0(torch.randn(4, 8, generator=gen), c)
    loss = hb.dist(y[:, None], b[None], c).sum() + hb.logmap0(hb.mobius_add(b[0], y, c), c).pow(2).sum()
    loss.backward()
    assert torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0
    assert torch.isfinite(c.grad) and c.grad.abs() > 0
    # zero vector: finite gradient
    z = torch.zeros(3, 4, requires_grad=True)
    hb.logmap0(hb.expmap0(z, c), c).sum().backward()
    assert torch.isfinite(z.grad).all()


def test_curvature_gradient_matches_finite_difference_in_float64(gen):
    x = torch.randn(8, 4, generator=gen, dtype=torch.float64) * 0.4
    y = torch.randn(8, 4, generator=gen, dtype=torch.float64) * 0.4

    def f(cv):
        return ref_dist(ref_expmap0(x, cv), ref_expmap0(y, cv), cv).sum()

    c = torch.tensor(0.6, requires_grad=True)
    hb.dist(hb.expmap0(x, c), hb.expmap0(y, c), c).sum().backward()
    h = 1e-5
    fd = (f(0.6 + h) - f(0.6 - h)) / (2 * h)
    assert abs(c.grad.item() - fd.item()) / abs(fd.item()) < 1e-3


def test_autocast_bf16_is_computed_in_float32(gen):
    v = torch.randn(10, 8, generator=gen)
    c = torch.tensor(1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = hb.expmap0(v.bfloat16(), c)
    assert y.dtype == torch.float32
    assert rel(y, ref_expmap0(v.bfloat16().double(), 1.0)) < 1e-5


def test_transport_preserves_riemannian_norm(gen):
    c = torch.tensor(0.9)
    x = hb.expmap0(torch.randn(12, 5, generator=gen) * 0.6, c)
    y = hb.expmap0(torch.randn(12, 5, generator=gen) * 0.6, c)
    v = torch.randn(12, 5, generator=gen)
    w = hb.transport(x, y, v, c)
    assert torch.allclose(hb.inner(x, v, v, c), hb.inner(y, w, w, c), rtol=1e-3)


def test_matches_geoopt_in_float64(gen):
    geoopt = pytest.importorskip("geoopt")
    ball = geoopt.PoincareBall(c=0.7)
    x = ball.expmap0(torch.randn(10, 6, generator=gen, dtype=torch.float64) * 0.5)
    y = ball.expmap0(torch.randn(10, 6, generator=gen, dtype=torch.float64) * 0.5)
    u = torch.randn(10, 6, generator=gen, dtype=torch.float64)
    c = torch.tensor(0.7)
    assert rel(hb.mobius_add(x, y, c), ball.mobius_add(x, y)) < 1e-5
    assert rel(hb.transport(x, y, u, c), ball.transp(x, y, u)) < 1e-4
    assert rel(hb.egrad2rgrad(x, u, c), ball.egrad2rgrad(x, u)) < 1e-5
