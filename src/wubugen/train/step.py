"""One optimizer step of the VAE-GAN: micro-batches, both players, clipping, and the non-finite guard. No host syncs.

Per micro-batch there is ONE generator forward (SPEC D15 fixed). Its output is reused:
  * detached, for D on the concatenation [real target; fake] in a single forward (one spectral-norm power iteration and
    one set of DDP buffers per step, FIELD §4 #10), so real and fake are the same time positions (SPEC D14 fixed);
  * with gradient, for the generator's adversarial term through a frozen, unwrapped D (its weights get no gradient and
    its DDP reducer expects none).
D's adversarial gradient for G is taken against the pre-update D, as in the original (a simultaneous update).

A step whose losses or gradients are non-finite is skipped as a whole on the device (parameters, moments and EMA stay
bit-identical; see optim.py) and counted; the trainer reads the counters at its health interval.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from wubugen.config import Config
from wubugen.data import to_model_range
from wubugen.train.losses import d_loss, g_adv_loss, kl_loss, recon_loss
from wubugen.train.optim import clip_grad_norm_

LOSS_KEYS = ("loss_recon", "loss_kl", "loss_g_adv", "loss_g_total", "loss_d_total", "loss_d_real", "loss_d_fake")


@dataclass
class Precision:
    """Autocast dtype (None: fp32) and whether fp16 loss scaling is on."""

    dtype: torch.dtype | None
    device_type: str

    @property
    def scaled(self) -> bool:
        return self.dtype == torch.float16

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def resolve_precision(cfg: Config, device: torch.device) -> Precision:
    p = cfg.train.precision
    if p == "auto":
        p = "bf16" if device.type == "cuda" else "fp32"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[p]
    if dtype == torch.float16 and device.type != "cuda":
        dtype = None  # fp16 autocast is a CUDA feature; the CPU runs fp32 (said once by the trainer)
    return Precision(dtype, device.type)


def _no_sync(module: nn.Module, sync: bool):
    if not sync and hasattr(module, "no_sync"):
        return module.no_sync()
    return contextlib.nullcontext()


def _set_requires_grad(params: list[nn.Parameter], flag: bool) -> None:
    for p in params:
        p.requires_grad_(flag)


class EMA:
    """Exponential moving average of the generator's weights (validation and sampling use it when enabled)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.params = [p.detach().clone() for p in model.parameters()]

    @torch.no_grad()
    def update(self, model: nn.Module, keep: Tensor) -> None:
        live = [p.detach() for p in model.parameters()]
        diff = torch._foreach_sub(live, self.params)
        torch._foreach_mul_(diff, keep * (1.0 - self.decay))  # keep = 0 on a skipped step: no change
        torch._foreach_add_(self.params, diff)

    def state_dict(self) -> dict[str, Tensor]:
        return {str(i): p for i, p in enumerate(self.params)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for i, p in enumerate(self.params):
            p.copy_(state[str(i)])

    @contextlib.contextmanager
    def swapped_into(self, model: nn.Module):
        """Temporarily put the EMA weights into `model` (for validation and sampling)."""
        backup = [p.detach().clone() for p in model.parameters()]
        with torch.no_grad():
            for p, e in zip(model.parameters(), self.params):
                p.copy_(e)
        try:
            yield model
        finally:
            with torch.no_grad():
                for p, b in zip(model.parameters(), backup):
                    p.copy_(b)


class StepRunner:
    """Holds the two players and their optimizers; `run` performs one optimizer step over k micro-batches."""

    def __init__(self, cfg: Config, model: nn.Module, disc: nn.Module, model_ddp: nn.Module, disc_ddp: nn.Module,
                 opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, precision: Precision,
                 device: torch.device, ema: EMA | None = None):
        self.cfg = cfg
        self.model, self.disc = model, disc
        self.model_ddp, self.disc_ddp = model_ddp, disc_ddp
        self.opt_g, self.opt_d = opt_g, opt_d
        self.precision = precision
        self.device = device
        self.ema = ema
        self.g_params = [p for p in model.parameters() if p.requires_grad]
        self.d_params = [p for p in disc.parameters() if p.requires_grad]
        scaled = precision.scaled
        self.scaler_g = torch.amp.GradScaler(device.type, enabled=scaled)
        self.scaler_d = torch.amp.GradScaler(device.type, enabled=scaled)
        self.channels_last = cfg.train.channels_last and device.type == "cuda"
        # device-side counters, read by the trainer at its health interval
        self.nonfinite_steps = torch.zeros((), dtype=torch.int64, device=device)
        self.consecutive_nonfinite = torch.zeros((), dtype=torch.int64, device=device)

    def prepare(self, batch: Tensor) -> Tensor:
        """uint8 (B, T, C, H, W) on the host -> float [-1, 1] on the device (normalisation on the device)."""
        clip = to_model_range(batch.to(self.device, non_blocking=True))
        if self.channels_last:
            b, t = clip.shape[:2]
            clip = clip.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (b, t))
        return clip

    def prepare_flow(self, flow: Tensor | None) -> Tensor | None:
        """Motion branch: cached float16 flows (B, T_enc - 1, 2, H, W) on the host -> the device (the motion encoder
        reduces them in float32/64), or None (the model computes flow itself)."""
        return None if flow is None else flow.to(self.device, non_blocking=True)

    def run(self, batches: list[Tensor], lambda_kl: float, adv_on: bool, flows: list[Tensor | None] | None = None
            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One optimizer step. -> (mean losses (7,) in LOSS_KEYS order, skipped flag, G grad norm, D grad norm),
        all device tensors (nothing is read on the host here)."""
        t = self.cfg.train
        k = len(batches)
        flows = flows or [None] * k
        sums = torch.zeros(len(LOSS_KEYS), device=self.device)
        for i, (batch, flow) in enumerate(zip(batches, flows)):
            last = i == k - 1
            clip = self.prepare(batch)
            with _no_sync(self.model_ddp, last), _no_sync(self.disc_ddp, last):
                with self.precision.autocast():
                    out = self.model_ddp(clip, self.prepare_flow(flow))
                    logits = self.disc_ddp(torch.cat([out.target, out.recon.detach()], 0))
                real_logits, fake_logits = logits.chunk(2, 0)
                loss_d, loss_d_real, loss_d_fake = d_loss(real_logits, fake_logits, t.gan_loss)
                self.scaler_d.scale(loss_d / k).backward()

                loss_recon = recon_loss(out.recon, out.target)
                loss_kl = kl_loss(out.mu, out.logvar, self.cfg.model.kl_reduction)
                loss_g = t.lambda_recon * loss_recon + lambda_kl * loss_kl
                _set_requires_grad(self.d_params, False)
                with self.precision.autocast():
                    adv_logits = self.disc(out.recon)
                loss_adv = g_adv_loss(adv_logits, t.gan_loss)
                if adv_on:
                    loss_g = loss_g + t.lambda_gan * loss_adv
                self.scaler_g.scale(loss_g / k).backward()
                _set_requires_grad(self.d_params, True)
            sums += torch.stack([loss_recon, loss_kl, loss_adv, loss_g, loss_d, loss_d_real, loss_d_fake]).detach()
        sums /= k
        return (sums, *self._apply(sums))

    def _apply(self, losses: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        t = self.cfg.train
        if self.precision.scaled:
            self.scaler_d.unscale_(self.opt_d)
            self.scaler_g.unscale_(self.opt_g)
        inf = float("inf")
        gn_d = clip_grad_norm_(self.d_params, t.global_max_grad_norm if t.global_max_grad_norm > 0 else inf)
        gn_g = clip_grad_norm_(self.g_params, t.global_max_grad_norm if t.global_max_grad_norm > 0 else inf)
        ok = torch.isfinite(gn_d) & torch.isfinite(gn_g) & torch.isfinite(losses).all()
        skip = ~ok
        self.opt_d.step(skip=skip)
        self.opt_g.step(skip=skip)
        if self.precision.scaled:
            self.scaler_d.update()
            self.scaler_g.update()
        self.opt_d.zero_grad(set_to_none=True)
        self.opt_g.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model, ok.float())
        self.nonfinite_steps += skip.long()
        self.consecutive_nonfinite.mul_(skip.long()).add_(skip.long())
        return skip, gn_g, gn_d
