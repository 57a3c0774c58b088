"""The always-on tracker: `metrics.jsonl` and media files in the run directory.

    <run>/metrics.jsonl            one JSON object per log_scalars call: {"step": 50, "time": 1712345678.9, "values": {...}}
    <run>/media.jsonl              one line per image/video: {"step", "time", "key", "path", "caption"}
    <run>/events.jsonl             one line per event (health findings): {"step", "time", "key", "text"}
    <run>/media/<key>/step_<n>.png|.gif|.mp4    key with "/" replaced by "_" (samples/train_recon -> samples_train_recon)

The JSON is strict (readable by jq and any JSON parser): non-finite values are written as the strings "nan", "inf",
"-inf" (a NaN loss is exactly what one wants to see in the log), unavailable values as null. Files are opened in append
mode, so a resumed run continues them; each line is flushed as it is written.
"""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from wubugen.media import save_gif, save_mp4, save_png

METRICS_FILE = "metrics.jsonl"
MEDIA_INDEX_FILE = "media.jsonl"
EVENTS_FILE = "events.jsonl"
MEDIA_DIR = "media"


def media_key_dir(key: str) -> str:
    """A file-system-safe directory name for a tracking key."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key.replace("/", "_"))


def json_number(v: Any) -> float | int | str | None:
    """A scalar as strict JSON: int/float as is, non-finite as "nan"/"inf"/"-inf", None as null."""
    if v is None:
        return None
    if hasattr(v, "item"):  # 0-d tensor or numpy scalar (the trainer reads these once per log interval)
        v = v.item()
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    f = float(v)
    return f if math.isfinite(f) else str(f)


class LocalTracker:
    def __init__(self, run_dir: str | Path, video_format: Literal["gif", "mp4"] = "gif") -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.video_format = video_format
        self._metrics = open(self.run_dir / METRICS_FILE, "a", encoding="utf-8")
        self._media_index = open(self.run_dir / MEDIA_INDEX_FILE, "a", encoding="utf-8")
        self._events = open(self.run_dir / EVENTS_FILE, "a", encoding="utf-8")

    @staticmethod
    def _write(f, obj: dict[str, Any]) -> None:
        f.write(json.dumps(obj, allow_nan=False) + "\n")
        f.flush()

    def log_scalars(self, values: dict[str, float | None], step: int) -> None:
        self._write(self._metrics, {"step": int(step), "time": time.time(), "values": {k: json_number(v) for k, v in values.items()}})

    def media_path(self, key: str, step: int, suffix: str) -> Path:
        return self.run_dir / MEDIA_DIR / media_key_dir(key) / f"step_{int(step)}{suffix}"

    def _index(self, key: str, path: Path, step: int, caption: str) -> None:
        rel = path.relative_to(self.run_dir).as_posix()
        self._write(self._media_index, {"step": int(step), "time": time.time(), "key": key, "path": rel, "caption": caption})

    def log_images(self, key: str, image: np.ndarray, step: int, caption: str = "") -> None:
        path = save_png(self.media_path(key, step, ".png"), image)
        self._index(key, path, step, caption)

    def log_video(self, key: str, frames: np.ndarray, step: int, fps: int = 8) -> None:
        path = self.media_path(key, step, "." + self.video_format)
        (save_gif if self.video_format == "gif" else save_mp4)(path, frames, fps)
        self._index(key, path, step, "")

    def log_event(self, key: str, text: str, step: int) -> None:
        self._write(self._events, {"step": int(step), "time": time.time(), "key": key, "text": text})

    def finish(self) -> None:
        for f in (self._metrics, self._media_index, self._events):
            if not f.closed:
                f.close()
