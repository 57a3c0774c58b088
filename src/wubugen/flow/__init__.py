"""Optical flow for the motion branch: backends (torchvision RAFT with local weights, OpenCV DIS) and regional
statistics, as functions of tensors. The flow cache, which serves flows with the frames, is on the data side
(wubugen.data.flow_cache).

    estimator = build_flow_estimator(cfg.model)           # FlowEstimator: estimator(a, b) -> (N, 2, H, W)
    stats = regional_flow_stats(flow, rects, components)   # (N, R, S), all pairs and regions at once
"""
from wubugen.flow.backends import (
    RAFT_FILES,
    FlowEstimator,
    build_flow_estimator,
    dis_flow,
    hub_weights_path,
    load_raft,
    raft_flow,
    raft_weights_path,
    weights_fingerprint,
)
from wubugen.flow.stats import (
    STAT_ORDER,
    ordered_components,
    region_pixel_masks,
    region_pixel_rects,
    regional_flow_stats,
    regional_flow_stats_loop,
    stat_names,
    stats_dim,
)

__all__ = [
    "RAFT_FILES",
    "STAT_ORDER",
    "FlowEstimator",
    "build_flow_estimator",
    "dis_flow",
    "hub_weights_path",
    "load_raft",
    "ordered_components",
    "raft_flow",
    "raft_weights_path",
    "region_pixel_masks",
    "region_pixel_rects",
    "regional_flow_stats",
    "regional_flow_stats_loop",
    "stat_names",
    "stats_dim",
    "weights_fingerprint",
]
