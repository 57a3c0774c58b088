"""Trackers (local JSONL always; W&B and TensorBoard optional) and report plots; sample media files come from
`wubugen.media`.

The trainer talks to one `Tracker`; `build_tracker` gives rank 0 the real ones and every other rank a `NullTracker`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from wubugen.track.base import MultiTracker, NullTracker, Tracker
from wubugen.track.local import LocalTracker

__all__ = ["Tracker", "MultiTracker", "NullTracker", "LocalTracker", "build_tracker"]


def build_tracker(
    run_dir: str | Path, log: Any, config: dict[str, Any] | None = None, is_main: bool = True, resume_step: int | None = None
) -> Tracker:
    """Trackers for a run: local always, plus W&B (`log.wandb`) and TensorBoard (`log.tensorboard`).

    log: a `wubugen.config.LogConfig`. resume_step: the step a resumed run starts at (TensorBoard hides a crashed
    run's events from there on). Raises UserError when an optional tracker is asked for but not installed.
    """
    if not is_main:
        return NullTracker()
    trackers: list[Tracker] = [LocalTracker(run_dir)]
    if log.wandb:
        from wubugen.track.wandb_tracker import WandbTracker

        trackers.append(WandbTracker(run_dir, log.wandb_project, log.wandb_run_name, log.wandb_mode, config))
    if log.tensorboard:
        from wubugen.track.tensorboard_tracker import TensorBoardTracker

        trackers.append(TensorBoardTracker(run_dir, purge_step=resume_step))
    return MultiTracker(trackers)
