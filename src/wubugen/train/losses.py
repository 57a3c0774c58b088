"""The VAE-GAN objective as one module, in the spirit of taming-transformers' `LPIPSWithDiscriminator`: it owns every
named weight (the guide's lambda_recon, lambda_kl, lambda_gan), the GAN's kind and start step, and the loss keys; the
training step only orders the passes and calls `generator` and `discriminator` here.

All losses are computed in float32. D loss = mean of its real and fake terms (pure guessing gives ln 2 with BCE).
lambda_kl is passed per call, not held: the Q-controller and the phase plan change it during a run (and a captured CUDA
graph reads it from a device tensor).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from wubugen.config import Config

# the order of the step's loss vector: every tracker key is "train/" + one of these (gan_weight: the adversarial
# term's weight in G's loss that step, 0 while it is off)
LOSS_KEYS = ("loss_recon", "loss_kl", "loss_g_adv", "loss_g_total", "loss_d_total", "loss_d_real", "loss_d_fake",
             "gan_weight")
ADAPTIVE_EPS = 1e-4  # taming's: keeps the weight finite when the adversarial gradient vanishes


def recon_loss(recon: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over all elements, in the [-1, 1] range (the guide's `Rec`)."""
    return F.mse_loss(recon.float(), target.float())


def kl_loss(mu: Tensor, logvar: Tensor, reduction: str = "mean") -> Tensor:
    """KL(q || N(0, I)) per sample, averaged over the batch.

    `sum` is the guide's definition (summed over latent dimensions). `mean` averages over latent elements instead, so a
    lambda_kl means the same for any latent shape: with thousands of latent values a summed KL at the guide's 'critically
    low' 1e-4 already caps reconstruction quality (docs/results.md).
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


@dataclass
class GeneratorTerms:
    """The generator's objective for one micro-batch: `total` (what is backpropagated, or its value when the step
    backpropagates it through the reconstruction's gradient), the terms, and the adversarial term's weight."""

    total: Tensor
    recon: Tensor
    kl: Tensor
    adv: Tensor
    gan_weight: Tensor


def adaptive_gan_weight(rec_grad: Tensor, adv_grad: Tensor, lambda_gan: float, max_weight: float) -> Tensor:
    """taming-transformers' adaptive weight: lambda_gan * ||grad of the weighted reconstruction term|| /
    (||grad of the adversarial term|| + eps), clamped to [0, max_weight], both gradients taken at the same place in the
    generator (here its output, which the two terms share). The adversarial gradient then enters the generator with a
    lambda_gan share of the reconstruction gradient's size, whatever the optimizer, batch or the losses' scales."""
    ratio = torch.linalg.vector_norm(rec_grad.float()) / (torch.linalg.vector_norm(adv_grad.float()) + ADAPTIVE_EPS)
    return (lambda_gan * ratio.clamp(0.0, max_weight)).detach()


@dataclass
class DiscriminatorTerms:
    total: Tensor
    real: Tensor
    fake: Tensor


class VAEGANLoss:
    """Every weight of the objective, in one place.

    G: lambda_recon * Rec + lambda_kl * KL [+ lambda_gan * Adv once the adversarial term is on]
    D: (real + fake) / 2 of the GAN kind's loss on [real target; detached reconstruction]
    """

    def __init__(self, cfg: Config, device: torch.device | str = "cpu"):
        t = cfg.train
        self.lambda_recon = t.lambda_recon
        self.lambda_gan = t.lambda_gan
        # a factor on the adversarial term that the health monitor's remedy may lower for a while (train/health.py):
        # a device tensor, so a captured CUDA graph reads its current value; at 1 the objective is bit for bit the same
        self.gan_scale = torch.ones((), device=device)
        self.gan_kind = t.gan_loss
        self.gan_start_step = t.gan_start_step
        self.adaptive = t.gan_weighting == "adaptive"
        self.adaptive_max = t.adaptive_weight_max
        self.kl_reduction = cfg.model.kl_reduction

    def adversarial_on(self, step: int) -> bool:
        """Whether G's adversarial term is on at this optimizer step (D trains from the start)."""
        return step >= self.gan_start_step

    def generator(self, recon: Tensor, target: Tensor, mu: Tensor, logvar: Tensor, fake_logits: Tensor,
                  lambda_kl: float | Tensor, adv_on: bool) -> GeneratorTerms:
        """recon, target (B, T, C, H, W); mu, logvar the posterior; fake_logits D's logits of recon (through a frozen D).
        The adversarial term is computed (and logged) even while it is off. With the adaptive weight, `total` holds
        the objective's value and the step backpropagates it through `backward_adaptive`."""
        rec = recon_loss(recon, target)
        kl = kl_loss(mu, logvar, self.kl_reduction)
        adv = g_adv_loss(fake_logits, self.gan_kind)
        total = self.lambda_recon * rec + lambda_kl * kl
        weight = torch.zeros((), device=rec.device)
        if adv_on and self.adaptive:
            return GeneratorTerms(total, rec, kl, adv, weight)  # the weight needs the gradients: backward_adaptive
        if adv_on:
            total = total + self.lambda_gan * (adv * self.gan_scale)
            weight = weight + self.lambda_gan * self.gan_scale
        return GeneratorTerms(total, rec, kl, adv, weight)

    def backward_adaptive(self, g: GeneratorTerms, recon: Tensor, lambda_kl: float | Tensor,
                          scale: Callable[[Tensor], Tensor]) -> GeneratorTerms:
        """Backpropagate lambda_recon * Rec + lambda_kl * KL + w * Adv with the adaptive w, in one generator backward:
        both terms' gradients at `recon` first (the adversarial one through D, once), then recon's total gradient and
        the KL term into the encoder and generator together. `scale` maps a loss (or gradient) to what is
        backpropagated (loss scaling, accumulation). -> the terms with the weight and the total filled in."""
        rec_term = self.lambda_recon * g.recon
        rec_grad, = torch.autograd.grad(rec_term, recon, retain_graph=True)
        # D's part of the graph is walked once, here, and not kept: a compiled D's backward (torch.compile donates its
        # buffers) refuses to be retained; the backward below starts at recon and never enters it again
        adv_grad, = torch.autograd.grad(g.adv, recon)
        w = adaptive_gan_weight(rec_grad, adv_grad, self.lambda_gan, self.adaptive_max) * self.gan_scale
        kl_term = lambda_kl * g.kl
        torch.autograd.backward([recon, scale(kl_term)], [scale(rec_grad + w.to(adv_grad.dtype) * adv_grad), None])
        total = (rec_term + kl_term + w * g.adv).detach()
        return GeneratorTerms(total, g.recon, g.kl, g.adv, w)

    def discriminator(self, real_logits: Tensor, fake_logits: Tensor) -> DiscriminatorTerms:
        total, real, fake = d_loss(real_logits, fake_logits, self.gan_kind)
        return DiscriminatorTerms(total, real, fake)

    @staticmethod
    def log_vector(g: GeneratorTerms, d: DiscriminatorTerms) -> Tensor:
        """The step's losses in LOSS_KEYS order, detached (read on the host only at log intervals)."""
        return torch.stack([g.recon, g.kl, g.adv, g.total, d.total, d.real, d.fake, g.gan_weight]).detach()
