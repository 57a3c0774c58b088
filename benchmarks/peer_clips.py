"""The peer's clip file (../shared/reference/peer/make_clips.py's arrays, the same windows in the same order) made with
one process per footage file and saved uncompressed: at 256x256 the reference script's single process and zlib take
minutes of a GPU call's 600 s, this takes seconds on the GPU machine's 16 cores.

    python benchmarks/peer_clips.py SIZE OUT.npz TRAIN_DIR VAL_DIR [--script PATH/make_clips.py]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
from multiprocessing import Pool
from pathlib import Path

import numpy as np

_mod = None


def _load(script: str):
    global _mod
    spec = importlib.util.spec_from_file_location("make_clips", script)
    _mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(_mod)


def _one(job: tuple[str, int]) -> list:
    return _mod.clips(*job)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("size", type=int)
    ap.add_argument("out", type=Path)
    ap.add_argument("train_dir")
    ap.add_argument("val_dir")
    ap.add_argument("--script", default=".gpu/peer/make_clips.py")
    args = ap.parse_args()
    arrays = {}
    with Pool(os.cpu_count(), initializer=_load, initargs=(args.script,)) as pool:
        for split, d in (("train", args.train_dir), ("val", args.val_dir)):
            jobs = [(os.path.join(d, name), args.size) for name in sorted(os.listdir(d))]  # make_clips.folder's order
            arrays[split] = np.stack([c for clips in pool.map(_one, jobs) for c in clips])
    print("train", arrays["train"].shape, "val", arrays["val"].shape)
    np.savez(args.out, **arrays)


if __name__ == "__main__":
    main()
