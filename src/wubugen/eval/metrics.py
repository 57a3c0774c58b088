"""Validation metrics for video clips: MSE, PSNR, SSIM and (when its weights are on disk) LPIPS, all per frame.

`VideoMetrics` accumulates sums on the device and never reads a value back during `update`, so validation runs without
host syncs; `sums()` is one small tensor that DDP ranks can `all_reduce`, and `compute()` reads it once.

Conventions (those of Open-Sora-Plan's and latent diffusion's evaluation scripts): frames mapped from [-1, 1] to [0, 1]; PSNR = 10 log10(1 / mse)
per frame with mse clamped at 1e-10 (a 100 dB cap), then averaged over frames. The original averaged per-batch PSNRs of the
batch-mean MSE, which depends on the batch size. SSIM: Gaussian window 11, sigma 1.5, data_range 1, computed on
(B*T, C, H, W) so each frame is a 2-D image (a 5-D input would make torchmetrics use a 3-D kernel across time).
LPIPS: AlexNet backbone + the linear calibration layers torchmetrics ships, on inputs in [-1, 1].
"""
from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import torch
from torch import Tensor, nn
from torchmetrics.functional.image.lpips import _LPIPS
from torchmetrics.functional.image.ssim import structural_similarity_index_measure

from wubugen.errors import UserError

# Every validation metric's direction, the one definition: True = higher is better (best checkpoint, lambda_KL reward).
HIGHER_IS_BETTER: dict[str, bool] = {
    "avg_val_psnr": True,
    "avg_val_ssim": True,
    "avg_val_recon_mse": False,
    "avg_val_lpips": False,
}
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's ImageNet AlexNet, as torch.hub caches it
MSE_FLOOR = 1e-10  # PSNR cap of 100 dB for identical frames
SSIM_KERNEL = 11
SSIM_SIGMA = 1.5


def is_better(metric: str, new: float | None, best: float | None) -> bool:
    """Whether `new` improves on `best` for `metric` (direction from HIGHER_IS_BETTER).

    An unavailable (None) or non-finite new value never improves; anything finite improves on no best yet.
    """
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(HIGHER_IS_BETTER)}")
    if new is None or not math.isfinite(new):
        return False
    if best is None or not math.isfinite(best):
        return True
    return new > best if HIGHER_IS_BETTER[metric] else new < best


# --------------------------------------------------------------------------------------------------------------------
# LPIPS without downloads
# --------------------------------------------------------------------------------------------------------------------
class LPIPSMetric(nn.Module):
    """LPIPS (AlexNet) per frame. Build it with `load_lpips`; the backbone must come from a local file.

    forward(pred, target): (N, C, H, W) in [-1, 1], C in {1, 3} -> (N,) distances. Frames must be at least
    MIN_SIZE pixels on each side (AlexNet's strides and pools leave nothing of smaller frames).
    """

    MIN_SIZE = 31

    def __init__(self, backbone_state: dict[str, Tensor]) -> None:
        super().__init__()
        # pretrained=True loads the linear calibration layers torchmetrics ships (lpips_models/alex.pth, no network);
        # pnet_rand=True builds the AlexNet backbone with weights=None, so torchvision downloads nothing. The ImageNet
        # backbone is then copied in from the local file below.
        self.net = _LPIPS(pretrained=True, net="alex", pnet_rand=True, pnet_tune=False, use_dropout=True, eval_mode=True)
        _load_alexnet_features(self.net.net, backbone_state)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPSMetric":
        return super().train(False)  # dropout in the linear layers must stay off

    def check_frame_size(self, h: int, w: int) -> None:
        if min(h, w) < self.MIN_SIZE:
            raise UserError(
                f"LPIPS needs frames of at least {self.MIN_SIZE}x{self.MIN_SIZE} pixels, not {h}x{w}; "
                "turn off --use_lpips_for_verification for smaller frames"
            )

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        self.check_frame_size(pred.shape[-2], pred.shape[-1])
        if pred.shape[1] == 1:  # AlexNet wants RGB; grey frames are repeated, as the lpips package does
            pred, target = pred.expand(-1, 3, -1, -1), target.expand(-1, 3, -1, -1)
        # Called directly rather than through torchmetrics' update, whose input range check reads values to the host.
        return self.net(pred, target).flatten()


