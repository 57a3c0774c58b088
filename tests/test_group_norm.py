"""GroupNorm with chunked statistics (models/group_norm.py, --split_norm_stats): the pure function against
F.group_norm in float64 (values and every gradient, both memory layouts, 3- to 5-D maps), the module switch on the
plain backbone (the same outputs and gradients, every GroupNorm switched), and the trainer's option."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wubugen.config import build_config
from wubugen.models.group_norm import GroupNorm, group_norm_split, norm_chunks
from wubugen.models.layers import set_split_norm_stats
from wubugen.models.vaegan import build_model


@pytest.mark.parametrize("shape,groups", [((2, 16, 3, 8, 8), 8), ((2, 16, 3, 8, 8), 1), ((2, 6, 5, 12), 3),
                                          ((3, 8, 10), 4), ((1, 32, 2, 16, 6), 8), ((2, 8, 3, 7, 5), 2)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("affine", [False, True])
def test_equals_group_norm_in_float64(shape, groups, channels_last, affine):
    g = torch.Generator().manual_seed(len(shape) * 10 + groups)
    # a large mean: the variance must come from the parts' own spreads and their means' spread, not E[x^2] - E[x]^2
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 50
    if channels_last and x.dim() == 5:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_()
    w = torch.randn(shape[1], generator=g, dtype=torch.float64).requires_grad_() if affine else None
    b = torch.randn(shape[1], generator=g, dtype=torch.float64).requires_grad_() if affine else None
    want = F.group_norm(x, groups, w, b, 1e-5)
    got = group_norm_split(x, groups, w, b, 1e-5)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert got.dtype == torch.float64 and got.shape == x.shape
    gy = torch.randn(shape, generator=g, dtype=torch.float64)
    leaves = [t for t in (x, w, b) if t is not None]
    for a, c in zip(torch.autograd.grad(want, leaves, gy), torch.autograd.grad(got, leaves, gy)):
        torch.testing.assert_close(c, a, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("chunks", [1, 2, 4, 8])
def test_any_chunk_count_gives_the_same_function(chunks):
    x = torch.randn(2, 16, 3, 8, 4, dtype=torch.float64)
    torch.testing.assert_close(group_norm_split(x, 4, None, None, 1e-6, chunks=chunks),
                               F.group_norm(x, 4, eps=1e-6), rtol=1e-12, atol=1e-12)


def test_chunk_count_and_refusals():
    assert [norm_chunks(h) for h in (256, 64, 24, 12, 7, 2)] == [16, 16, 8, 4, 1, 2]
    with pytest.raises(ValueError, match="chunks"):
        group_norm_split(torch.randn(1, 4, 6, 6), 2, None, None, 1e-5, chunks=4)
    with pytest.raises(ValueError, match="groups"):
        group_norm_split(torch.randn(1, 6, 4, 4), 4, None, None, 1e-5)


def test_low_precision_input_keeps_its_dtype_and_the_statistics_are_fp32():
    x = (torch.randn(2, 16, 3, 8, 8) * 2 + 100).bfloat16()
    got = group_norm_split(x, 8, None, None, 1e-5)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), F.group_norm(x.double(), 8, eps=1e-5).float(), rtol=0.02, atol=0.02)


def test_switch_runs_inside_compiled_graphs_only_and_changes_no_output_or_gradient(monkeypatch):
    """On, the plain backbone's GroupNorms take the chunked form while torch.compile traces them (aot_eager here) and
    GroupNorm's own kernel in eager calls (validation, sampling); outputs and gradients are the ones without it."""
    import wubugen.models.group_norm as gn

    calls = []
    monkeypatch.setattr(gn, "group_norm_split", lambda *a, **k: calls.append(1) or group_norm_split(*a, **k))
    cfg = build_config("tiny", overrides={"backbone": "plain"})
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.geometry)
    n_norms = sum(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    assert n_norms >= 4 and all(isinstance(m, GroupNorm) for m in model.modules() if isinstance(m, torch.nn.GroupNorm))
    clip = torch.rand(2, cfg.window_frames, 3, cfg.data.image_h, cfg.data.image_w) * 2 - 1
    results = []
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", dynamic=False)
    for on, net in ((False, model), (True, model), (True, compiled)):
        assert set_split_norm_stats(model, on) == n_norms
        model.zero_grad()
        calls.clear()
        torch.manual_seed(1)
        out = net(clip, None)
        (out.recon.square().mean() + out.mu.square().mean()).backward()
        results.append((out.recon.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None],
                        len(calls)))
    torch._dynamo.reset()
    (r0, g0, c0), (r1, g1, c1), (r2, g2, c2) = results
    assert c0 == 0 and c1 == 0, "eager calls keep GroupNorm's kernel"
    assert c2 >= n_norms, "every GroupNorm takes the chunked form in the compiled graph"
    for r, g in ((r1, g1), (r2, g2)):
        torch.testing.assert_close(r, r0, rtol=1e-4, atol=1e-5)
        assert len(g) == len(g0)
        for a, c in zip(g0, g):
            torch.testing.assert_close(c, a, rtol=1e-3, atol=1e-5)


def test_trainer_option_switches_every_group_norm():
    from wubugen.train.players import build_players

    cfg = build_config("tiny", overrides={"backbone": "plain", "split_norm_stats": True})
    players = build_players(cfg, torch.device("cpu"))
    # the model's (D normalises with InstanceNorm)
    norms = [m for net in (players.model, players.disc) for m in net.modules() if isinstance(m, GroupNorm)]
    assert norms and all(m.split_stats for m in norms)
