"""TensorBoard tracker (optional: `pip install 'wubugen[tensorboard]'`). Events go to `<run>/tensorboard/`."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from wubugen.errors import UserError
from wubugen.media import gif_bytes

TB_DIR = "tensorboard"


def _import_tensorboard():
    try:
        from tensorboard.compat.proto.summary_pb2 import Summary
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import text as text_summary
    except ImportError:
        raise UserError(
            "--tensorboard needs the tensorboard package: pip install 'wubugen[tensorboard]' (or leave out --tensorboard)"
        ) from None
    return SummaryWriter, Summary, text_summary


class TensorBoardTracker:
    def __init__(self, run_dir: str | Path, purge_step: int | None = None) -> None:
        """purge_step: when resuming at this step, events a crashed run wrote at or after it are hidden."""
        SummaryWriter, self._Summary, self._text = _import_tensorboard()
        self.log_dir = Path(run_dir) / TB_DIR
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)

    def log_scalars(self, values: dict[str, float | None], step: int) -> None:
        for k, v in values.items():
            if v is not None:
                self.writer.add_scalar(k, float(v), int(step))

    def log_images(self, key: str, image: np.ndarray, step: int, caption: str = "") -> None:
        img = np.asarray(image)
        if img.shape[-1] == 1:
            img = np.repeat(img, 3, axis=-1)
        self.writer.add_image(key, img, int(step), dataformats="HWC")

    def log_video(self, key: str, frames: np.ndarray, step: int, fps: int = 8) -> None:
        # SummaryWriter.add_video needs moviepy and silently logs nothing without it; TensorBoard shows a video as an
        # animated GIF in an image summary, so the GIF is encoded here and written the way add_video writes it.
        t, h, w, _ = np.asarray(frames).shape
        image = self._Summary.Image(height=h, width=w, colorspace=3, encoded_image_string=gif_bytes(frames, fps))
        summary = self._Summary(value=[self._Summary.Value(tag=key, image=image)])
        self.writer._get_file_writer().add_summary(summary, int(step))

    def log_event(self, key: str, text: str, step: int) -> None:
        # add_text would file it under `<key>/text_summary`; written here under `key` itself, so TensorBoard's tags are
        # the keys the local and W&B trackers use (DESIGN §5)
        summary = self._text(key, text)
        summary.value[0].tag = key
        self.writer._get_file_writer().add_summary(summary, int(step))

    def finish(self) -> None:
        self.writer.close()
