"""Moving MNIST, by the standard protocol (Srivastava et al., 2015, and its reference generator).

A 64x64 black canvas, two 28x28 digits drawn at random from the digits array, each starting at a uniform position
with a uniform direction and moving 0.1 of the free range (64 - 28 = 36 px) per frame, i.e. 3.6 px per frame,
bouncing off the edges (the position is clamped and the velocity component reversed); 20 frames; overlapping digits
combine by pixel-wise maximum. Positions are truncated to whole pixels as in the reference code.

The result is a uint8 array (N, T, 64, 64), which `--video_data_path` accepts directly (each sequence is its own clip,
windows never cross sequences). The widely shared mnist_test_seq.npy uses (T, N, 64, 64) instead.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from wubugen.media import atomic_output
from wubugen.errors import UserError

CANVAS = 64
SEQ_LEN = 20
DIGITS_PER_SEQUENCE = 2
STEP = 0.1  # of the free range per frame


def load_digits(path: str | os.PathLike[str]) -> np.ndarray:
    """A digits array (N, 28, 28) or (N, 784), uint8 or floats in [0, 1], as uint8 (N, 28, 28)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: digits file does not exist")
    try:
        arr = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"{path}: not a readable .npy array ({e})") from None
    if arr.ndim == 2 and arr.shape[1] == 28 * 28:
        arr = arr.reshape(-1, 28, 28)
    if arr.ndim != 3 or arr.shape[1:] != (28, 28) or len(arr) == 0:
        raise UserError(f"{path}: expected digits of shape (N, 28, 28) or (N, 784), got {arr.shape}")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating) or arr.min() < 0 or arr.max() > 1:
            raise UserError(f"{path}: digits must be uint8, or floats in [0, 1]; got {arr.dtype}")
        arr = np.round(arr * 255).astype(np.uint8)
    return arr


def trajectories(rng: np.random.Generator, n: int, seq_len: int, free: int, step: float = STEP) -> np.ndarray:
    """Top-left corners (n, seq_len, 2) as int (y, x) in [0, free], by the reference bouncing rule."""
    y, x = rng.random(n), rng.random(n)
    theta = rng.random(n) * 2 * np.pi
    vy, vx = np.sin(theta), np.cos(theta)
    out = np.empty((n, seq_len, 2))
    for t in range(seq_len):
        y, x = y + vy * step, x + vx * step
        for pos, vel in ((y, vy), (x, vx)):
            low, high = pos <= 0, pos >= 1
            pos[low], pos[high] = 0.0, 1.0
            vel[low | high] *= -1
        out[:, t, 0], out[:, t, 1] = y, x
    return (free * out).astype(np.int64)


def generate(digits: np.ndarray, num_sequences: int, *, seq_len: int = SEQ_LEN, canvas: int = CANVAS,
             digits_per_sequence: int = DIGITS_PER_SEQUENCE, seed: int = 0) -> np.ndarray:
    """uint8 (num_sequences, seq_len, canvas, canvas)."""
    if num_sequences < 1 or seq_len < 1:
        raise UserError("moving MNIST needs at least one sequence of one frame")
    size = digits.shape[1]
    free = canvas - size
    if free < 0:
        raise UserError(f"{size}x{size} digits do not fit a {canvas}x{canvas} canvas")
    rng = np.random.default_rng(seed)
    out = np.zeros((num_sequences, seq_len, canvas, canvas), dtype=np.uint8)
    for _ in range(digits_per_sequence):
        pos = trajectories(rng, num_sequences, seq_len, free)
        picks = digits[rng.integers(0, len(digits), num_sequences)]
        for i in range(num_sequences):
            for t in range(seq_len):
                y, x = pos[i, t]
                region = out[i, t, y:y + size, x:x + size]
                np.maximum(region, picks[i], out=region)
    return out


def write(out_path: str | os.PathLike[str], digits_path: str | os.PathLike[str], *, num_sequences: int,
          seq_len: int = SEQ_LEN, seed: int = 0) -> Path:
    """Generate from a digits file and save as .npy (N, T, 64, 64), atomically."""
    out = Path(out_path)
    if out.suffix.lower() != ".npy":
        raise UserError(f"{out_path}: output must be a .npy file")
    data = generate(load_digits(digits_path), num_sequences, seq_len=seq_len, seed=seed)
    with atomic_output(out) as tmp, open(tmp, "wb") as f:  # a file object: np.save would append .npy to a name
        np.save(f, data)
    return out
