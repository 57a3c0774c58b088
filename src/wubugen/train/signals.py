"""Stopping a run cleanly: SIGINT (Ctrl-C) and SIGTERM (what Slurm, Kubernetes and torchrun send before a kill) finish
the step in progress, write a checkpoint and stop; a second Ctrl-C aborts at once. And the other reasons the loop
looks up from its steps: `--max_seconds` (stop) and `--save_every_minutes` (save).

`StopSignals` is entered around the training loop, in the main thread of the training process only (anywhere else it
installs nothing), and puts the previous handlers back when it exits. Its handler only records the signal and writes
one line; the loop asks `StopControl.poll` after every step, which reads a Python attribute and a clock: no device
sync. Under torchrun every rank must stop (and save) at the same step, so the ranks' flags are combined only on the
steps where the loop synchronises anyway (`may_sync`), with one small all-reduce.

torchrun forwards the signal it gets to its workers, so a worker sees one Ctrl-C twice (from the terminal and from
torchrun) within milliseconds: a repeat within REPEAT_GRACE_S of the first counts as the same request. A repeated
SIGTERM never aborts (the stop is under way; the sender's SIGKILL comes when its grace period ends).
"""
from __future__ import annotations

import os
import signal
import threading
import time

import torch

from wubugen.errors import SignalAbort
from wubugen.train.distributed import DistInfo

REPEAT_GRACE_S = 0.5
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Context manager: while inside, SIGINT and SIGTERM request a stop (`requested`: the signal number, or 0)."""

    def __init__(self, announce: bool = True, lead: str = ""):
        self.requested = 0
        self._first_at = 0.0
        self._announce, self._lead = announce, lead  # lead: "\n" to start below a progress bar
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False

    def _say(self, text: str) -> None:
        if self._announce:
            try:  # os.write: print() from inside a signal handler can hit a reentrant write on the same stream
                os.write(2, f"{self._lead}wubugen: {text}\n".encode())
            except OSError:
                pass

    def _handle(self, signum: int, frame) -> None:
        now = time.monotonic()
        if not self.requested:
            self.requested, self._first_at = signum, now
            self._say(f"{signal.Signals(signum).name}: finishing this step, then saving a checkpoint and stopping "
                      "(Ctrl-C again aborts at once)")
        elif signum == signal.SIGINT and now - self._first_at >= REPEAT_GRACE_S:
            self._say("second Ctrl-C: aborting now; the last checkpoint written is intact")
            raise SignalAbort(signum)


def stopped_message(signum: int, step: int, run_dir) -> str:
    from wubugen.checkpoint import step_dir_name

    return (f"{signal.Signals(signum).name}: stopped at step {step}, checkpoint {run_dir}/{step_dir_name(step)} "
            f"written; continue with: wubugen train --resume {run_dir}")


class StopControl:
    """What the loop should do after a step besides its cadences: stop (a signal, `--max_seconds`) or save
    (`--save_every_minutes`). The clocks are rank 0's; a signal on any rank stops every rank."""

    def __init__(self, signals: StopSignals, dist: DistInfo, device: torch.device, max_seconds: float,
                 save_every_minutes: float, t_created: float):
        self.signals, self.dist, self.device = signals, dist, device
        self.max_seconds, self.save_every_s = max_seconds, save_every_minutes * 60.0
        self.t_created = t_created  # --max_seconds counts from the trainer's creation (set-up included)
        self.last_save = time.monotonic()

    def saved(self) -> None:
        self.last_save = time.monotonic()

    def poll(self, may_sync: bool) -> tuple[int, bool, bool]:
        """-> (signal number to stop on or 0, out of time, a time-based save is due); all ranks get the same answer."""
        if self.dist.enabled and not may_sync:
            return 0, False, False
        main = self.dist.is_main
        over = main and self.max_seconds > 0 and time.perf_counter() - self.t_created >= self.max_seconds
        due = main and self.save_every_s > 0 and time.monotonic() - self.last_save >= self.save_every_s
        signum = self.signals.requested
        if self.dist.enabled:
            import torch.distributed as tdist

            flags = torch.tensor([float(signum), float(over), float(due)], device=self.device)
            tdist.all_reduce(flags, op=tdist.ReduceOp.MAX)
            sig_f, over_f, due_f = flags.tolist()
            signum, over, due = int(sig_f), over_f > 0, due_f > 0
        return signum, bool(over), bool(due)
