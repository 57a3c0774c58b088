"""The fused norm -> region FiLM -> activation of --compile_norms (models/normact.py): the pure function against the
modules in float64 (GroupNorm + SiLU, InstanceNorm + LeakyReLU), the switch against the eager blocks of the plain
backbone and the spatio-temporal D (outputs and every gradient), the layouts it brings, the CPU left eager."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import wubugen.models.normact as normact
from wubugen.config import build_config
from wubugen.inspect_cmd import random_clip, training_step_grads
from wubugen.models.discriminator import build_discriminator
from wubugen.models.layers import RegionFiLM, set_activation_checkpointing
from wubugen.models.normact import ACTIVATIONS, norm_film_act, set_fused_norms
from wubugen.models.vaegan import build_model
from wubugen.train.players import build_players, players_from_modules

CPU = torch.device("cpu")


@pytest.mark.parametrize("kind", ["group_silu", "instance_lrelu", "instance_plain_lrelu"])
@pytest.mark.parametrize("dim", [4, 5])
@pytest.mark.parametrize("film", [False, True])
def test_function_is_the_modules_in_float64(dim: int, film: bool, kind: str) -> None:
    g = torch.Generator().manual_seed(dim)
    shape = (2, 16, 3, 6, 5) if dim == 5 else (2, 16, 6, 5)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    if kind == "group_silu":
        norm, groups, act, module_act = nn.GroupNorm(8, 16), 8, "silu", nn.SiLU()
    else:
        inorm = nn.InstanceNorm3d if dim == 5 else nn.InstanceNorm2d
        norm, groups = inorm(16, affine=kind == "instance_lrelu"), 16
        act, module_act = "lrelu", nn.LeakyReLU(0.2)
    norm = norm.double()
    if norm.weight is not None:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5, generator=g)
            norm.bias.normal_(0, 0.3, generator=g)
    f = RegionFiLM(torch.rand(4, 6, 5, generator=g), 16, 32).double() if film else nn.Identity()
    if film:
        with torch.no_grad():
            f.net[-1].weight.normal_(0, 0.5, generator=g)  # away from the identity it starts at
    want = module_act(f(norm(x)))
    for training in (True, False):  # InstanceNorm without running statistics normalises alike in eval
        norm.train(training)
        torch.testing.assert_close(norm_film_act(x, norm, f, fused=False, act=act), want, rtol=1e-12, atol=1e-12)
    # by hand: per sample and group of 16 // groups channels, over all other positions
    xs = x.reshape(2, groups, -1)
    ref = ((xs - xs.mean(-1, keepdim=True)) / (xs.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()).reshape(shape)
    cshape = (1, 16) + (1,) * (dim - 2)
    if norm.weight is not None:
        ref = ref * norm.weight.reshape(cshape) + norm.bias.reshape(cshape)
    if film:
        gamma, beta = f.maps(dim)
        ref = ref * (1 + gamma) + beta
    ref = ref * torch.sigmoid(ref) if act == "silu" else torch.where(ref > 0, ref, 0.2 * ref)
    got = ACTIVATIONS[act](x, norm.weight, norm.bias, groups, norm.eps, *(f.maps(dim) if film else (None, None)))
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


def test_instance_norm_with_running_statistics_has_no_fused_form() -> None:
    with pytest.raises(TypeError, match="no fused form"):
        normact.norm_groups(nn.InstanceNorm3d(8, track_running_stats=True))


def _step(cfg, fused: bool, ckpt: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model, disc = build_model(cfg.model, cfg.geometry), build_discriminator(cfg.model, cfg.geometry)
    assert set_fused_norms(model, fused) == 2  # the plain encoder path and the generator
    assert set_fused_norms(disc, fused) == 1
    set_activation_checkpointing(model, ckpt)
    clip = random_clip(cfg, 2, torch.Generator().manual_seed(3))
    torch.manual_seed(1)
    training_step_grads(players_from_modules(cfg, CPU, model, disc), clip)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    grads.update({"disc." + n: p.grad.clone() for n, p in disc.named_parameters() if p.grad is not None})
    model.eval()
    disc.eval()
    with torch.no_grad():
        out = model(clip).recon
        logits = disc(out)
    return grads, out, logits


@pytest.mark.parametrize("ckpt", [False, True])
@pytest.mark.parametrize("film", [True, False])
def test_switch_keeps_outputs_and_every_gradient(film: bool, ckpt: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused blocks through torch.compile (aot_eager here: the traced graphs, without inductor's C++ build) give
    the eager blocks' outputs and gradients, model and D, with and without activation checkpointing and region FiLM
    (the generator's, and D's)."""
    monkeypatch.setattr(normact, "COMPILE_BACKEND", "aot_eager")
    monkeypatch.setattr(normact, "_FUSED", {})
    calls = []
    real = normact.norm_act_function

    def spy(fused: bool, act: str = "silu"):
        calls.append((fused, act))
        return real(fused, act)

    monkeypatch.setattr(normact, "norm_act_function", spy)
    cfg = build_config("tiny", overrides={"backbone": "plain", "gen_region_film": film, "image_h": 24, "image_w": 20,
                                          "wubu_dropout": 0.0, "disc_use_gaad_film_condition": film})
    eager, out_eager, logits_eager = _step(cfg, False, ckpt)
    assert calls == []
    fused, out_fused, logits_fused = _step(cfg, True, ckpt)
    assert {c[1] for c in calls} == {"silu", "lrelu"} and all(c[0] for c in calls)
    torch.testing.assert_close(out_fused, out_eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits_fused, logits_eager, rtol=1e-5, atol=1e-5)
    assert fused.keys() == eager.keys() and any(k.startswith("disc.") for k in eager)
    for name in eager:
        scale = eager[name].abs().max().item()
        torch.testing.assert_close(fused[name], eager[name], rtol=1e-4, atol=1e-5 * max(scale, 1e-6), msg=name)


