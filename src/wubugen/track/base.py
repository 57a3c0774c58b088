"""The tracker interface the trainer talks to, a fan-out, and a no-op for non-zero DDP ranks.

The same keys go to every tracker (DESIGN §5), so a local run and a W&B run read alike.
Images are uint8 (H, W, C); videos uint8 (T, H, W, C); C is 1 or 3. Events are one line of text under a key (the health
monitor's findings, `health/<rule>`): local events.jsonl, W&B an HTML panel, TensorBoard a text summary.
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Tracker(Protocol):
    def log_scalars(self, values: dict[str, float | None], step: int) -> None:
        """values: key -> number; None means unavailable (e.g. LPIPS without weights) and is skipped by plotting trackers."""

    def log_images(self, key: str, image: np.ndarray, step: int, caption: str = "") -> None:
        """image: uint8 (H, W, C)."""

    def log_video(self, key: str, frames: np.ndarray, step: int, fps: int = 8) -> None:
        """frames: uint8 (T, H, W, C)."""

    def log_event(self, key: str, text: str, step: int) -> None:
        """One line of text under `key` at `step` (e.g. health/d_guessing: symptom, values, diagnosis, action)."""

    def finish(self) -> None:
        """Flush and close. Safe to call twice."""


class NullTracker:
    """Logs nothing: what ranks other than 0 get."""

    def log_scalars(self, values: dict[str, float | None], step: int) -> None:
        pass

    def log_images(self, key: str, image: np.ndarray, step: int, caption: str = "") -> None:
        pass

    def log_video(self, key: str, frames: np.ndarray, step: int, fps: int = 8) -> None:
        pass

    def log_event(self, key: str, text: str, step: int) -> None:
        pass

    def finish(self) -> None:
        pass


class MultiTracker:
    """Sends every call to each tracker, in order."""

    def __init__(self, trackers: Sequence[Tracker]) -> None:
        self.trackers = list(trackers)

    def log_scalars(self, values: dict[str, float | None], step: int) -> None:
        for t in self.trackers:
            t.log_scalars(values, step)

    def log_images(self, key: str, image: np.ndarray, step: int, caption: str = "") -> None:
        for t in self.trackers:
            t.log_images(key, image, step, caption)

    def log_video(self, key: str, frames: np.ndarray, step: int, fps: int = 8) -> None:
        for t in self.trackers:
            t.log_video(key, frames, step, fps)

    def log_event(self, key: str, text: str, step: int) -> None:
        for t in self.trackers:
            t.log_event(key, text, step)

    def finish(self) -> None:
        # Every tracker gets its finish even if an earlier one fails; the first failure is raised afterwards.
        first: BaseException | None = None
        for t in self.trackers:
            try:
                t.finish()
            except Exception as e:  # noqa: BLE001 - re-raised below
                first = first or e
        if first is not None:
            raise first
