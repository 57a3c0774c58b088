"""The step's two backwards: the gradients each player gets are those of its own loss, whatever order they run in."""
from __future__ import annotations

import pytest
import torch

from wubugen.config import build_config
from wubugen.models.discriminator import build_discriminator
from wubugen.models.vaegan import build_model
from wubugen.train.losses import LOSS_KEYS, adaptive_gan_weight, d_loss, g_adv_loss, kl_loss, recon_loss
from wubugen.train.players import players_from_modules
from wubugen.train.step import players_forward_backward


@pytest.mark.parametrize("weighting", ["fixed", "adaptive"])
def test_each_player_gets_exactly_the_gradient_of_its_own_loss(weighting):
    # spectral norm off and no dropout: both orders of the passes then compute the same numbers
    cfg = build_config("tiny", overrides={"disc_apply_spectral_norm": False, "wubu_dropout": 0.0,
                                          "gan_weighting": weighting})
    torch.manual_seed(0)
    model, disc = build_model(cfg.model, cfg.geometry), build_discriminator(cfg.model, cfg.geometry)
    clip = torch.rand(2, cfg.window_frames, cfg.data.num_channels, cfg.data.image_h, cfg.data.image_w) * 2 - 1
    g_params = [p for p in model.parameters() if p.requires_grad]
    d_params = list(disc.parameters())
    t, lam = cfg.train, 3e-3

    torch.manual_seed(1)  # the posterior noise
    losses = players_forward_backward(players_from_modules(cfg, torch.device("cpu"), model, disc), clip, None, lam,
                                      True).losses
    got_g = [p.grad.clone() for p in g_params]
    got_d = [p.grad.clone() for p in d_params]

    torch.manual_seed(1)
    out = model(clip, None)
    adv = g_adv_loss(disc(out.recon), t.gan_loss)
    rec = t.lambda_recon * recon_loss(out.recon, out.target)
    weight = torch.tensor(t.lambda_gan)
    if weighting == "adaptive":  # taming's ratio of the two terms' gradient norms where they meet (the output)
        g_rec, = torch.autograd.grad(rec, out.recon, retain_graph=True)
        g_adv, = torch.autograd.grad(adv, out.recon, retain_graph=True)
        weight = t.lambda_gan * (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0, t.adaptive_weight_max).detach()
    loss_g = rec + lam * kl_loss(out.mu, out.logvar, cfg.model.kl_reduction) + weight * adv
    ref_g = torch.autograd.grad(loss_g, g_params)
    real, fake = disc(torch.cat([out.target, out.recon.detach()], 0)).chunk(2, 0)
    loss_d = d_loss(real, fake, t.gan_loss)[0]
    ref_d = torch.autograd.grad(loss_d, d_params)

    assert torch.allclose(losses[3], loss_g.detach(), rtol=1e-5) and torch.allclose(losses[4], loss_d.detach(), rtol=1e-5)
    assert torch.allclose(losses[LOSS_KEYS.index("gan_weight")], weight.float(), rtol=1e-5)
    for a, b in zip(got_g + got_d, list(ref_g) + list(ref_d)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    assert all(p.requires_grad for p in d_params)  # D's parameters are trainable again after G's pass


def test_adaptive_weight_balances_the_two_gradients():
    """w * |grad Adv| = lambda_gan * |grad Rec| at the output, clamped to [0, max]; zero adversarial gradient: no NaN."""
    rec_grad, adv_grad = torch.full((4, 3), 2.0), torch.full((4, 3), 0.5)
    w = adaptive_gan_weight(rec_grad, adv_grad, lambda_gan=0.5, max_weight=1e4)
    assert torch.allclose(w * adv_grad.norm(), 0.5 * rec_grad.norm(), rtol=1e-3)
    assert float(adaptive_gan_weight(rec_grad, adv_grad, 1.0, max_weight=2.0)) == 2.0
    assert torch.isfinite(adaptive_gan_weight(rec_grad, torch.zeros(4, 3), 1.0, 1e4))
