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


def test_fused_maps_switch_every_level_and_keep_the_eager_function_otherwise():
    from wubugen.models.wubu import euclidean_level, level_maps, poincare_level, set_fused_maps

    s = stack()
    assert level_maps(False, False) is poincare_level and level_maps(True, False) is euclidean_level
    assert set_fused_maps(s, True) == 2 and all(lv.fused_maps for lv in s.levels)
    set_fused_maps(s, False)
    assert not any(lv.fused_maps for lv in s.levels)


def test_poincare_level_against_float64():
    """The level function in float32 against itself in float64 (the maps are tested against textbook references in
    test_hyperbolic.py): the composition loses no precision beyond float32's."""
    from wubugen.models.wubu import poincare_level

    g = torch.Generator().manual_seed(3)
    args = [torch.randn(30, 16, generator=g) * 3, torch.tensor(1.3), torch.tensor(0.7), torch.tensor(0.9),
            torch.randn(16, generator=g) * 0.05, torch.randn(4, 16, generator=g) * 0.2]
    lo = poincare_level(*args)
    hi = poincare_level(*[a.double() for a in args])
    for a, b in zip(lo, hi):
        assert ((a.double() - b).norm() / b.norm()).item() < 1e-5


@pytest.mark.slow
def test_compiled_level_matches_eager_forward_and_backward(tmp_path, monkeypatch):
    """What --compile_wubu_maps runs (inductor, here its CPU code; about a minute on a cold cache): one compiled graph
    serves levels of every size, and its outputs and gradients match the eager function's."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    from wubugen.models.wubu import level_maps

    for rows, dim in ((48, 32), (20, 16)):
        g = torch.Generator().manual_seed(rows)
        base = [torch.randn(rows, dim, generator=g), torch.tensor(1.2), torch.tensor(0.8), torch.tensor(0.7),
                torch.randn(dim, generator=g) * 0.02, torch.randn(4, dim, generator=g) * 0.2]
        out, grads = {}, {}
        for fused in (False, True):
            xs = [b.clone().requires_grad_() for b in base]
            o = level_maps(False, fused)(*xs)
            sum((t * t).sum() for t in o).backward()
            out[fused], grads[fused] = o, [x.grad for x in xs]
        for a, b in zip(out[True], out[False]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        for a, b in zip(grads[True], grads[False]):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
