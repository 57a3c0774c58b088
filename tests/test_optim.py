"""Riemannian SGD/Adam against torch.optim (Euclidean) and geoopt (ball), sync-free skipping, clipping, checkpoints."""
import copy
import io

import geoopt
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wubugen.config import TrainConfig
from wubugen.hyperbolic import poincare as pm
from wubugen.hyperbolic.params import tag_ball
from wubugen.train.optim import (
    RiemannianAdam,
    RiemannianSGD,
    apply_lr_momentum_scales,
    build_optimizer,
    clip_grad_norm_,
)

SHAPES = [(7, 5), (11,), (3, 4, 2), ()]


def euclid_params(seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in SHAPES]


def grads_for(params, step, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(1000 * seed + step)
    return [scale * torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]


def ball_points(seed, c, shape=(6, 4), radius=0.6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype)
    return x / x.norm(dim=-1, keepdim=True) * torch.rand(shape[:-1] + (1,), generator=g, dtype=dtype) * radius / c**0.5


def run(opt, params, steps, seed=0, scale=1.0, **step_kw):
    for t in range(steps):
        for p, g in zip(params, grads_for(params, t, seed, scale)):
            p.grad = g
        opt.step(**step_kw)


def snapshot(params, opt):
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())


def assert_same(a, b):
    """Bitwise-equal (as values) nested structures of tensors and plain data."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b), (a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


# ---------------------------------------------------------------------------------------------------------------------
# Euclidean parameters: identical to torch.optim
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_matches_torch_sgd(nesterov):
    ours, ref = euclid_params(0), euclid_params(0)
    opt = RiemannianSGD(ours, lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=nesterov)
    tref = torch.optim.SGD(ref, lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=nesterov)
    for t in range(6):
        if t == 3:  # a controller changes lr and momentum between steps
            for o in (opt, tref):
                o.param_groups[0]["lr"], o.param_groups[0]["momentum"] = 0.02, 0.8
        run(opt, ours, 1, seed=t)
        run(tref, ref, 1, seed=t)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert opt.param_groups[0]["initial_lr"] == 0.05 and opt.param_groups[0]["initial_momentum"] == 0.9


def test_adam_matches_torch_adamw():
    ours, ref = euclid_params(1), euclid_params(1)
    opt = RiemannianAdam(ours, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05)
    tref = torch.optim.AdamW(ref, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05)
    for t in range(8):
        run(opt, ours, 1, seed=t)
        run(tref, ref, 1, seed=t)
    for a, b in zip(ours, ref):  # bias corrections come from float32 step tensors
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
    for p, q in zip(ours, ref):
        torch.testing.assert_close(opt.state[p]["exp_avg_sq"], tref.state[q]["exp_avg_sq"], rtol=1e-12, atol=0)


def test_per_tensor_clipping():
    params = euclid_params(2)[:2]
    before = [p.detach().clone() for p in params]
    opt = RiemannianSGD(params, lr=1.0, momentum=0.0, max_grad_norm=1.0)
    grads = [torch.full_like(params[0], 3.0), torch.full_like(params[1], 0.01)]  # one too large, one small
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()
    step0 = before[0] - params[0].detach()
    torch.testing.assert_close(step0.norm(), torch.tensor(1.0, dtype=torch.float64), rtol=1e-5, atol=0)
    torch.testing.assert_close(before[1] - params[1].detach(), grads[1])  # below the limit: untouched
    for p, g in zip(params, grads):
        assert torch.equal(p.grad, g)  # p.grad is not edited in place


# ---------------------------------------------------------------------------------------------------------------------
# Ball parameters: geoopt over the exact Poincare ball
# ---------------------------------------------------------------------------------------------------------------------
C = 0.7


def ball_pair(seed):
    x = ball_points(seed, C)
    ours = tag_ball(nn.Parameter(x.clone()), lambda: torch.tensor(C))
    ref = geoopt.ManifoldParameter(x.clone(), manifold=geoopt.PoincareBallExact(c=C))
    return ours, ref


@pytest.mark.parametrize("nesterov", [False, True])
def test_ball_sgd_matches_geoopt(nesterov):
    ours, ref = ball_pair(3)
    opt = RiemannianSGD([ours], lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=nesterov)
    gopt = geoopt.optim.RiemannianSGD([ref], lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=nesterov)
    # geoopt starts its buffer as a copy of the first *Euclidean* gradient; torch (and we) start from zero
    gopt.state[ref]["momentum_buffer"] = torch.zeros_like(ref)
    for t in range(6):
        g = grads_for([ours], t, seed=3)[0]
        ours.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        gopt.step()
        torch.testing.assert_close(ours.detach(), ref.detach(), rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(
        opt.state[ours]["momentum_buffer"], gopt.state[ref]["momentum_buffer"], rtol=1e-4, atol=1e-6
    )


def test_ball_adam_matches_geoopt():
    ours, ref = ball_pair(4)
    opt = RiemannianAdam([ours], lr=0.02, betas=(0.9, 0.99), weight_decay=0.01)
    gopt = geoopt.optim.RiemannianAdam([ref], lr=0.02, betas=(0.9, 0.99), weight_decay=0.01)
    for t in range(6):
        g = grads_for([ours], t, seed=4)[0]
        ours.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        gopt.step()
        torch.testing.assert_close(ours.detach(), ref.detach(), rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(opt.state[ours]["exp_avg"], gopt.state[ref]["exp_avg"], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(
        opt.state[ours]["exp_avg_sq"].expand_as(ref), gopt.state[ref]["exp_avg_sq"], rtol=1e-4, atol=1e-9
    )


@pytest.mark.parametrize(
    "make", [lambda ps: RiemannianSGD(ps, lr=5.0, momentum=0.9), lambda ps: RiemannianAdam(ps, lr=1.0)]
)
def test_ball_points_stay_inside(make):
    p = tag_ball(nn.Parameter(ball_points(5, C, radius=0.95, dtype=torch.float32)), lambda: torch.tensor(C))
    d = tag_ball(nn.Parameter(torch.zeros(4)), lambda: torch.tensor(C))  # a single point, shape (D,)
    opt = make([p, d])
    run(opt, [p, d], 10, seed=5, scale=100.0)
    for q in (p, d):
        assert torch.isfinite(q).all()
        assert (C * q.detach().pow(2).sum(-1) < 1).all()


@pytest.mark.parametrize("make", [
    lambda ps: RiemannianSGD(ps, lr=0.3, momentum=0.9, weight_decay=0.01, max_grad_norm=0.5),
    lambda ps: RiemannianAdam(ps, lr=0.05, weight_decay=0.01),
])
def test_ball_batch_equals_one_by_one(make):
    # points of several tensors, dims and curvatures are updated as one batch of rows; each must move as if alone
    specs = [((6, 4), 0.7), ((4,), 1.3), ((2, 3, 4), 0.2), ((3, 5), 0.9), ((5,), 2.0)]

    def fresh():
        return [
            tag_ball(
                nn.Parameter(ball_points(i, c, shape, radius=0.8, dtype=torch.float32)), lambda c=c: torch.tensor(c)
            )
            for i, (shape, c) in enumerate(specs)
        ]

    together, alone = fresh(), fresh()
    opt = make(together)
    opts = [make([p]) for p in alone]
    for t in range(4):
        gs = grads_for(together, t, seed=11, scale=3.0)
        for p, q, g in zip(together, alone, gs):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        for o in opts:
            o.step()
    for p, q in zip(together, alone):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_learnable_curvature_is_read_at_step_time():
    u = nn.Parameter(torch.tensor(0.2))
    curv = lambda: F.softplus(u) + 1e-5  # noqa: E731
    x0 = ball_points(6, 1.0, radius=0.5, dtype=torch.float32)
    p = tag_ball(nn.Parameter(x0.clone()), curv)
    opt = RiemannianSGD([u, p], lr=0.1, momentum=0.0)
    for t in range(3):
        with torch.no_grad():
            u.add_(0.3)  # the curvature moves between steps, as when it is learned
        c = curv().detach()
        x = pm.project(p.detach(), c)
        g = grads_for([p], t, seed=6)[0]
        expected = pm.expmap(x, -0.1 * pm.egrad2rgrad(x, g, c), c)
        p.grad, u.grad = g, torch.tensor(5.0)  # u moves in the same step: the ball update must use c from before it
        opt.step()
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------------
# Sync-free skipping
# ---------------------------------------------------------------------------------------------------------------------
def mixed_params(dtype=torch.float32):
    e = euclid_params(7, dtype=dtype)
    b = tag_ball(nn.Parameter(ball_points(7, C, dtype=dtype)), lambda: torch.tensor(C))
    d = tag_ball(nn.Parameter(ball_points(8, C, shape=(3,), dtype=dtype)), lambda: torch.tensor(C))
    return e + [b, d]


MAKERS = [
    lambda ps: RiemannianSGD(ps, lr=0.05, momentum=0.9, weight_decay=0.01, max_grad_norm=1.0),
    lambda ps: RiemannianSGD(ps, lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True),
    lambda ps: RiemannianAdam(ps, lr=0.01, weight_decay=0.01),
]


@pytest.mark.parametrize("make", MAKERS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_skip_leaves_everything_unchanged(make, bad, dtype):
    params = mixed_params(dtype)
    opt = make(params)
    run(opt, params, 2, skip=torch.tensor(False))
    before_p, before_s = snapshot(params, opt)
    for p, g in zip(params, grads_for(params, 9)):
        g.view(-1)[0] = bad
        p.grad = g
    opt.step(skip=torch.tensor(True))
    after_p, after_s = snapshot(params, opt)
    assert_same(after_p, before_p)
    assert_same(after_s, before_s)


@pytest.mark.parametrize("make", MAKERS)
def test_skipped_first_step_is_invisible(make):
    a, b = mixed_params(), mixed_params()
    oa, ob = make(a), make(b)
    for p in a:
        p.grad = torch.full_like(p, float("nan"))
    oa.step(skip=torch.tensor(True))
    run(oa, a, 3, skip=torch.tensor(False))
    run(ob, b, 3)
    assert_same([p.detach() for p in a], [p.detach() for p in b])


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", MAKERS)
def test_state_dict_round_trip_with_weights_only(make):
    params = mixed_params()
    opt = make(params)
    run(opt, params, 3)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)

    twins = [nn.Parameter(p.detach().clone()) for p in params]
    for t in twins[-2:]:
        tag_ball(t, lambda: torch.tensor(C))
    opt2 = make(twins)
    opt2.param_groups[0]["lr"] = 123.0  # the checkpoint's values win
    opt2.load_state_dict(loaded)
    assert_same(opt2.state_dict(), opt.state_dict())
    run(opt, params, 3, seed=1)
    run(opt2, twins, 3, seed=1)
    assert_same([p.detach() for p in twins], [p.detach() for p in params])


# ---------------------------------------------------------------------------------------------------------------------
# Global clipping, factory, scale helper
# ---------------------------------------------------------------------------------------------------------------------
def test_clip_grad_norm_matches_torch_on_finite_grads():
    a, b = euclid_params(8), euclid_params(8)
    for p, q, g in zip(a, b, grads_for(a, 0, scale=3.0)):
        p.grad, q.grad = g.clone(), g.clone()
    n_ours = clip_grad_norm_(a, 1.0)
    n_ref = torch.nn.utils.clip_grad_norm_(b, 1.0)
    torch.testing.assert_close(n_ours, n_ref)
    for p, q in zip(a, b):
        torch.testing.assert_close(p.grad, q.grad)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_clip_grad_norm_nonfinite(bad):
    params = euclid_params(9)
    grads = grads_for(params, 0)
    for p, g in zip(params, grads):
        p.grad = g.clone()
    params[1].grad[0] = bad
    total = clip_grad_norm_(params, 1.0)
    assert not torch.isfinite(total)
    for i, (p, g) in enumerate(zip(params, grads)):
        if i != 1:
            assert torch.equal(p.grad, g)  # finite gradients are neither clipped nor poisoned
    assert clip_grad_norm_([nn.Parameter(torch.zeros(2))], 1.0).item() == 0.0  # no grads at all


def test_build_optimizer_and_scales():
    cfg = TrainConfig(momentum=0.8, weight_decay=0.01, risgd_max_grad_norm=2.0, adam_betas=[0.5, 0.9])
    sgd = build_optimizer("riemannian_sgd", euclid_params(0), 3e-4, cfg)
    assert isinstance(sgd, RiemannianSGD)
    assert sgd.param_groups[0]["momentum"] == 0.8 and sgd.param_groups[0]["max_grad_norm"] == 2.0
    adam = build_optimizer("riemannian_adam", euclid_params(0), 1e-4, cfg)
    assert isinstance(adam, RiemannianAdam) and adam.param_groups[0]["betas"] == (0.5, 0.9)
    with pytest.raises(ValueError):
        build_optimizer("lion", euclid_params(0), 1e-4, cfg)

    apply_lr_momentum_scales(sgd, 1.2, 0.95)
    apply_lr_momentum_scales(sgd, 1.2, 0.95)  # scales multiply the initial values: no compounding
    assert sgd.param_groups[0]["lr"] == pytest.approx(3.6e-4)
    assert sgd.param_groups[0]["momentum"] == pytest.approx(0.76)
    apply_lr_momentum_scales(adam, 0.8, 1.02)
    assert adam.param_groups[0]["lr"] == pytest.approx(0.8e-4) and "momentum" not in adam.param_groups[0]
