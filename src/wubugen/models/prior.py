"""A Gaussian fitted to the aggregate posterior: where prior samples come from when N(0, I) is not where the latents are.

A VAE trained for reconstruction (the guide's Phase 1-2, a KL weight far below the reconstruction weight) leaves its
posterior far from N(0, I): at lambda_kl 1e-4 the KL is about 4 nats per latent value, so decoding N(0, I) draws gives
texture noise (docs/results.md). Ex-post density estimation (Ghosh et al. 2020, "From variational to deterministic
autoencoders") samples the decoder from a density fitted to the latents of training clips instead. This one is a
probabilistic-PCA-like Gaussian: the mean, the top `rank` principal directions with their variances, and a per-value
residual variance so that every latent value keeps its own total variance.

    z = mean + (eps_k * sqrt(eigenvalues)) @ components + sqrt(residual_var) * eps_d

Pure tensor functions; `eval/prior.py` encodes footage, stores and reloads the fit.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class LatentPrior:
    """mean (D,), components (k, D) orthonormal rows, eigenvalues (k,), residual_var (D,); D = the flattened latent."""
    mean: Tensor
    components: Tensor
    eigenvalues: Tensor
    residual_var: Tensor

    @property
    def dim(self) -> int:
        return self.mean.numel()

    @property
    def rank(self) -> int:
        return self.eigenvalues.numel()

    def tensors(self) -> dict[str, Tensor]:
        return {"mean": self.mean, "components": self.components, "eigenvalues": self.eigenvalues,
                "residual_var": self.residual_var}

    @classmethod
    def from_tensors(cls, t: dict[str, Tensor]) -> LatentPrior:
        missing = [k for k in ("mean", "components", "eigenvalues", "residual_var") if k not in t]
        if missing:
            raise ValueError(f"a latent prior needs {', '.join(missing)}")
        prior = cls(t["mean"], t["components"], t["eigenvalues"], t["residual_var"])
        d, k = prior.dim, prior.rank
        if prior.components.shape != (k, d) or prior.residual_var.shape != (d,):
            raise ValueError(f"inconsistent latent prior shapes: mean {tuple(prior.mean.shape)}, components "
                             f"{tuple(prior.components.shape)}, eigenvalues {tuple(prior.eigenvalues.shape)}, "
                             f"residual_var {tuple(prior.residual_var.shape)}")
        return prior

    def covariance(self) -> Tensor:
        """(D, D): the covariance the samples have (components' part plus the diagonal residual)."""
        c = self.components.double()
        return c.T @ (self.eigenvalues.double()[:, None] * c) + torch.diag(self.residual_var.double())


def fit_latent_prior(z: Tensor, rank: int) -> LatentPrior:
    """z (N, D) latents of N clips -> the Gaussian above, computed in float64. rank is capped at min(N - 1, D)."""
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"need latents (N >= 2, D), got {tuple(z.shape)}")
    x = z.detach().double().cpu()
    n, d = x.shape
    k = max(0, min(rank, n - 1, d))
    mean = x.mean(0)
    centred = x - mean
    total_var = centred.pow(2).sum(0) / (n - 1)
    if k:
        # thin SVD of the centred data: right singular vectors are the covariance's eigenvectors, S^2/(N-1) its values
        _, s, vh = torch.linalg.svd(centred, full_matrices=False)
        components, eigenvalues = vh[:k], s[:k].pow(2) / (n - 1)
        explained = (components.pow(2) * eigenvalues[:, None]).sum(0)
    else:
        components, eigenvalues, explained = x.new_zeros(0, d), x.new_zeros(0), torch.zeros_like(total_var)
    residual = (total_var - explained).clamp_min(0.0)
    return LatentPrior(mean.float(), components.float(), eigenvalues.float(), residual.float())


def sample_latent_prior(prior: LatentPrior, eps_k: Tensor, eps_d: Tensor) -> Tensor:
    """Standard-normal draws eps_k (N, k) and eps_d (N, D) -> latents (N, D) with the prior's mean and covariance.
    The draws come from the caller, so a fixed seed gives the same samples on any device."""
    p = prior
    scaled = eps_k.float() * p.eigenvalues.sqrt()[None]
    return p.mean[None] + scaled @ p.components + eps_d.float() * p.residual_var.sqrt()[None]


def draw_latents(prior: LatentPrior, num: int, generator: torch.Generator | None = None) -> Tensor:
    """num latents (num, D), their noise from `generator` on the CPU (the same samples on any device)."""
    eps_k = torch.randn((num, prior.rank), generator=generator)
    eps_d = torch.randn((num, prior.dim), generator=generator)
    return sample_latent_prior(prior, eps_k, eps_d)


def prior_noise(prior: LatentPrior | None, num: int, shape: tuple[int, ...],
                generator: torch.Generator | None = None) -> Tensor:
    """num latents of `shape` (num, *shape) from the fitted prior, or from N(0, I) without one; the noise comes from
    `generator` on the CPU."""
    if prior is None:
        return torch.randn((num, *shape), generator=generator)
    return draw_latents(prior, num, generator).reshape(num, *shape)
