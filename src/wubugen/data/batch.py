"""The typed batch every loader yields, with one move to the device."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class ClipBatch(NamedTuple):
    """uint8 frames (B, T, C, H, W) and, when the motion branch's flow cache serves them, float16 flows
    (B, T_enc - 1, 2, H, W), flow j going from window frame j to frame j + 1; None otherwise."""

    frames: Tensor
    flow: Tensor | None = None

    def to(self, device: torch.device | str, non_blocking: bool = True) -> ClipBatch:
        """Both tensors on `device` (asynchronously from pinned memory): normalisation happens there."""
        flow = None if self.flow is None else self.flow.to(device, non_blocking=non_blocking)
        return ClipBatch(self.frames.to(device, non_blocking=non_blocking), flow)

    def __getitem__(self, key):  # a slice of clips keeps both tensors; an int still picks a field (NamedTuple)
        if isinstance(key, slice):
            return ClipBatch(self.frames[key], None if self.flow is None else self.flow[key])
        return tuple.__getitem__(self, key)
