"""GAAD: Golden Aspect Adaptive Decomposition of a frame into regions.

Boxes never depend on image content: they are a pure function of (W, H, n, mode, min_size), so wubugen computes them once
per frame size and keeps them as buffers. One box convention everywhere: `[x1, y1, x2, y2]` in pixels, floats, x along the
width, origin top left, x1 < x2 and y1 < y2 (the original's negative box height cannot arise).

The construction reproduces the original script's exactly, including the float32 area ordering that decides ties, so the
boxes match the original's for the same settings (tests/test_gaad.py holds its values).
"""
from __future__ import annotations

import math
from collections import deque
from functools import lru_cache

import torch
from torch import Tensor

PHI = (1.0 + math.sqrt(5.0)) / 2.0
EPS = 1e-5
MODES = ("subdivide", "spiral", "hybrid")


def golden_subdivide(width: float, height: float, n: int, min_size: float) -> Tensor:
    """n golden-ratio boxes of a W x H frame, largest first (box 0 is the whole frame). -> (n, 4) float32"""
    if n <= 0:
        return torch.zeros(0, 4)
    rects: list[list[float]] = [[0.0, 0.0, float(width), float(height)]]
    queue = deque([(0.0, 0.0, float(width), float(height), 0)])
    while queue and len(rects) < 3 * n:
        x, y, w, h, depth = queue.popleft()
        if min(w, h) < min_size or depth > 6:
            continue
        landscape = w > h + EPS
        portrait = h > w + EPS
        square = abs(w - h) < EPS and w > min_size * PHI
        if landscape or square:
            cut = x + w / PHI
            children = [[x, y, cut, y + h], [cut, y, x + w, y + h]]
        elif portrait:
            cut = y + h / PHI
            children = [[x, y, x + w, cut], [x, cut, x + w, y + h]]
        else:
            continue
        for c in children:
            cw, ch = c[2] - c[0], c[3] - c[1]
            if cw >= min_size and ch >= min_size:
                rects.append(c)
                queue.append((c[0], c[1], cw, ch, depth + 1))
    unique: list[list[float]] = []
    seen: set[tuple[float, ...]] = set()
    for r in rects:
        if r[0] >= r[2] - EPS or r[1] >= r[3] - EPS:
            continue
        key = tuple(round(v, 3) for v in r)
        if key not in seen:
            seen.add(key)
            unique.append(r)
    if not unique:
        unique = [[0.0, 0.0, float(width), float(height)]]
    boxes = torch.tensor(unique, dtype=torch.float32)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # float32 on purpose: it decides ties as the original
    order = torch.sort(area, descending=True, stable=True).indices
    boxes = boxes[order][:n]
    return _pad(boxes, n)


def phi_spiral_centers(width: float, height: float, n: int) -> tuple[list[tuple[float, float]], list[float]]:
    """Centres and scales of n points on a golden spiral around the frame centre (the original's spiral)."""
    if n <= 0:
        return [], []
    centers = [(width / 2.0, height / 2.0)]
    scales = [0.25]
    m = n - 1
    if m > 0:
        a = 0.05 * min(width, height)
        b = math.log(PHI) / (math.pi / 2.0)
        step = PHI * 2.0 * math.pi / m
        angle = 0.0
        for _ in range(m):
            r = min(a * math.exp(b * angle), 0.6 * max(width, height))
            cx = min(max(width / 2.0 + r * math.cos(angle), 0.0), float(width))
            cy = min(max(height / 2.0 + r * math.sin(angle), 0.0), float(height))
            centers.append((cx, cy))
            scales.append(max(0.05, 0.20 * math.exp(-0.5 * r / (0.1 * min(width, height)))))
            angle += step
    return centers, scales


def phi_spiral_boxes(width: float, height: float, n: int) -> Tensor:
    """n square boxes on the golden spiral. -> (n, 4) float32"""
    centers, scales = phi_spiral_centers(width, height, n)
    boxes = []
    for (cx, cy), s in zip(centers, scales):
        hs = min(width, height) * s / 2.0
        x1 = min(max(cx - hs, 0.0), width - EPS)
        y1 = min(max(cy - hs, 0.0), height - EPS)
        x2 = max(min(cx + hs, float(width)), x1 + EPS)
        y2 = max(min(cy + hs, float(height)), y1 + EPS)
        boxes.append([x1, y1, x2, y2])
    return _pad(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), n)


def _pad(boxes: Tensor, n: int, width: float | None = None, height: float | None = None) -> Tensor:
    if boxes.shape[0] >= n:
        return boxes[:n]
    last = boxes[-1:] if boxes.shape[0] else torch.tensor([[0.0, 0.0, width or 1.0, height or 1.0]])
    return torch.cat([boxes, last.expand(n - boxes.shape[0], 4)], 0)


@lru_cache(maxsize=64)
def _gaad_boxes_cached(width: int, height: int, n: int, mode: str, min_size: float) -> Tensor:
    if mode not in MODES:
        raise ValueError(f"unknown GAAD decomposition {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "subdivide":
        boxes = golden_subdivide(width, height, n, min_size)
    elif mode == "spiral":
        boxes = phi_spiral_boxes(width, height, n)
    else:
        n_golden = n // 2
        parts = [golden_subdivide(width, height, n_golden, min_size), phi_spiral_boxes(width, height, n - n_golden)]
        boxes = torch.cat([p for p in parts if p.shape[0]], 0)
    return _pad(boxes, n, width, height)


def gaad_boxes(width: int, height: int, n: int, mode: str = "hybrid", min_size: float = 4) -> Tensor:
    """The n GAAD boxes of a W x H frame. -> (n, 4) float32 `[x1, y1, x2, y2]` (a fresh copy; computed once per size)."""
    return _gaad_boxes_cached(int(width), int(height), int(n), mode, float(min_size)).clone()


def normalized_boxes(boxes: Tensor, width: int, height: int) -> Tensor:
    """(R, 4) pixel boxes -> (R, 4) `(cx/W, cy/H, w/W, h/H)`, all in [0, 1]."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height], -1)


def region_masks(boxes: Tensor, width: int, height: int, out_h: int, out_w: int) -> Tensor:
    """Rasterise boxes onto an out_h x out_w grid covering the frame: the fraction of each cell inside each box.

    (R, 4) pixel boxes -> (R, out_h, out_w) float32 in [0, 1]. Exact area coverage (not point sampling), so small spiral
    boxes still show up on coarse grids.
    """
    cell_w = width / out_w
    cell_h = height / out_h
    xs = torch.arange(out_w, dtype=torch.float32) * cell_w
    ys = torch.arange(out_h, dtype=torch.float32) * cell_h
    x1, y1, x2, y2 = (boxes[:, i, None] for i in range(4))
    ox = (torch.minimum(x2, xs + cell_w) - torch.maximum(x1, xs)).clamp_min(0) / cell_w  # (R, out_w)
    oy = (torch.minimum(y2, ys + cell_h) - torch.maximum(y1, ys)).clamp_min(0) / cell_h  # (R, out_h)
    return oy[:, :, None] * ox[:, None, :]
