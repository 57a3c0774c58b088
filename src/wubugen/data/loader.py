"""DataLoaders for training and validation, and the uint8 <-> model-range conversions.

Training: every rank draws the same permutation of all windows from (seed, epoch), keeps its strided share
(perm[rank::world_size], cut to the same length on every rank) and batches it with drop_last, so all ranks run the same
number of steps and together see each window at most once per epoch. `start_batch` skips this rank's first k batches
without loading them (exact mid-epoch resume). Build a new loader each epoch: `make_loader(..., epoch=e)` also sets the
dataset's augmentation epoch.

Validation: windows in order, cut into contiguous shards (one per rank, sizes differing by at most one), no drop_last:
every window is evaluated exactly once over all ranks. Ranks may get different batch counts, so reduce sums, not
per-rank means, after the loop.
"""
from __future__ import annotations

import gc
import random
import signal
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from wubugen.data.batch import ClipBatch
from wubugen.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from wubugen.config import Config


def _mix(*parts: int) -> int:
    """A 63-bit seed from several integers (SeedSequence mixing: nearby inputs give unrelated seeds)."""
    return int(np.random.SeedSequence([p % (1 << 63) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


class TrainBatchSampler(Sampler[list[int]]):
    """Batches of window indices for one rank and one epoch (see module docstring)."""

    def __init__(self, n: int, batch_size: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                 start_batch: int = 0) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.n, self.batch_size = n, batch_size
        self.seed, self.epoch, self.rank, self.world_size = seed, epoch, rank, world_size
        self.start_batch = max(0, start_batch)
        self.batches_per_epoch = (n // world_size) // batch_size

    def rank_indices(self) -> torch.Tensor:
        """This rank's share of the epoch's permutation: int64 (n // world_size,)."""
        g = torch.Generator()
        g.manual_seed(_mix(self.seed, self.epoch, 0x7EA1))
        perm = torch.randperm(self.n, generator=g)
        per_rank = self.n // self.world_size
        return perm[self.rank: per_rank * self.world_size: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        idx = self.rank_indices()
        bs = self.batch_size
        for b in range(self.start_batch, self.batches_per_epoch):
            yield idx[b * bs:(b + 1) * bs].tolist()

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start_batch)


class ShardBatchSampler(Sampler[list[int]]):
    """Validation: this rank's contiguous shard of 0..n-1, in order, batched without dropping the tail."""

    def __init__(self, n: int, batch_size: int, *, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.indices = np.array_split(np.arange(n), world_size)[rank].tolist()
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for i in range(0, len(self.indices), self.batch_size):
            yield self.indices[i:i + self.batch_size]

    def __len__(self) -> int:
        return (len(self.indices) + self.batch_size - 1) // self.batch_size


def collate_windows(batch: ClipBatch | list[torch.Tensor]) -> ClipBatch:
    """A batch from WindowDataset.__getitems__ is a ClipBatch already; other datasets' frame items are stacked."""
    if isinstance(batch, ClipBatch):
        return batch
    return ClipBatch(default_collate(batch))


def _seed_worker(worker_id: int, base: int) -> None:
    # Ctrl-C reaches the whole foreground process group and Slurm signals every process of a job: the training process
    # stops cleanly on them (train/signals.py) and ends its workers itself, so a worker must not die first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Augmentation does not use global RNGs (see dataset.py); seeding them anyway makes any other use reproducible.
    s = _mix(base, worker_id)
    random.seed(s)
    np.random.seed(s % (1 << 32))
    torch.manual_seed(s)


class _ForkSafeLoader(DataLoader):
    """A DataLoader that collects this process's garbage before forking its workers: a worker inherits every object
    the parent still holds, and if its own collector frees one that owns threads of the parent (an FFmpeg decoder
    from a failed or abandoned read), it hangs on locks whose threads do not exist in the child."""

    def __iter__(self):
        if self.num_workers > 0:
            gc.collect()
        return super().__iter__()


def make_loader(
    dataset: Dataset,
    cfg: Config,
    train: bool,
    rank: int = 0,
    world_size: int = 1,
    epoch: int = 0,
    start_batch: int = 0,
    pin_memory: bool | None = None,
) -> DataLoader:
    """A DataLoader yielding ClipBatch batches (uint8 frames (B, T, C, H, W) [+ flows]); B = cfg.train.batch_size per
    rank.

    pin_memory: None pins when CUDA is available. Workers: cfg.data.num_workers (0 loads in this process).
    """
    batch_size = cfg.train.batch_size
    n = len(dataset)
    if train:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        sampler: Sampler[list[int]] = TrainBatchSampler(
            n, batch_size, seed=cfg.train.seed, epoch=epoch, rank=rank, world_size=world_size, start_batch=start_batch
        )
        if sampler.batches_per_epoch == 0:
            raise UserError(
                f"training data has {n} windows, fewer than one batch per rank "
                f"(--batch_size {batch_size} x {world_size} ranks); add footage or lower --batch_size"
            )
    else:
        sampler = ShardBatchSampler(n, batch_size, rank=rank, world_size=world_size)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    workers = cfg.data.num_workers
    base = _mix(cfg.train.seed, epoch, rank, 1 if train else 2)
    return _ForkSafeLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_windows,
        num_workers=workers,
        pin_memory=pin_memory,
        worker_init_fn=partial(_seed_worker, base=base) if workers > 0 else None,
        generator=torch.Generator().manual_seed(base),
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,  # a new loader per epoch carries the new epoch to the workers
    )


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1] (x / 127.5 - 1). Apply on the device, after the transfer."""
    return x.float() / 127.5 - 1.0
