"""Loaders: rank shares, exact resume, validation sharding, deterministic augmentation, value ranges."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from wubugen.config import build_config
from wubugen.data import build_datasets, make_loader, to_model_range, to_uint8
from wubugen.data.loader import ShardBatchSampler, TrainBatchSampler
from wubugen.errors import UserError


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clip array: 6 clips of 20 frames, 16x16 RGB noise (each frame distinct)."""
    path = tmp_path_factory.mktemp("clips") / "clips.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (6, 20, 16, 16, 3), dtype=np.uint8))
    return path


def cfg_for(clips: Path, **kw):
    over = {"video_data_path": str(clips), "cache_dir": str(clips.parent / "cache"), "image_h": 16, "image_w": 16,
            "num_input_frames": 3, "num_predict_frames": 1, "num_workers": 0, "batch_size": 4, "progress": False,
            "validation_split_fraction": 0}
    over.update(kw)
    return build_config(overrides=over)


def test_clip_array_windows_never_cross_clips(clips: Path) -> None:
    b = build_datasets(cfg_for(clips))
    assert len(b.train) == 6 * (20 - 3)
    raw = np.load(clips)
    for i in (0, 16, 17, len(b.train) - 1):
        clip, start = divmod(int(b.train.table.start[i]), 20)
        assert start + 4 <= 20
        assert torch.equal(b.train[i], torch.from_numpy(raw[clip, start:start + 4].transpose(0, 3, 1, 2)))


@pytest.mark.parametrize("n,world,bs", [(103, 1, 4), (103, 4, 5), (64, 8, 2), (10, 3, 3)])
def test_train_shares_same_permutation_disjoint_equal_length(n: int, world: int, bs: int) -> None:
    shares = [list(TrainBatchSampler(n, bs, seed=7, epoch=3, rank=r, world_size=world)) for r in range(world)]
    lengths = {len(s) for s in shares}
    assert lengths == {(n // world) // bs}, "every rank runs the same number of steps"
    flat = [i for s in shares for b in s for i in b]
    assert len(flat) == len(set(flat)) and all(0 <= i < n for i in flat)
    assert all(len(b) == bs for s in shares for b in s)  # drop_last
    # rank r holds perm[r::world] of one permutation drawn from (seed, epoch) alone
    whole = TrainBatchSampler(n, bs, seed=7, epoch=3).rank_indices()
    interleaved = torch.stack([TrainBatchSampler(n, bs, seed=7, epoch=3, rank=r, world_size=world).rank_indices()
                               for r in range(world)], dim=1).flatten()
    assert torch.equal(interleaved, whole[: len(interleaved)])
    s0 = TrainBatchSampler(n, bs, seed=7, epoch=3, rank=0, world_size=world).rank_indices()
    s1 = TrainBatchSampler(n, bs, seed=7, epoch=3, rank=0, world_size=world).rank_indices()
    assert torch.equal(s0, s1)
    other_epoch = TrainBatchSampler(n, bs, seed=7, epoch=4, rank=0, world_size=world).rank_indices()
    assert not torch.equal(s0, other_epoch)


def test_val_shards_cover_everything_once() -> None:
    for n, world, bs in ((103, 4, 5), (3, 4, 2), (50, 1, 7)):
        got = [i for r in range(world) for b in ShardBatchSampler(n, bs, rank=r, world_size=world) for i in b]
        assert sorted(got) == list(range(n)) and len(got) == n


class CountingDataset(Dataset):
    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, []

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i):
        self.calls.append(i)
        return self.inner[i]

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)


def test_start_batch_resumes_exactly_without_loading_skipped(clips: Path) -> None:
    cfg = cfg_for(clips, augment_flip=True, augment_random_crop=True)
    ds = build_datasets(cfg).train
    full = [x.frames for x in make_loader(ds, cfg, train=True, epoch=2, pin_memory=False)]
    counted = CountingDataset(ds)
    resumed = [x.frames for x in make_loader(counted, cfg, train=True, epoch=2, start_batch=5, pin_memory=False)]
    assert len(resumed) == len(full) - 5
    assert all(torch.equal(a, b) for a, b in zip(full[5:], resumed))
    assert len(counted.calls) == len(resumed) * cfg.train.batch_size, "skipped batches must not be loaded"


