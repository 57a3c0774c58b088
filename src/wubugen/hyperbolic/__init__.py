"""Poincare-ball math with a tensor curvature (pure functions, no nn.Module)."""
from wubugen.hyperbolic.poincare import (
    artanh,
    dist,
    egrad2rgrad,
    expmap,
    expmap0,
    gyration,
    inner,
    lambda_x,
    logmap,
    logmap0,
    mobius_add,
    project,
    transport,
)

__all__ = [
    "artanh", "dist", "egrad2rgrad", "expmap", "expmap0", "gyration", "inner", "lambda_x", "logmap", "logmap0",
    "mobius_add", "project", "transport",
]