def test_cpu_runs_stay_eager() -> None:
    """On the CPU inductor's C++ build costs minutes: --compile_norms is a CUDA option (its help says so)."""
    cfg = build_config("tiny", overrides={"backbone": "plain", "compile_norms": True})
    players = build_players(cfg, CPU)
    switches = [m.fused_norms for net in (players.model, players.disc) for m in net.modules() if hasattr(m, "fused_norms")]
    assert switches == [False, False, False]


@pytest.mark.slow
def test_inductor_twin_matches_eager(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What --compile_norms runs (inductor; here its CPU code, about a minute on a cold cache): one function for every
    block, shapes of two sizes, with and without FiLM, forward and backward."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(normact, "_FUSED", {})
    g = torch.Generator().manual_seed(0)
    # groups 8 (GroupNorm) and groups == channels (InstanceNorm, D: the group count changes with the width)
    for shape, film, act, groups in (((2, 16, 3, 8, 8), True, "silu", 8), ((2, 32, 3, 4, 4), True, "silu", 8),
                                     ((2, 16, 3, 8, 8), False, "silu", 8), ((2, 16, 3, 8, 8), False, "lrelu", 16),
                                     ((2, 32, 3, 4, 4), True, "lrelu", 32)):
        base = [torch.randn(*shape, generator=g), 1 + 0.1 * torch.randn(shape[1], generator=g),
                0.1 * torch.randn(shape[1], generator=g)]
        if film:
            base += [0.1 * torch.randn(1, shape[1], 1, *shape[3:], generator=g),
                     0.1 * torch.randn(1, shape[1], 1, *shape[3:], generator=g)]
        out, grads = {}, {}
        for fused in (False, True):
            xs = [b.clone().requires_grad_() for b in base]
            fn = normact.norm_act_function(fused, act)
            o = fn(xs[0], xs[1], xs[2], groups, 1e-5, *(xs[3:] or [None, None]))
            (o * o).sum().backward()
            out[fused], grads[fused] = o, [x.grad for x in xs]
        torch.testing.assert_close(out[True], out[False], rtol=1e-4, atol=1e-5)
        for a, b in zip(grads[True], grads[False]):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("compile_norms,backbone,dtype,want_model,want_disc", [
    (True, "plain", "spatio_temporal_cnn", True, True), (False, "plain", "spatio_temporal_cnn", False, False),
    (True, "wubu_gaad", "spatio_temporal_cnn", False, True), (True, "plain", "regional_cnn", True, False)])
def test_channels_last_weights_come_with_compiled_norms(compile_norms: bool, backbone: str, dtype: str,
                                                       want_model: bool, want_disc: bool) -> None:
    """On CUDA the compiled norms read channels-last maps as they are, so the conv weights of the networks whose norms
    are all compiled go channels-last with them (eager norms would copy every map: the wubu_gaad backbone's, the
    regional D's). The layout decision is made on a CUDA device; the tensors here are CPU ones."""
    from wubugen.train.speed import Precision, speed_layout

    cfg = build_config("tiny", overrides={"backbone": backbone, "compile_norms": compile_norms,
                                          "discriminator_type": dtype})
    model, disc = build_model(cfg.model, cfg.geometry), build_discriminator(cfg.model, cfg.geometry)
    x = random_clip(cfg, 1, torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        torch.manual_seed(2)
        before = model(x).recon
    speed_layout(cfg, model, disc, torch.device("cuda"), Precision(torch.bfloat16, "cuda"))
    for net, want, conv in ((model, want_model, nn.Conv3d), (disc, want_disc, nn.Conv3d if dtype != "regional_cnn"
                                                             else nn.Conv2d)):
        fmt = torch.channels_last_3d if conv is nn.Conv3d else torch.channels_last
        weights = [m.weight for m in net.modules() if isinstance(m, conv)]
        assert weights and all(w.is_contiguous(memory_format=fmt) for w in weights) == want
    with torch.no_grad():
        torch.manual_seed(2)
        torch.testing.assert_close(model(x).recon, before, rtol=1e-5, atol=1e-5)  # the layout, not the math


def test_posterior_noise_does_not_depend_on_the_layout() -> None:
    """Channels-last weights make the latent maps channels-last; the posterior's noise is drawn in logical order, so a
    run with --compile_norms samples what the same run without it samples (randn_like would follow the layout)."""
    from wubugen.models.vaegan import WuBuGAADHybridGen

    mu = torch.randn(2, 8, 3, 4, 5)
    logvar = torch.randn(2, 8, 3, 4, 5)
    torch.manual_seed(0)
    plain = WuBuGAADHybridGen.reparameterize(mu, logvar)
    torch.manual_seed(0)
    cl = WuBuGAADHybridGen.reparameterize(mu.contiguous(memory_format=torch.channels_last_3d),
                                          logvar.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(cl, plain, rtol=0, atol=0)
