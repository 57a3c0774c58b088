"""Synthetic demo footage: the embedded default that `wubugen train` uses when no data path is given.

Each clip has a textured background drifting like a slow camera pan and 3-5 shapes (ellipses, rectangles, regular
polygons, stars) with their own textures (stripes, checks, rings, gradients), sizes, speeds (0.2-2.4 px per frame at
64 px), spins, and bounces off the frame edges; shapes are drawn in a fixed depth order, so they occlude each other when
they cross. Edges are anti-aliased. Everything follows from the seed.

The footage must be the same bytes on every machine, thread count and library build, because tests and the quickstart's
figures are built on it. So it is rendered in float64 NumPy arithmetic only (no OpenCV, whose SIMD and threaded kernels
differ between builds), quantised once at the end, and written losslessly as PNG frame folders (no video codec: x264's
output depends on its thread count). The folders are read through the same pipeline as user footage.
"""
from __future__ import annotations

import colorsys
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from wubugen.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from wubugen.config import Config

DEMO_VERSION = 2  # bump when the renderer or the output format changes (2: float64, PNG frames)
DEMO_SEED = 0
SHAPES = ("ellipse", "rectangle", "triangle", "pentagon", "hexagon", "star")
TEXTURES = ("solid", "stripes", "checker", "rings", "gradient")
NOISE_GRID = 6  # background noise: a NOISE_GRID x NOISE_GRID lattice, bicubic-interpolated


