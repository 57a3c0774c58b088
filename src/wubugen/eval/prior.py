"""The aggregate-posterior prior of a trained model (models/prior.py): fitted on the latents of its training footage,
stored beside the checkpoint's weights and reused, so `wubugen sample` decodes latents from where the encoder puts
them instead of from N(0, I).

    <checkpoint step dir>/latent_prior.safetensors   mean, components, eigenvalues, residual_var; metadata: how it
                                                      was fitted (windows, rank, footage), checked before reuse
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import Tensor

from wubugen.config import Config
from wubugen.errors import UserError
from wubugen.media import atomic_write_bytes
from wubugen.models.prior import LatentPrior, fit_latent_prior

PRIOR_FILE = "latent_prior.safetensors"
ENCODE_BATCH = 32


def footage_of(cfg: Config, data_path: str | None) -> str:
    """The footage a prior is fitted on: the given path, else the run's training footage ('demo' for the built-in)."""
    return data_path or cfg.data.video_data_path or "demo"


@torch.no_grad()
def encode_latents(cfg: Config, model, device: torch.device, data_path: str | None, windows: int,
                   autocast) -> Tensor:
    """Latents z ~ q(z | x) (one draw each) of `windows` training windows spread evenly over the footage.
    -> (N, D) float32 on the CPU"""
    from wubugen.data import build_datasets

    path = data_path or cfg.data.video_data_path
    dcfg = dataclasses.replace(cfg.data, video_data_path=path, validation_video_path=None,
                               validation_split_fraction=0.0, augment_flip=False, augment_random_crop=False)
    try:
        ds = build_datasets(dataclasses.replace(cfg, data=dcfg)).train
    except UserError as e:  # the footage's own one-line reason (a moved path, no frames, ...) and what to do here
        raise UserError(f"the latent prior could not be fitted on {footage_of(cfg, data_path)} ({e}); give "
                        "--prior_data PATH or --prior normal") from e
    if len(ds) < 2:
        raise UserError(f"{footage_of(cfg, data_path)} has {len(ds)} window(s); the latent prior needs at least 2")
    model.eval()
    return encode_dataset(model, ds, windows, device, autocast, cfg.train.seed)


@torch.no_grad()
def encode_dataset(model, ds, windows: int, device: torch.device, autocast, seed: int) -> Tensor:
    """z ~ q(z | x) of up to `windows` windows of `ds` (uint8 (T, C, H, W) items), evenly spaced; the model in the
    mode the caller set. -> (N, D) float32 on the CPU"""
    from wubugen.data import to_model_range

    n = min(windows, len(ds))
    idx = torch.linspace(0, len(ds) - 1, n).round().long().unique().tolist()
    g = torch.Generator().manual_seed(seed + 23)
    out = []
    for start in range(0, len(idx), ENCODE_BATCH):
        clip = torch.stack([ds[i] for i in idx[start:start + ENCODE_BATCH]])
        enc, _ = model.split(to_model_range(clip.to(device)))
        with autocast():
            mu, logvar, _ = model.encode(enc)
        mu, logvar = mu.float().cpu(), logvar.float().cpu()
        out.append((mu + torch.randn(mu.shape, generator=g) * (0.5 * logvar).exp()).flatten(1))
    return torch.cat(out)


def _meta(windows: int, rank: int, footage: str) -> dict[str, str]:
    return {"windows": str(windows), "rank": str(rank), "footage": footage}


def load_prior(step_dir: Path, windows: int, rank: int, footage: str) -> LatentPrior | None:
    """The stored fit when it was made the same way, else None."""
    path = step_dir / PRIOR_FILE
    if not path.is_file():
        return None
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}) != _meta(windows, rank, footage):
                return None
            return LatentPrior.from_tensors({k: f.get_tensor(k) for k in f.keys()})
    except (safetensors.SafetensorError, OSError, ValueError):
        return None  # unreadable or foreign: fitted again and rewritten


def prior_for(cfg: Config, model, device: torch.device, step_dir: Path, *, data_path: str | None = None,
              windows: int = 256, rank: int = 128, autocast, log=print) -> LatentPrior:
    """The checkpoint's aggregate-posterior prior: reused from `step_dir` when stored with these settings, else
    fitted (one encoder pass over `windows` windows) and stored atomically beside the weights."""
    footage = footage_of(cfg, data_path)
    prior = load_prior(step_dir, windows, rank, footage)
    if prior is not None:
        return prior
    z = encode_latents(cfg, model, device, data_path, windows, autocast)
    latent = math.prod(model.latent_shape())
    if z.shape[1] != latent:
        raise RuntimeError(f"encoded latents have {z.shape[1]} values, the model's latent {latent}")
    prior = fit_latent_prior(z, rank)
    blob = safetensors.torch.save({k: v.contiguous() for k, v in prior.tensors().items()},
                                  metadata=_meta(windows, rank, footage))
    where = f"stored as {step_dir / PRIOR_FILE}"
    try:
        atomic_write_bytes(step_dir / PRIOR_FILE, blob)
    except OSError as e:  # a read-only checkpoint still samples; the fit is just not kept
        where = f"not stored: {e.strerror or e} in {step_dir}; fitted again next time"
    log(f"latent prior: fitted on {z.shape[0]} windows of {footage} (rank {prior.rank} of {prior.dim} values; {where})")
    return prior
