"""What the cache holds and how to shrink it: `wubugen data cache`.

Entries are never rebuilt in place: a new frame size, resize mode or flow backend gives new keys, and the old entries stay
until removed here. Cache hits touch an entry's modification time (data/cache.py, data/flow_cache.py), so "last used" is
the mtime. Leftover temporary files (a build killed by SIGKILL or power loss) are removed by any prune once they are
older than a day (a build in progress elsewhere is younger). Removing an entry that a running job has memory-mapped is
safe on POSIX systems: the job keeps reading the unlinked file; a later run rebuilds it.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

KINDS = {"frames": ".frames", "flow": ".npy"}  # sub-folder -> entry suffix
TEMP_GRACE_S = 24 * 3600


@dataclass
class CacheFile:
    kind: str  # "frames", "flow", or "temporary"
    path: Path
    size: int
    last_used: float  # seconds since the epoch (mtime)


def scan(cache_dir: str | os.PathLike[str]) -> list[CacheFile]:
    """Every entry and leftover temporary file under the cache folder (an absent folder is an empty cache)."""
    out: list[CacheFile] = []
    for kind, suffix in KINDS.items():
        folder = Path(cache_dir) / kind
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            if not p.is_file():
                continue
            try:
                st = p.stat()
            except FileNotFoundError:  # removed meanwhile by another process
                continue
            if p.name.startswith(".") and ".tmp-" in p.name:
                out.append(CacheFile("temporary", p, st.st_size, st.st_mtime))
            elif p.name.endswith(suffix):
                out.append(CacheFile(kind, p, st.st_size, st.st_mtime))
    return out


def select(files: list[CacheFile], *, older_than_days: float | None = None, everything: bool = False,
           now: float | None = None) -> list[CacheFile]:
    """The files a prune removes: all entries with `everything`, else entries unused for `older_than_days`; temporary
    files older than a day in both cases (and none younger: a build may be writing them)."""
    now = time.time() if now is None else now
    chosen = []
    for f in files:
        age = now - f.last_used
        if f.kind == "temporary":
            if age > TEMP_GRACE_S:
                chosen.append(f)
        elif everything or (older_than_days is not None and age > older_than_days * 86400):
            chosen.append(f)
    return chosen


def remove(files: list[CacheFile]) -> int:
    """Delete `files`; -> bytes freed (files already gone are skipped)."""
    freed = 0
    for f in files:
        try:
            f.path.unlink()
            freed += f.size
        except FileNotFoundError:
            pass
    return freed


def summary(files: list[CacheFile], now: float | None = None) -> list[str]:
    """One line per kind: count, size, least recently used."""
    now = time.time() if now is None else now
    lines = []
    for kind in (*KINDS, "temporary"):
        group = [f for f in files if f.kind == kind]
        if not group:
            continue
        size = sum(f.size for f in group)
        oldest = (now - min(f.last_used for f in group)) / 86400
        lines.append(f"{kind:<10} {len(group):5d} entries {size / 2 ** 20:10.1f} MiB   least recently used {oldest:.1f} days ago")
    return lines
