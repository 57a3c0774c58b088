"""The one metric loop over clips: reconstructions (or predictions) from mu, per-frame metrics, and the copy-last-frame
baseline in the predict task. The trainer's validation and `wubugen evaluate` both run it."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from wubugen.config import Config
from wubugen.eval.metrics import ColourStats, LPIPSMetric, VideoMetrics


@dataclass
class EvalPass:
    metrics: VideoMetrics
    copy_last: VideoMetrics | None  # predict task: the last context frame repeated, as a baseline
    shown: tuple[Tensor, Tensor, Tensor] | None  # (context, targets, reconstructions) of the first batch's first `keep`
    clips: int
    colour: ColourStats | None = None


@torch.no_grad()
def metric_pass(model: nn.Module, batches: Iterable, cfg: Config, device: torch.device, lpips: LPIPSMetric | None, *,
                prepare: Callable[[Tensor], Tensor], prepare_flow: Callable[[Tensor | None], Tensor | None],
                autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                max_batches: int = 0, keep: int = 0) -> EvalPass:
    """Runs `model` (already in the mode and with the weights the caller wants) over loader batches (ClipBatch: uint8
    clips [+ cached flows]). Sums stay on the device: the caller reduces them across ranks and reads them once."""
    metrics = VideoMetrics(device, lpips)
    copy_last = VideoMetrics(device, None) if cfg.model.task == "predict" else None
    colour = ColourStats(device, cfg.data.num_channels)
    shown, clips = None, 0
    t_in = cfg.data.num_input_frames
    for i, batch in enumerate(batches):
        if max_batches and i >= max_batches:
            break
        clip = prepare(batch.frames)
        with autocast():
            out = model(clip, prepare_flow(batch.flow), sample_posterior=False)
        metrics.update(out.recon.float(), out.target.float())
        colour.update(out.recon, out.target)
        if copy_last is not None:
            copy_last.update(clip[:, t_in - 1:t_in].expand_as(out.target), out.target)
        if shown is None and keep > 0:
            shown = (clip[:keep, :t_in], out.target[:keep], out.recon[:keep])
        clips += clip.shape[0]
    return EvalPass(metrics, copy_last, shown, clips, colour)
