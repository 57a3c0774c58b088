"""`--ddp_comm flat`: gradient averaging across ranks as one all-reduce of one flat buffer, after the backward.

DDP registers a hook per parameter and copies gradients into buckets while the backward runs; that host-side work is
what kept 4-GPU scaling at 61% at per-GPU batch 4 (docs/multi-gpu.md), and DDP's hooks cannot run inside a CUDA graph.
Here the players are plain modules, so the step's forward and backwards can be captured as on one GPU; afterwards the
gradients are copied into a buffer built once, summed across ranks in one collective, divided by the world size and
copied back. The result equals DDP's average (tests/test_grad_sync.py, on gloo).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


class FlatGradReducer:
    """Averages the gradients of `params` over the default process group, one all-reduce per dtype per call.

    Every rank runs the same model, so the same parameters carry gradients on every rank; a parameter whose gradient
    is None here contributes zeros and keeps None."""

    def __init__(self, params: list[nn.Parameter], world_size: int):
        self.world_size = world_size
        self.groups: dict[torch.dtype, tuple[list[nn.Parameter], Tensor, list[Tensor]]] = {}
        by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
        for p in params:
            if p.requires_grad:
                by_dtype.setdefault(p.dtype, []).append(p)
        for dtype, ps in by_dtype.items():
            buf = torch.zeros(sum(p.numel() for p in ps), dtype=dtype, device=ps[0].device)
            views, offset = [], 0
            for p in ps:  # views into the one buffer, built once (no allocation per step)
                views.append(buf[offset:offset + p.numel()].view_as(p))
                offset += p.numel()
            self.groups[dtype] = (ps, buf, views)

    @torch.no_grad()
    def reduce(self) -> None:
        for ps, buf, views in self.groups.values():
            present = [(p, v) for p, v in zip(ps, views) if p.grad is not None]
            if len(present) < len(ps):
                buf.zero_()
            if present:
                torch._foreach_copy_([v for _, v in present], [p.grad for p, _ in present])
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(self.world_size)
            if present:
                torch._foreach_copy_([p.grad for p, _ in present], [v for _, v in present])


@torch.no_grad()
def broadcast_state(modules: list[nn.Module], src: int = 0) -> None:
    """Every parameter and buffer from rank `src` (what DDP's constructor does), so all ranks start identical."""
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            dist.broadcast(t.data, src=src)
