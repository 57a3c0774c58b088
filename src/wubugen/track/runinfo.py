"""What a run directory says about itself, read from its files alone (no torch, no checkpoint loading): whether it is
done, running or interrupted, its steps, best metric and checkpoint, why it ended; and, for a phased plan's root
directory, each phase's row from `phases.json` (written by `wubugen phases`) and the phase's own files.

`wubugen phases status` and `wubugen report` read runs through here, so both say the same, and both work while a phase
is still running (its files are written as it goes: metrics.jsonl line by line, last.json and best.json at each
checkpoint).
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

PLAN_STATUS_FILE = "phases.json"
SUMMARY_FILE = "summary.json"


def read_json(path: Path) -> Any:
    """A JSON file's content, or None when it is missing or unreadable (a file being replaced is read again later)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def lock_holder(run_dir: Path) -> dict[str, Any] | None:
    """The live process holding the run's lock (train/lock.py's run.lock: {"pid", "host", ...}), or None."""
    holder = read_json(Path(run_dir) / "run.lock")
    if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int):
        return None
    if holder.get("host") not in (None, socket.gethostname()):
        return holder  # another machine's: taken as alive (its pid cannot be checked from here)
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return holder


def last_logged_step(run_dir: Path) -> int | None:
    """The step of metrics.jsonl's last complete line."""
    f = Path(run_dir) / "metrics.jsonl"
    try:
        with open(f, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 65536))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def _pointer_meta(run_dir: Path, pointer: str) -> tuple[Path | None, dict[str, Any]]:
    ptr = read_json(run_dir / pointer)
    if not isinstance(ptr, dict) or not isinstance(ptr.get("checkpoint"), str):
        return None, {}
    ckpt = run_dir / ptr["checkpoint"]
    meta = read_json(ckpt / "meta.json")
    return ckpt, meta if isinstance(meta, dict) else {}


def run_info(run_dir: str | Path) -> dict[str, Any]:
    """{"dir", "state": done | running | interrupted | not started, "steps", "metric", "best", "best_step",
    "best_metrics", "checkpoint", "end_reason", "health", "last_val"}."""
    d = Path(run_dir)
    summary = read_json(d / SUMMARY_FILE)
    best_ckpt, best_meta = _pointer_meta(d, "best.json")
    last_ckpt, last_meta = _pointer_meta(d, "last.json")
    cfg = (best_meta or last_meta).get("config") or {}
    metric = (cfg.get("train") or {}).get("val_primary_metric", "avg_val_psnr")
    if isinstance(summary, dict):
        state = "done"
    elif lock_holder(d) is not None:
        state = "running"
    elif last_ckpt is not None or (d / "metrics.jsonl").exists():
        state = "interrupted"
    else:
        state = "not started"
    steps = summary.get("steps") if isinstance(summary, dict) else None
    if steps is None:
        steps = max((s for s in (last_logged_step(d), last_meta.get("step")) if isinstance(s, int)), default=None)
    best_metrics = best_meta.get("metrics") or {}
    best = summary.get("best_metric") if isinstance(summary, dict) else best_metrics.get(metric)
    return {
        "dir": str(d), "state": state, "steps": steps, "metric": metric, "best": best,
        "best_step": best_meta.get("step"), "best_metrics": best_metrics,
        "checkpoint": str(best_ckpt or last_ckpt) if (best_ckpt or last_ckpt) else None,
        "end_reason": summary.get("end_reason") if isinstance(summary, dict) else None,
        "health": summary.get("health") if isinstance(summary, dict) else None,
        "last_val": (summary or {}).get("val") if isinstance(summary, dict) else last_meta.get("metrics"),
    }


def is_plan_root(path: str | Path) -> bool:
    return (Path(path) / PLAN_STATUS_FILE).is_file()


def plan_rows(root: str | Path) -> list[dict[str, Any]]:
    """Each phase of a plan's root: phases.json's record (state, reason, loaded_from, ...) with its run's files over
    it: a phase recorded as running whose process is gone reads "interrupted"."""
    root = Path(root)
    doc = read_json(root / PLAN_STATUS_FILE) or {}
    rows = []
    for rec in doc.get("phases", []):
        info = run_info(root / rec["name"])
        row = {**info, **{k: v for k, v in rec.items() if k != "state"}, "name": rec["name"]}
        planned = rec.get("state", "pending")
        if planned in ("skipped", "stopped", "failed") or (planned == "pending" and info["state"] == "not started"):
            row["state"] = planned
        else:
            row["state"] = info["state"] if info["state"] != "not started" else planned
        rows.append(row)
    return rows
