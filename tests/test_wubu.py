"""WuBu levels and stacks: learnable geometry is in the graph and learns; rotations are rotations; no saturation."""
import math

import pytest
import torch

from wubugen import hyperbolic as hb
from wubugen.config import WuBuStackConfig
from wubugen.hyperbolic.params import ball_curvature, is_ball
from wubugen.models.wubu import LevelTransform, WuBuStack, phi_curvature


def stack(euclidean=False, rotation=True, levels=2):
    cfg = WuBuStackConfig(levels, [16, 8, 8][:levels], [1.0, 0.7, 0.5][:levels], use_rotation=rotation,
                          phi_influence_curvature=True, phi_influence_rotation_init=rotation)
    return WuBuStack(12, cfg, dropout=0.0, boundary_points=4, hidden_ratio=1.0, euclidean=euclidean)


@pytest.mark.parametrize("euclidean", [False, True])
def test_every_piece_of_every_level_gets_gradient(euclidean):
    torch.manual_seed(0)
    s = stack(euclidean)
    x = torch.randn(40, 12)
    s(x).pow(2).mean().backward()
    for name, p in s.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_curvature_scale_spread_change_after_a_step():
    torch.manual_seed(0)
    s = stack()
    before = {n: p.detach().clone() for n, p in s.named_parameters()}
    opt = torch.optim.SGD(s.parameters(), lr=0.1)
    x, target = torch.randn(64, 12), torch.randn(64, 8)
    (s(x) - target).pow(2).mean().backward()
    opt.step()
    for name, p in s.named_parameters():
        if any(k in name for k in ("curvature_u", "scale_u", "spread_u", "descriptor", "boundary")):
            assert not torch.equal(before[name], p.detach()), name
    assert len([n for n, _ in s.named_parameters() if n.endswith("curvature_u")]) == 2


def test_last_level_geometry_shapes_the_output():
    """In the original, the last level's scale, descriptor and boundary points had no effect."""
    torch.manual_seed(0)
    s = stack().eval()
    x = torch.randn(10, 12)
    y0 = s(x)
    last = s.levels[-1]
    for attr in ("scale_u", "spread_u", "curvature_u"):
        with torch.no_grad():
            getattr(last, attr).add_(0.3)
        assert not torch.allclose(s(x), y0), attr
        with torch.no_grad():
            getattr(last, attr).sub_(0.3)
    for attr in ("descriptor", "boundary"):
        with torch.no_grad():
            getattr(last, attr).mul_(0.5)
        assert not torch.allclose(s(x), y0), attr


def test_rotations_are_orthogonal_and_phi_initialised():
    t = LevelTransform(10, 6, use_rotation=True, phi_rotation_init=True, level_idx=1)
    r = t.rotation()
    assert torch.allclose(r @ r.T, torch.eye(10), atol=1e-5)
    assert abs(torch.linalg.det(r).item() - 1) < 1e-4
    assert not torch.allclose(r, torch.eye(10))  # phi-scaled plane rotations, not the identity
    with torch.no_grad():
        t.skew.add_(torch.randn(10, 10))  # any parameter value stays a rotation
    r = t.rotation()
    assert torch.allclose(r @ r.T, torch.eye(10), atol=1e-4)


def test_ball_parameters_are_tagged_with_live_curvature():
    s = stack()
    lv = s.levels[0]
    assert is_ball(lv.descriptor) and is_ball(lv.boundary) and not is_ball(lv.combiner[0].weight)
    with torch.no_grad():
        lv.curvature_u.add_(1.0)
    assert torch.allclose(ball_curvature(lv.boundary), lv.curvature().detach())


def test_phi_curvature_factors():
    assert [round(phi_curvature(1.0, i), 5) for i in range(4)] == [0.48587, 0.78615, 1.27202, 2.05817]


def test_points_stay_well_inside_the_ball_for_layernorm_scale_inputs():
    """The original saturated tanh; here tangent inputs are rescaled so points are not pinned to the edge."""
    torch.manual_seed(0)
    s = stack()
    lv = s.levels[0]
    x = s.input_proj(torch.randn(256, 12) * 5)
    v = lv.combiner(x)
    u = v * (lv.scale() / math.sqrt(lv.dim))
    y = hb.expmap0(u, lv.curvature())
    radius = 1 / lv.curvature().sqrt()
    frac = (y.norm(dim=-1) / radius).max().item()
    assert frac < 0.95
    # and the round trip keeps magnitude information (not direction-only)
    assert torch.allclose(hb.logmap0(y, lv.curvature()), u, rtol=1e-3, atol=1e-5)


def test_phi_initial_rotation_has_the_phi_scaled_plane_angles():
    t = LevelTransform(4, 4, use_rotation=True, phi_rotation_init=True, level_idx=0)
    r = t.rotation()
    for j in range(2):
        angle = (math.pi / 4) * 1.6180339887 ** (((0 + j) % 5) - 2) / 2
        block = r[2 * j:2 * j + 2, 2 * j:2 * j + 2]
        assert torch.allclose(block, torch.tensor([[math.cos(angle), math.sin(angle)],
                                                   [-math.sin(angle), math.cos(angle)]]), atol=1e-5) or \
            torch.allclose(block, torch.tensor([[math.cos(angle), -math.sin(angle)],
                                                [math.sin(angle), math.cos(angle)]]), atol=1e-5)
