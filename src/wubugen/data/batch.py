"""The typed batch every loader yields. The step moves each of its tensors to the device once (StepRunner.prepare and
prepare_flow) and normalises the frames there."""
from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class ClipBatch(NamedTuple):
    """uint8 frames (B, T, C, H, W) and, when the motion branch's flow cache serves them, float16 flows
    (B, T_enc - 1, 2, H, W), flow j going from window frame j to frame j + 1; None otherwise."""

    frames: Tensor
    flow: Tensor | None = None
