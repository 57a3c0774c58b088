"""Loss means over windows of steps, kept on the device (read on the host only when a window is taken)."""
from __future__ import annotations

import torch
from torch import Tensor


class LossMeter:
    """One running sum per named window (e.g. the log interval, the Q-controller's interval): every step's loss
    vector is added to all windows; `take(name)` returns that window's mean and restarts it."""

    def __init__(self, windows: tuple[str, ...], size: int, device: torch.device):
        self._sums = {w: torch.zeros(size, device=device) for w in windows}
        self._counts = dict.fromkeys(windows, 0)

    def add(self, losses: Tensor) -> None:
        for w, total in self._sums.items():
            total += losses
            self._counts[w] += 1

    def take(self, window: str) -> Tensor:
        """The mean since the window was last taken (a new tensor); the window restarts."""
        mean = self._sums[window] / max(1, self._counts[window])
        self._sums[window].zero_()
        self._counts[window] = 0
        return mean

    def state_dict(self) -> dict:
        """The windows' running sums and counts: a resume at any step continues them (logs and Q-control decisions
        average the same steps as an uninterrupted run)."""
        return {"sums": {w: t.detach().clone() for w, t in self._sums.items()}, "counts": dict(self._counts)}

    def load_state_dict(self, state: dict) -> None:
        for w, t in state["sums"].items():
            if w in self._sums:
                self._sums[w].copy_(t.to(self._sums[w].device))
                self._counts[w] = int(state["counts"][w])