def test_augmentation_depends_only_on_seed_epoch_index(clips: Path) -> None:
    cfg = cfg_for(clips, augment_flip=True, augment_random_crop=True)
    a = build_datasets(cfg).train
    b = build_datasets(cfg).train
    a.set_epoch(3)
    b.set_epoch(3)
    for i in (0, 5, 50):
        assert torch.equal(a[i], b[i])
        assert torch.equal(a[i], a[i])
    plain = build_datasets(cfg_for(clips)).train
    changed = sum(not torch.equal(a[i], plain[i]) for i in range(40))
    assert changed > 20, "flips and crops should change most windows"
    a.set_epoch(4)
    assert sum(not torch.equal(a[i], b[i]) for i in range(40)) > 10, "a new epoch draws new augmentations"
    other_seed = build_datasets(cfg_for(clips, seed=1, augment_flip=True, augment_random_crop=True)).train
    other_seed.set_epoch(3)
    assert sum(not torch.equal(other_seed[i], b[i]) for i in range(40)) > 10
    x = b[0]
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 16, 16)


def test_flip_only_mirrors(clips: Path) -> None:
    ds = build_datasets(cfg_for(clips, augment_flip=True)).train
    plain = build_datasets(cfg_for(clips)).train
    for i in range(20):
        x, y = ds[i], plain[i]
        assert torch.equal(x, y) or torch.equal(x, y.flip(-1))


def test_workers_give_identical_batches(clips: Path) -> None:
    cfg0 = cfg_for(clips, augment_flip=True, augment_random_crop=True)
    cfg2 = cfg_for(clips, augment_flip=True, augment_random_crop=True, num_workers=2)
    ds = build_datasets(cfg0).train
    a = [x.frames for x in make_loader(ds, cfg0, train=True, epoch=1, pin_memory=False)]
    b = [x.frames for x in make_loader(ds, cfg2, train=True, epoch=1, pin_memory=False)]
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
    assert a[0].shape == (4, 4, 3, 16, 16)


def test_val_loader_no_shuffle_no_drop(clips: Path) -> None:
    cfg = cfg_for(clips, validation_split_fraction=0.3, batch_size=7)
    b = build_datasets(cfg)
    assert b.val is not None
    batches = [x.frames for x in make_loader(b.val, cfg, train=False, pin_memory=False)]
    stacked = torch.cat(batches)
    assert len(stacked) == len(b.val)
    assert torch.equal(stacked[0], b.val[0]) and torch.equal(stacked[-1], b.val[len(b.val) - 1])
    two = [torch.cat([x.frames for x in make_loader(b.val, cfg, train=False, rank=r, world_size=2, pin_memory=False)])
           for r in range(2)]
    assert torch.equal(torch.cat(two), stacked)


def test_too_few_windows_for_a_batch(clips: Path) -> None:
    cfg = cfg_for(clips, batch_size=64)
    ds = build_datasets(cfg).train
    with pytest.raises(UserError, match="fewer than one batch per rank"):
        make_loader(ds, cfg, train=True, world_size=2)


def test_model_range_round_trip() -> None:
    x = torch.arange(256, dtype=torch.uint8)
    y = to_model_range(x)
    assert y.dtype == torch.float32 and y.min() == -1 and y.max() == 1
    assert torch.equal(to_uint8(y), x)
    assert torch.equal(to_uint8(torch.tensor([-3.0, 5.0])), torch.tensor([0, 255], dtype=torch.uint8))


class _CollectingDataset(Dataset):
    """Each item runs the worker's garbage collector, as any allocation-heavy __getitem__ eventually does."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        import gc

        gc.collect()
        return torch.full((2, 3, 4, 4), i, dtype=torch.uint8)


@pytest.mark.timeout(120)
def test_workers_do_not_free_the_parents_decoders(tmp_path: Path, clips: Path) -> None:
    """A video read abandoned mid-file inside a reference cycle is garbage holding FFmpeg's decoder threads. Freed in a
    forked worker (threads that do not exist there) it hangs: the loader collects it in the parent before forking."""
    from wubugen.data.video_io import FrameFormat, read_video
    from wubugen.media import write_video

    video = write_video(tmp_path / "v.mp4", np.random.default_rng(1).integers(0, 256, (12, 32, 32, 3), np.uint8), 10.0)
    reader = read_video(video, FrameFormat(32, 32, 3, "stretch"))
    next(reader)  # suspended with the container open and the decoder's threads running
    cycle: list = [reader]
    cycle.append(cycle)
    del reader, cycle
    loader = make_loader(_CollectingDataset(), cfg_for(clips, num_workers=2), train=False, pin_memory=False)
    assert sum(int(b.frames.shape[0]) for b in loader) == 8