@dataclass
class _Shape:
    kind: str
    texture: str
    c1: np.ndarray  # (3,) float colour, 0-255
    c2: np.ndarray
    radius: float  # px
    aspect: float  # ellipse/rectangle height / width
    freq: float  # texture frequency (cycles per radius)
    pos: np.ndarray  # (2,) x, y px
    vel: np.ndarray  # (2,) px per frame
    angle: float  # rad
    spin: float  # rad per frame


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated colour: hue, saturation and value drawn as integers (OpenCV's HSV ranges), converted exactly."""
    hue, sat, val = int(rng.integers(0, 180)), int(rng.integers(120, 256)), int(rng.integers(110, 256))
    rgb = colorsys.hsv_to_rgb(hue / 180.0, sat / 255.0, val / 255.0)
    return np.round(np.array(rgb, dtype=np.float64) * 255.0)


def _new_shape(rng: np.random.Generator, h: int, w: int) -> _Shape:
    scale = min(h, w)
    radius = float(rng.uniform(0.08, 0.2) * scale)
    speed = float(rng.uniform(0.2, 2.4) * scale / 64)
    direction = rng.uniform(0, 2 * np.pi)
    return _Shape(
        kind=str(rng.choice(SHAPES)),
        texture=str(rng.choice(TEXTURES)),
        c1=_colour(rng),
        c2=_colour(rng),
        radius=radius,
        aspect=float(rng.uniform(0.5, 1.0)),
        freq=float(rng.uniform(1.5, 4.0)),
        pos=np.array([rng.uniform(radius, w - radius), rng.uniform(radius, h - radius)]),
        vel=speed * np.array([np.cos(direction), np.sin(direction)]),
        angle=float(rng.uniform(0, 2 * np.pi)),
        spin=float(rng.uniform(-0.12, 0.12)),
    )


def _radius_fn(kind: str, u: np.ndarray, v: np.ndarray, aspect: float) -> np.ndarray:
    """<= 1 inside the unit shape, growing roughly like distance outside."""
    if kind == "ellipse":
        return np.sqrt(u**2 + (v / aspect) ** 2)
    if kind == "rectangle":
        return np.maximum(np.abs(u), np.abs(v) / aspect)
    rho = np.sqrt(u**2 + v**2)
    phi = np.arctan2(v, u)
    if kind == "star":
        return rho / (0.6 + 0.4 * np.cos(5 * phi))
    n = {"triangle": 3, "pentagon": 5, "hexagon": 6}[kind]
    sector = 2 * np.pi / n
    return rho * np.cos((phi % sector) - sector / 2) / np.cos(np.pi / n)


def _texture(kind: str, u: np.ndarray, v: np.ndarray, freq: float) -> np.ndarray:
    """Texture value in [0, 1] at local coordinates (u, v) (unit = radius)."""
    if kind == "solid":
        return np.ones_like(u)
    if kind == "stripes":
        return 0.5 + 0.5 * np.sin(np.pi * freq * u)
    if kind == "checker":
        return 0.5 + 0.5 * np.tanh(4 * np.sin(np.pi * freq * u) * np.sin(np.pi * freq * v))
    if kind == "rings":
        return 0.5 + 0.5 * np.cos(np.pi * freq * np.sqrt(u**2 + v**2))
    return np.clip(0.5 + 0.5 * u, 0, 1)


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """Catmull-Rom weights of the 4 lattice taps around each fractional position t in [0, 1). -> (..., 4)"""
    t2, t3 = t * t, t * t * t
    return 0.5 * np.stack([-t3 + 2 * t2 - t, 3 * t3 - 5 * t2 + 2, -3 * t3 + 4 * t2 + t, t3 - t2], -1)


def _bicubic(lattice: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Sample a (G, G) lattice at lattice coordinates ys (h,) x xs (w,), edges clamped. -> (h, w)"""
    g = lattice.shape[0]

    def taps(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        base = np.floor(c)
        idx = np.clip(base[:, None].astype(np.int64) + np.arange(-1, 3), 0, g - 1)
        return idx, _cubic_weights(c - base)

    iy, wy = taps(ys)
    ix, wx = taps(xs)
    # explicit weighted sums in a fixed order (no einsum/BLAS, whose summation order varies by build and threads)
    rows = sum(wy[:, k, None] * lattice[iy[:, k]] for k in range(4))  # along y: (h, G)
    return sum(wx[None, :, k] * rows[:, ix[:, k]] for k in range(4))  # along x: (h, w)


@dataclass
class _Background:
    """Smooth noise in two colours over a canvas larger than the frame by `margin` px on each side."""

    lattice: np.ndarray  # (G, G) in [0, 1]
    dark: np.ndarray  # (3,)
    light: np.ndarray
    big_h: int
    big_w: int

    def view(self, top: float, left: float, h: int, w: int) -> np.ndarray:
        """The h x w window whose top-left pixel centre is at canvas position (top, left). -> float64 (h, w, 3)"""
        g = self.lattice.shape[0]
        ys = (top + np.arange(h)) * (g - 1) / (self.big_h - 1)
        xs = (left + np.arange(w)) * (g - 1) / (self.big_w - 1)
        t = np.clip(_bicubic(self.lattice, ys, xs), 0.0, 1.0)[..., None]
        return self.dark * (1 - t) + self.light * t


def _background(rng: np.random.Generator, h: int, w: int, margin: int) -> _Background:
    noise = rng.random((NOISE_GRID, NOISE_GRID))
    noise = (noise - noise.min()) / max(1e-6, float(noise.max() - noise.min()))
    dark, light = _colour(rng) * 0.35, _colour(rng) * 0.6
    return _Background(noise, dark, light, h + 2 * margin, w + 2 * margin)


def render_clip(rng: np.random.Generator, frames: int, height: int, width: int) -> np.ndarray:
    """One synthetic clip: uint8 (frames, height, width, 3), the same bytes on any machine for the same rng state."""
    pan = rng.uniform(-0.3, 0.3, size=2) * min(height, width) / 64
    margin = int(np.ceil(np.abs(pan).max() * frames)) + 2
    bg = _background(rng, height, width, margin)
    shapes = [_new_shape(rng, height, width) for _ in range(int(rng.integers(3, 6)))]
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        img = bg.view(margin + pan[1] * t, margin + pan[0] * t, height, width)
        for s in shapes:
            _draw(img, s)
            _step(s, height, width)
        out[t] = np.clip(np.floor(img + 0.5), 0, 255).astype(np.uint8)
    return out


def _draw(img: np.ndarray, s: _Shape) -> None:
    h, w = img.shape[:2]
    reach = s.radius * 1.05 + 2
    x0, x1 = max(0, int(s.pos[0] - reach)), min(w, int(np.ceil(s.pos[0] + reach)) + 1)
    y0, y1 = max(0, int(s.pos[1] - reach)), min(h, int(np.ceil(s.pos[1] + reach)) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dx, dy = xx + 0.5 - s.pos[0], yy + 0.5 - s.pos[1]
    ca, sa = np.cos(s.angle), np.sin(s.angle)
    u, v = (ca * dx + sa * dy) / s.radius, (-sa * dx + ca * dy) / s.radius
    alpha = np.clip((1.0 - _radius_fn(s.kind, u, v, s.aspect)) * s.radius + 0.5, 0.0, 1.0)[..., None]
    tex = _texture(s.texture, u, v, s.freq)[..., None]
    colour = s.c1 * tex + s.c2 * (1 - tex)
    patch = img[y0:y1, x0:x1]
    patch[:] = patch * (1 - alpha) + colour * alpha


def _step(s: _Shape, h: int, w: int) -> None:
    s.pos += s.vel
    s.angle += s.spin
    for axis, size in ((0, w), (1, h)):
        if s.pos[axis] < s.radius * 0.6 and s.vel[axis] < 0 or s.pos[axis] > size - s.radius * 0.6 and s.vel[axis] > 0:
            s.vel[axis] = -s.vel[axis]


def write_frames(folder: Path, frames: np.ndarray) -> Path:
    """uint8 (T, H, W, 3) -> folder/frame_00000.png, ... (lossless; Pillow's PNG bytes depend only on the pixels)."""
    folder.mkdir(parents=True, exist_ok=False)
    for t, frame in enumerate(frames):
        Image.fromarray(frame, "RGB").save(folder / f"frame_{t:05d}.png", optimize=False, compress_level=6)
    return folder


def write_demo(out_dir: str | os.PathLike[str], *, num_clips: int, clip_frames: int, height: int, width: int,
               seed: int = DEMO_SEED) -> list[Path]:
    """Render `num_clips` clips into out_dir/clip_000/, ... (numbered PNG frames) and return their folders."""
    if num_clips < 1 or clip_frames < 1:
        raise UserError(f"demo footage needs at least one clip of one frame, not {num_clips} x {clip_frames}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(num_clips):
        rng = np.random.default_rng([seed % (1 << 63), i])
        paths.append(write_frames(out / f"clip_{i:03d}", render_clip(rng, clip_frames, height, width)))
    return paths
def demo_settings(cfg: Config) -> dict[str, int]:
    d = cfg.data
    return {"version": DEMO_VERSION, "clips": d.demo_num_clips, "frames": d.demo_clip_frames, "h": d.image_h,
            "w": d.image_w, "seed": DEMO_SEED}


def ensure_demo(cfg: Config, *, lock: bool = False) -> Path:
    """`<cache_dir>/demo_<settings hash>/`, rendered once. The folder appears whole or not at all (built under a
    temporary name, then renamed); with `lock`, concurrent processes wait for the one that renders it."""
    from wubugen.data.cache import build_lock

    settings = demo_settings(cfg)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    cache_dir = Path(cfg.data.cache_dir)
    final = cache_dir / f"demo_{digest}"
    if final.is_dir():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    with build_lock(cache_dir, f"demo_{digest}", lock):
        if final.is_dir():
            return final
        tmp = cache_dir / f".demo_{digest}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            write_demo(tmp, num_clips=cfg.data.demo_num_clips, clip_frames=cfg.data.demo_clip_frames,
                       height=cfg.data.image_h, width=cfg.data.image_w)
            (tmp / ".settings.json").write_text(json.dumps(settings, indent=1))
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():  # not "another process renamed its copy first"
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    return final
