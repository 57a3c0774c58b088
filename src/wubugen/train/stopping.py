"""The guide's "when to proceed" as a stop rule, checked after each validation: a run (a phase of a plan) may end on a
plateau of its primary validation metric or when the metric reaches a threshold; otherwise it ends at its length
(--epochs / --max_steps) or its time (--max_seconds).

    plateau:   the best value gained less than --stop_plateau_min_delta over the last --stop_plateau_patience
               validations (the guide's phase 1: "when reconstruction quality ... starts to plateau"; SPEC §12.2 P1->P2:
               a PSNR gain below 0.2 dB over the last 3 epochs)
    threshold: the latest value is at or past --stop_metric_threshold in the metric's direction (the guide's PSNR
               > 20-22 dB before Phase 3)

The rule is a pure function of the run's validation history (RunState.val_history, saved with every checkpoint), so a
resumed run decides exactly as an unbroken one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from wubugen.eval.metrics import HIGHER_IS_BETTER

UNITS = {"avg_val_psnr": " dB"}


def end_reason(kind: str, detail: str) -> dict[str, str]:
    """How a run ended, as summary.json and `wubugen phases status` show it: kind is plateau, threshold, length or
    time."""
    return {"kind": kind, "detail": detail}


@dataclass(frozen=True)
class StopRule:
    metric: str
    patience: int = 0
    min_delta: float = 0.2
    threshold: float | None = None

    @classmethod
    def from_config(cls, t: Any) -> "StopRule":
        """From a TrainConfig: --val_primary_metric, --stop_plateau_patience/_min_delta, --stop_metric_threshold."""
        return cls(t.val_primary_metric, t.stop_plateau_patience, t.stop_plateau_min_delta, t.stop_metric_threshold)

    @property
    def active(self) -> bool:
        return self.patience > 0 or self.threshold is not None

    def describe(self) -> str:
        parts = []
        if self.patience > 0:
            parts.append(f"a gain below {self.min_delta:g} over {self.patience} validations")
        if self.threshold is not None:
            parts.append(f"{self.metric} reaching {self.threshold:g}")
        return " or ".join(parts) if parts else "its length"

    def check(self, history: Sequence[float | None]) -> dict[str, str] | None:
        """The reason to stop after the newest validation in `history` (this run's primary-metric values, oldest first;
        unavailable and non-finite values are left out), or None to go on."""
        values = [float(v) for v in history if v is not None and math.isfinite(v)]
        if not values:
            return None
        sign = 1.0 if HIGHER_IS_BETTER[self.metric] else -1.0
        unit = UNITS.get(self.metric, "")
        last = values[-1]
        if self.threshold is not None and sign * (last - self.threshold) >= 0:
            return end_reason("threshold", f"{self.metric} {last:.4g}{unit} reached the threshold {self.threshold:g}{unit}")
        if self.patience > 0 and len(values) > self.patience:
            pick = max if sign > 0 else min
            best_now, best_before = pick(values), pick(values[:-self.patience])
            gain = sign * (best_now - best_before)
            if gain < self.min_delta:
                return end_reason("plateau", f"{self.metric} gained {gain:.3g}{unit} (< {self.min_delta:g}) over the last "
                                             f"{self.patience} validations (best {best_now:.4g}{unit})")
        return None
