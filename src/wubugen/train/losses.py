"""The VAE-GAN losses, every weight named (the guide's lambda_recon, lambda_kl, lambda_gan).

All losses are computed in float32. D loss = mean of its real and fake terms (pure guessing gives ln 2 with BCE).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def recon_loss(recon: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over all elements, in the [-1, 1] range (the guide's `Rec`)."""
    return F.mse_loss(recon.float(), target.float())


def kl_loss(mu: Tensor, logvar: Tensor, reduction: str = "mean") -> Tensor:
    """KL(q || N(0, I)) per sample, averaged over the batch.

    `sum` is the guide's definition (summed over latent dimensions). `mean` averages over latent elements instead, so a
    lambda_kl means the same for any latent shape: with thousands of latent values a summed KL at the guide's 'critically
    low' 1e-4 already caps reconstruction quality (reference/BASELINES.md).
    """
    mu, logvar = mu.float().flatten(1), logvar.float().flatten(1)
    per_elem = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())
    per_sample = per_elem.sum(1) if reduction == "sum" else per_elem.mean(1)
    return per_sample.mean()


def d_loss(real_logits: Tensor, fake_logits: Tensor, kind: str = "bce") -> tuple[Tensor, Tensor, Tensor]:
    """-> (total, real term, fake term); total = (real + fake) / 2."""
    real_logits, fake_logits = real_logits.float(), fake_logits.float()
    if kind == "bce":
        real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
        fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    elif kind == "hinge":
        real = F.relu(1 - real_logits).mean()
        fake = F.relu(1 + fake_logits).mean()
    elif kind == "lsgan":
        real = (real_logits - 1).pow(2).mean()
        fake = fake_logits.pow(2).mean()
    else:
        raise ValueError(f"unknown GAN loss {kind!r}")
    return 0.5 * (real + fake), real, fake


def g_adv_loss(fake_logits: Tensor, kind: str = "bce") -> Tensor:
    """The generator's adversarial term (non-saturating for BCE)."""
    fake_logits = fake_logits.float()
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    if kind == "hinge":
        return -fake_logits.mean()
    if kind == "lsgan":
        return (fake_logits - 1).pow(2).mean()
    raise ValueError(f"unknown GAN loss {kind!r}")
