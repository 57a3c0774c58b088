"""Weights & Biases tracker (optional: `pip install 'wubugen[wandb]'`).

Offline by default: nothing goes over the network unless the user asks for `--wandb_mode online` (sync an offline run
later with `wandb sync <run>/wandb/offline-run-*`). The W&B run id is kept in `<run>/wandb_run_id`, so a resumed run
continues the same W&B run (`resume="allow"`) instead of starting a fresh one as the original did.
"""
from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any, Literal

import numpy as np

from wubugen.errors import UserError
from wubugen.media import atomic_write_text, gif_bytes

RUN_ID_FILE = "wandb_run_id"


def _import_wandb():
    try:
        import wandb
    except ImportError:
        raise UserError("--wandb needs the wandb package: pip install 'wubugen[wandb]' (or leave out --wandb)") from None
    return wandb


def run_id_for(run_dir: Path) -> str:
    """The stored W&B run id of this run directory, or a new one (stored atomically)."""
    f = run_dir / RUN_ID_FILE
    if f.is_file():
        run_id = f.read_text().strip()
        if run_id:
            return run_id
    run_id = uuid.uuid4().hex[:12]  # W&B ids: lowercase letters and digits
    atomic_write_text(f, run_id + "\n")
    return run_id


class WandbTracker:
    def __init__(
        self,
        run_dir: str | Path,
        project: str,
        run_name: str | None = None,
        mode: Literal["online", "offline"] = "offline",
        config: dict[str, Any] | None = None,
    ) -> None:
        self._wandb = _import_wandb()
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_id = run_id_for(self.run_dir)
        self.run = self._wandb.init(
            project=project, name=run_name, id=self.run_id, resume="allow", mode=mode, dir=str(self.run_dir),
            config=config or {},
        )
        self._finished = False

    def log_scalars(self, values: dict[str, float | None], step: int) -> None:
        clean = {k: float(v) for k, v in values.items() if v is not None}  # W&B cannot plot None
        if clean:
            self.run.log(clean, step=int(step))

    def log_images(self, key: str, image: np.ndarray, step: int, caption: str = "") -> None:
        img = np.asarray(image)
        if img.shape[-1] == 1:
            img = np.repeat(img, 3, axis=-1)
        self.run.log({key: self._wandb.Image(img, caption=caption or None)}, step=int(step))

    def log_video(self, key: str, frames: np.ndarray, step: int, fps: int = 8) -> None:
        # Encoded here: wandb.Video from an array needs moviepy, which is not a dependency.
        video = self._wandb.Video(io.BytesIO(gif_bytes(frames, fps)), format="gif")
        self.run.log({key: video}, step=int(step))

    def log_event(self, key: str, text: str, step: int) -> None:
        import html

        self.run.log({key: self._wandb.Html(f"<p>step {int(step)}: {html.escape(text)}</p>")}, step=int(step))

    def finish(self) -> None:
        if not self._finished:
            self._finished = True
            self.run.finish()
