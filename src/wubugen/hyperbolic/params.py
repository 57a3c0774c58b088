"""Tagging of parameters that are points of a Poincare ball, so Riemannian optimizers can find them.

A WuBu level's curvature is itself learnable, so a ball parameter carries a function returning the *current* curvature
(a tensor) rather than a fixed number. The last dimension of a tagged parameter is the ball's dimension; leading
dimensions index independent points.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

_ATTR = "_wubu_ball_curvature"


def tag_ball(p: nn.Parameter, curvature: Callable[[], Tensor]) -> nn.Parameter:
    setattr(p, _ATTR, curvature)
    return p


def ball_curvature(p: Tensor) -> Tensor | None:
    """The current curvature (detached float32 tensor) of a tagged ball parameter, or None for a Euclidean one."""
    fn = getattr(p, _ATTR, None)
    if fn is None:
        return None
    with torch.no_grad():
        return fn().detach().float()


def is_ball(p: Tensor) -> bool:
    return getattr(p, _ATTR, None) is not None