def _load_alexnet_features(lpips_backbone: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy torchvision AlexNet weights ("features.<i>.weight", classifier ignored) into torchmetrics' sliced AlexNet.

    torchmetrics keeps torchvision's layer indices inside its slices ("slice2.3.weight" is "features.3.weight").
    """
    source = {}  # "slice1.0.weight" -> "features.0.weight"
    for name, _ in lpips_backbone.named_parameters():
        _, idx, kind = name.split(".")
        source[name] = f"features.{idx}.{kind}"
    missing = [k for k in source.values() if k not in state]
    if missing:
        raise UserError(f"the LPIPS backbone file is not a torchvision AlexNet state dict (no {', '.join(missing[:4])})")
    mapped = {name: state[key] for name, key in source.items()}
    shapes = {n: p.shape for n, p in lpips_backbone.named_parameters()}
    wrong = [source[n] for n, t in mapped.items() if t.shape != shapes[n]]
    if wrong:
        raise UserError(f"the LPIPS backbone file has AlexNet tensors of the wrong shape: {', '.join(wrong[:4])}")
    lpips_backbone.load_state_dict(mapped, strict=True)


def lpips_weights_candidates(weights_path: str | os.PathLike[str] | None) -> list[Path]:
    """Where `load_lpips` looks for the AlexNet backbone, in order."""
    if weights_path is not None:
        return [Path(weights_path)]
    return [Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE]


def load_lpips(weights_path: str | os.PathLike[str] | None, device: str | torch.device) -> LPIPSMetric | None:
    """LPIPS with the AlexNet backbone from `weights_path`, else from the torch hub cache; None if neither exists.

    Nothing is downloaded. An explicit `weights_path` that does not exist is a UserError (the user asked for it);
    a missing cache file returns None and the caller says where it looked (`lpips_unavailable_message`).
    """
    path = lpips_weights_candidates(weights_path)[0]
    if not path.is_file():
        if weights_path is not None:
            raise UserError(f"--lpips_weights {path} does not exist")
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(f"cannot read LPIPS backbone {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(state, dict):
        raise UserError(f"LPIPS backbone {path} does not hold a state dict")
    return LPIPSMetric(state).to(device)


def lpips_unavailable_message(weights_path: str | os.PathLike[str] | None = None) -> str:
    where = ", ".join(str(p) for p in lpips_weights_candidates(weights_path))
    return (
        f"LPIPS unavailable: no AlexNet backbone at {where}; put torchvision's {ALEXNET_FILE} there or pass "
        "--lpips_weights PATH"
    )


# --------------------------------------------------------------------------------------------------------------------
# Accumulating video metrics
# --------------------------------------------------------------------------------------------------------------------
class VideoMetrics:
    """Per-frame MSE, PSNR, SSIM, LPIPS sums on `device`.

    update(pred, target): (B, T, C, H, W), values nominally in [-1, 1] (clamped). No host sync.
    sums(): float tensor [sum_mse, sum_psnr, sum_ssim, sum_lpips, n_frames] on `device` (all_reduce-able).
    compute(sums=None): one host read -> {"avg_val_recon_mse", "avg_val_psnr", "avg_val_ssim", "avg_val_lpips"};
    a value is None when unavailable (no frames; LPIPS without weights), never inf.
    """

    def __init__(self, device: str | torch.device, lpips: LPIPSMetric | None = None) -> None:
        self.device = torch.device(device)
        self.lpips = lpips
        # float64 keeps sums of many per-frame PSNRs exact enough; MPS has no float64
        self.dtype = torch.float32 if self.device.type == "mps" else torch.float64
        self._sums = torch.zeros(5, dtype=self.dtype, device=self.device)

    def reset(self) -> None:
        self._sums.zero_()

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        # Validation may run under bf16/fp16 autocast; every metric here (LPIPS's convs included) is computed in fp32.
        with torch.autocast(device_type=self.device.type, enabled=False):
            self._update(pred, target)

    def _update(self, pred: Tensor, target: Tensor) -> None:
        if pred.shape != target.shape or pred.ndim != 5:
            raise ValueError(f"pred and target must both be (B, T, C, H, W), got {tuple(pred.shape)} and {tuple(target.shape)}")
        b, t, c, h, w = pred.shape
        # fp32 whatever the autocast dtype: SSIM's variance terms and 1e-10 MSEs need it
        p = pred.detach().reshape(b * t, c, h, w).to(self.device, torch.float32).clamp(-1.0, 1.0)
        q = target.detach().reshape(b * t, c, h, w).to(self.device, torch.float32).clamp(-1.0, 1.0)
        p01, q01 = (p + 1.0) * 0.5, (q + 1.0) * 0.5

        mse = (p01 - q01).pow(2).mean(dim=(1, 2, 3))  # (B*T,)
        psnr = 10.0 * torch.log10(1.0 / mse.clamp_min(MSE_FLOOR))
        ssim = structural_similarity_index_measure(
            p01, q01, gaussian_kernel=True, sigma=SSIM_SIGMA, kernel_size=SSIM_KERNEL, data_range=1.0, reduction="none"
        )
        lpips = self.lpips(p, q) if self.lpips is not None else torch.zeros_like(mse)
        n = torch.full_like(mse, 1.0)
        per_frame = torch.stack([mse, psnr, ssim, lpips, n])  # (5, B*T)
        self._sums += per_frame.to(self.dtype).sum(dim=1)

    def sums(self) -> Tensor:
        """[sum_mse, sum_psnr, sum_ssim, sum_lpips, n_frames] on the device: a copy, safe to all_reduce in place."""
        return self._sums.clone()

    def compute(self, sums: Tensor | None = None) -> dict[str, float | None]:
        s_mse, s_psnr, s_ssim, s_lpips, n = (self._sums if sums is None else sums).tolist()  # the one host sync
        if n <= 0:
            return {k: None for k in ("avg_val_recon_mse", "avg_val_psnr", "avg_val_ssim", "avg_val_lpips")}
        return {
            "avg_val_recon_mse": s_mse / n,
            "avg_val_psnr": s_psnr / n,
            "avg_val_ssim": s_ssim / n,
            "avg_val_lpips": s_lpips / n if self.lpips is not None else None,
        }


class ColourStats:
    """Per-channel mean and spread of predictions against targets, accumulated on the device: what tells a colour cast
    or washed-out output from a merely blurry one (the health monitor's noise/colour-cast rule).

    update(pred, target): (B, T, C, H, W) in [-1, 1]. sums(): [n, sum p, sum p^2, sum q, sum q^2 per channel] (all_reduce-
    able). compute(sums): {"color_mean_gap": the largest |mean_pred - mean_target| of a channel, in [0, 1] units,
    "color_std_ratio": the smallest std_pred / std_target of a channel}.
    """

    def __init__(self, device: str | torch.device, channels: int) -> None:
        self.device = torch.device(device)
        self.channels = channels
        self.dtype = torch.float32 if self.device.type == "mps" else torch.float64
        self._sums = torch.zeros(1 + 4 * channels, dtype=self.dtype, device=self.device)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        c = self.channels
        p = ((pred.detach().float().clamp(-1, 1) + 1) * 0.5).transpose(0, 2).reshape(c, -1).to(self.dtype)
        q = ((target.detach().float().clamp(-1, 1) + 1) * 0.5).transpose(0, 2).reshape(c, -1).to(self.dtype)
        n = torch.full((1,), float(p.shape[1]), dtype=self.dtype, device=p.device)
        self._sums += torch.cat([n, p.sum(1), p.pow(2).sum(1), q.sum(1), q.pow(2).sum(1)]).to(self.device)

    def sums(self) -> Tensor:
        return self._sums.clone()

    def compute(self, sums: Tensor | None = None) -> dict[str, float | None]:
        v = (self._sums if sums is None else sums).tolist()
        n, c = v[0], self.channels
        if n <= 0:
            return {"color_mean_gap": None, "color_std_ratio": None}
        sp, sp2, sq, sq2 = (v[1 + i * c:1 + (i + 1) * c] for i in range(4))
        mp, mq = [x / n for x in sp], [x / n for x in sq]
        std_p = [math.sqrt(max(0.0, x / n - m * m)) for x, m in zip(sp2, mp)]
        std_q = [math.sqrt(max(0.0, x / n - m * m)) for x, m in zip(sq2, mq)]
        return {"color_mean_gap": max(abs(a - b) for a, b in zip(mp, mq)),
                "color_std_ratio": min(a / max(b, 1e-6) for a, b in zip(std_p, std_q))}


NEAR_DUPLICATE_PSNR = 25.0  # dB: two prior samples closer than this are near copies (the quality issue's bar)


def pairwise_psnr(clips: Tensor) -> Tensor:
    """uint8 or [0, 1] float clips (N, ...) -> (N, N) PSNR in dB between every two whole clips on [0, 1] (MSE over all
    their frames and pixels, floored as validation's), +inf on the diagonal. In float64, where the |a|^2 + |b|^2 - 2ab
    expansion keeps near-identical clips' MSE far below the 100 dB floor's 1e-10."""
    x = clips.reshape(clips.shape[0], -1).double()
    if clips.dtype == torch.uint8:
        x = x / 255.0
    sq = (x * x).sum(1)
    mse = ((sq[:, None] + sq[None, :] - 2.0 * x @ x.T) / x.shape[1]).clamp_min(MSE_FLOOR)
    psnr = -10.0 * torch.log10(mse)
    return psnr.fill_diagonal_(math.inf)


def sample_diversity(clips: Tensor) -> dict[str, float | int]:
    """How far apart a set of samples is, the mode-collapse check people run by eye: the closest pair's PSNR and how many
    pairs are near copies (above NEAR_DUPLICATE_PSNR). clips: (N >= 2, T, C, H, W) uint8 or [0, 1]."""
    p = pairwise_psnr(clips)
    upper = p[torch.triu_indices(len(p), len(p), 1).unbind()]
    return {"max_pairwise_psnr": round(float(upper.max()), 2),
            "near_duplicate_pairs": int((upper > NEAR_DUPLICATE_PSNR).sum())}
