"""The motion branch: optical flow -> regional flow statistics -> WuBu-M -> one motion vector per encoder frame.

    frames (B, T, C, H, W) in [-1, 1]  [+ flow (B, T-1, 2, H, W), pair t = frame t -> frame t+1, e.g. from the flow cache]
      -> flow of all B*(T-1) pairs in one call, when not given (frozen: under no_grad; trainable RAFT: with gradient)
      -> statistics over the motion GAAD regions, all pairs and regions at once (wubugen.flow.stats)      (B*(T-1), R, S)
      -> embed: Linear([stats, normalised box] -> encoder_initial_tangent_dim), WuBu-M per (pair, region) (B*(T-1), R, D_m)
      -> learned attention over the regions (starts as the mean)                                             (B, T-1, D_m)
      -> flow step t joins frame t; the last frame, which has no next frame, gets a learned vector           (B, T, D_m)

The encoder concatenates the result to every region's WuBu-S features of the same frame before WuBu-T mixes time, so
every flow step reaches the latent and the branch receives gradient (the original zero-padded motion features at the end, so they got no gradient). The static pieces (pixel
rectangles of the regions, their normalised boxes) are buffers built once for the frame size (the original rebuilt them every step).

Choices beyond the original:
  * magnitude statistics enter as log1p(value) (flow magnitudes are in pixels, unbounded and heavy-tailed; the angle
    statistics are already O(1));
  * each token carries its region's normalised box (cx, cy, w, h), so pooling over regions keeps where the motion is;
  * attention pooling over regions instead of a plain mean (the original averaged, after zero-padding).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from wubugen.config import FrameGeometry, ModelConfig
from wubugen.flow.backends import FlowEstimator, build_flow_estimator
from wubugen.flow.stats import ordered_components, region_pixel_rects, regional_flow_stats, stats_dim
from wubugen.gaad import normalized_boxes
from wubugen.models.layers import region_boxes
from wubugen.models.wubu import WuBuStack


class MotionEncoder(nn.Module):
    """frames (B, T, C, H, W) in [-1, 1], flow (B, T-1, 2, H, W) or None -> motion features (B, T, out_dim)."""

    def __init__(self, m: ModelConfig, geo: FrameGeometry, flow_estimator: FlowEstimator | None = None):
        super().__init__()
        self.height, self.width = geo.height, geo.width
        self.t_enc = geo.encoder_frames(m.task)
        self.components = ordered_components(m.flow_stats_components)
        self.num_stats = stats_dim(self.components)
        log_cols = torch.tensor([name in ("mag_mean", "mag_std") for name in self._column_components()])
        self.register_buffer("log_columns", log_cols, persistent=False)  # (S,) bool: magnitude columns

        boxes = region_boxes(m, geo.width, geo.height, motion=True)
        self.num_regions = boxes.shape[0]
        self.register_buffer("rects", region_pixel_rects(boxes, geo.height, geo.width), persistent=False)  # (R, 4)
        self.register_buffer("box_features", normalized_boxes(boxes, geo.width, geo.height), persistent=False)

        self.flow = flow_estimator if flow_estimator is not None else build_flow_estimator(m)
        self.embed = nn.Linear(self.num_stats + 4, m.encoder_initial_tangent_dim)
        self.wubu_m = WuBuStack(m.encoder_initial_tangent_dim, m.wubu_m, dropout=m.wubu_dropout,
                                boundary_points=m.wubu_boundary_points, hidden_ratio=m.wubu_combiner_hidden_ratio,
                                euclidean=m.wubu_euclidean)
        self.out_dim = self.wubu_m.out_dim
        # no bias: one bias shifts every region's score alike, and the softmax over regions ignores that, so it never
        # had a gradient (a dead parameter; checkpoints that hold it load without it: checkpoint.DROPPED_PARAMETERS)
        self.region_score = nn.Linear(self.out_dim, 1, bias=False)
        nn.init.normal_(self.region_score.weight, std=1e-2)  # near-uniform attention at first: starts as the mean
        self.no_next = nn.Parameter(torch.randn(self.out_dim) * 0.02)  # the last frame's 'no next frame' motion

    def _column_components(self) -> list[str]:
        cols: list[str] = []
        for c in self.components:
            cols.extend([c, c] if c == "angle_mean" else [c])
        return cols

    @property
    def uses_cache(self) -> bool:
        """Frozen flow is a function of the frames alone: the trainer caches it and passes it in."""
        return self.flow.frozen

    def compute_flow(self, frames: Tensor) -> Tensor:
        """Flow of consecutive frames: (B, T, C, H, W) -> (B, T-1, 2, H, W) float32, all pairs in one call."""
        b, t = frames.shape[:2]
        a = frames[:, :-1].flatten(0, 1)
        nxt = frames[:, 1:].flatten(0, 1)
        return self.flow(a, nxt).unflatten(0, (b, t - 1))

    def region_stats(self, flow: Tensor) -> Tensor:
        """(N, 2, H, W) -> (N, R, S) float32, magnitude columns log1p-compressed."""
        s = regional_flow_stats(flow, self.rects, self.components)
        return torch.where(self.log_columns, torch.log1p(s.clamp_min(0)), s)

    def forward(self, frames: Tensor, flow: Tensor | None = None) -> Tensor:
        b, t = frames.shape[:2]
        if t < 2:
            raise ValueError(f"the motion branch needs at least 2 frames, got {t}")
        if flow is None:
            flow = self.compute_flow(frames)
        expected = (b, t - 1, 2, self.height, self.width)
        if tuple(flow.shape) != expected:
            raise ValueError(f"flow must be (B, T-1, 2, H, W) = {expected} for these frames, not {tuple(flow.shape)}")
        stats = self.region_stats(flow.flatten(0, 1))  # (N, R, S)
        n = stats.shape[0]
        box = self.box_features[None].expand(n, -1, -1).to(stats.dtype)
        tokens = self.embed(torch.cat([stats, box], -1).to(self.embed.weight.dtype))  # (N, R, D_tan)
        h = self.wubu_m(tokens)  # (N, R, D_m)
        weights = torch.softmax(self.region_score(h).float(), dim=1).to(h.dtype)  # (N, R, 1)
        pooled = (weights * h).sum(1).unflatten(0, (b, t - 1))  # (B, T-1, D_m)
        last = self.no_next.to(pooled.dtype)[None, None].expand(b, 1, -1)
        return torch.cat([pooled, last], 1)  # flow step t sits at frame t
