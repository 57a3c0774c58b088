"""The torch Dataset over cached windows, with deterministic augmentation.

Items are uint8 tensors (T, C, H, W): the window's T frames, `frame_skip` apart, straight from the memory-mapped cache
(no decoding, no resizing). Normalisation to [-1, 1] happens on the device (`loader.to_model_range`), so the loader
moves 1 byte per pixel instead of 4.

Augmentation (training only), all frames of a window transformed alike so motion stays consistent:
* flip: horizontal mirror with probability 1/2;
* random crop: a crop of side s * (H, W), s uniform in [0.8, 1], at a uniform position, resized back to (H, W)
  bilinearly (a zoom of up to 1.25x; OpenCV per plane). This keeps one cache for every run instead of caching
  larger frames.
The random numbers come from SeedSequence(seed, epoch, index), never from global state, so a resumed run (same seed,
epoch and index) sees exactly the same pixels whatever the worker count or process.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from wubugen.data.batch import ClipBatch
from wubugen.data.cache import CacheEntry
from wubugen.data.windows import WindowSpec, WindowTable

CROP_MIN_SCALE = 0.8
_MAX_OPEN_MAPS = 256  # memory maps kept open per process (each holds a file descriptor)


class WindowDataset(Dataset):
    """Windows of cached frames. `entries[i]` is source i of `table.source`."""

    def __init__(
        self,
        entries: list[CacheEntry],
        table: WindowTable,
        spec: WindowSpec,
        *,
        names: list[str] | None = None,
        seed: int = 0,
        flip: bool = False,
        random_crop: bool = False,
    ) -> None:
        if len(table) and int(table.source.max()) >= len(entries):
            raise ValueError("window table refers to a source that is not in entries")
        self.paths = [str(e.path) for e in entries]
        self.frame_counts = [e.frames for e in entries]
        self.shapes = [e.shape for e in entries]
        self.names = names if names is not None else [str(e.meta.get("source", e.path)) for e in entries]
        self.table = table
        self.spec = spec
        self.seed = int(seed)
        self.flip = flip
        self.random_crop = random_crop
        self.epoch = 0
        self._maps: OrderedDict[int, np.memmap] = OrderedDict()
        # --- motion branch (wubugen.flow): cached flows served beside the frames, see set_flow ---
        self.flow_paths: list[str] | None = None
        self.flow_steps = 0
        self._flow_maps: OrderedDict[int, np.ndarray] = OrderedDict()

    # The memory maps are per process: workers reopen them (pickling a memmap would copy the whole array).
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = OrderedDict()
        state["_flow_maps"] = OrderedDict()  # motion branch
        return state

    def __len__(self) -> int:
        return len(self.table)

    @property
    def augment(self) -> bool:
        return self.flip or self.random_crop

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation draws `__getitem__` uses."""
        self.epoch = int(epoch)

    def window(self, index: int) -> tuple[int, np.ndarray]:
        """(source index, frame indices (T,)) of window `index`."""
        return int(self.table.source[index]), int(self.table.start[index]) + self.spec.offsets()

    def _frames(self, src: int) -> np.memmap:
        arr = self._maps.get(src)
        if arr is None:
            shape = (self.frame_counts[src], *self.shapes[src])
            arr = np.memmap(self.paths[src], dtype=np.uint8, mode="r", shape=shape)
            self._maps[src] = arr
            if len(self._maps) > _MAX_OPEN_MAPS:
                self._maps.popitem(last=False)
        else:
            self._maps.move_to_end(src)
        return arr

    def _check(self, index: int) -> int:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range [0, {len(self)})")
        return index

    def __getitem__(self, index: int) -> torch.Tensor:
        """The window's frames, uint8 (T, C, H, W) (augmented when augmentation is on)."""
        index = self._check(index)
        src = int(self.table.source[index])
        start = int(self.table.start[index])
        clip = np.array(self._frames(src)[start:start + self.spec.span:self.spec.skip])  # copy out of the map
        if self.augment:
            clip = self._augment(clip, index)
        return torch.from_numpy(clip)

    def flows_of(self, index: int) -> torch.Tensor:
        """With flows attached (set_flow): the window's float16 flows (steps, 2, H, W), augmented as its frames."""
        if not self.flow_steps:
            raise ValueError("no flows attached to this dataset (the motion branch's flow cache does that)")
        index = self._check(index)
        src, start = int(self.table.source[index]), int(self.table.start[index])
        return torch.from_numpy(self._flow_window(src, start, index))

    def __getitems__(self, indices: list[int]) -> ClipBatch:
        """A whole batch: uint8 frames (B, T, C, H, W), copied from the cache straight into one tensor [+ flows].

        In a DataLoader worker the tensor is allocated in shared memory, so it reaches the main process without the
        per-item tensors and the stacking copy of the default collate (one copy per batch instead of two).
        """
        if not indices:
            raise ValueError("empty batch")
        if self.flow_steps:  # motion branch: (frames, flows)
            return self._getitems_with_flow(indices)
        c, h, w = self.shapes[int(self.table.source[int(indices[0])])]
        shape = (len(indices), self.spec.frames, c, h, w)
        out = torch.empty(shape, dtype=torch.uint8)
        if get_worker_info() is not None:
            out.share_memory_()  # still empty: moving it is cheap, and the worker->main transfer then copies nothing
        target = out.numpy()
        for j, index in enumerate(indices):
            index = int(index)
            if not 0 <= index < len(self):
                raise IndexError(f"window {index} out of range [0, {len(self)})")
            if self.augment:
                out[j] = self[index]
            else:
                src, start = int(self.table.source[index]), int(self.table.start[index])
                np.copyto(target[j], self._frames(src)[start:start + self.spec.span:self.spec.skip])
        return ClipBatch(out)

    def draws(self, index: int) -> np.ndarray:
        """The augmentation's random numbers for (seed, epoch, index): [crop scale, crop y, crop x, flip], in [0, 1)."""
        seq = np.random.SeedSequence([self.seed % (1 << 63), self.epoch, int(index)])
        return np.random.default_rng(seq).random(4)

    def _augment(self, clip: np.ndarray, index: int) -> np.ndarray:
        """uint8 (T, C, H, W) -> the same shape, cropped-and-resized and/or mirrored by draws(index)."""
        u_scale, u_y, u_x, u_flip = self.draws(index)  # always all four, so one option does not shift the other
        if self.random_crop:
            t, c, h, w = clip.shape
            s = CROP_MIN_SCALE + (1.0 - CROP_MIN_SCALE) * u_scale
            ch, cw = max(1, round(h * s)), max(1, round(w * s))
            y0, x0 = int(u_y * (h - ch + 1)), int(u_x * (w - cw + 1))
            crop = clip[:, :, y0:y0 + ch, x0:x0 + cw]
            out = np.empty_like(clip)
            # OpenCV on each (H, W) plane: no layout changes, and single-threaded for planes this small, so it stays
            # fast in a busy process (torch's resize stalled on its thread pool there).
            for i in range(t):
                for j in range(c):
                    cv2.resize(crop[i, j], (w, h), dst=out[i, j], interpolation=cv2.INTER_LINEAR)
            clip = out
        if self.flip and u_flip < 0.5:
            clip = np.ascontiguousarray(clip[..., ::-1])
        return clip

    # --- motion branch (wubugen.flow) ---------------------------------------------------------------------------------
    def set_flow(self, entries: list[Any] | None, steps: int = 0) -> None:
        """Serve each window with the cached flows of its first `steps + 1` frames: batches then carry float16 flows
        (B, steps, 2, H, W) (`flows_of` gives one window's), flow j going from window frame j to frame j + 1. `entries[i]`
        (a wubugen.data.flow_cache.FlowEntry) holds source i's flows, frame k -> frame k + frame_skip for every k.
        None detaches the flows."""
        if entries is None or steps <= 0:
            self.flow_paths, self.flow_steps = None, 0
        else:
            if len(entries) != len(self.paths):
                raise ValueError(f"{len(entries)} flow entries for {len(self.paths)} sources")
            if steps > self.spec.frames - 1:
                raise ValueError(f"{steps} flow steps, but windows have {self.spec.frames} frames")
            for e, n, shape in zip(entries, self.frame_counts, self.shapes):
                if e.skip != self.spec.skip or e.pairs != n - self.spec.skip or tuple(e.shape) != tuple(shape[1:]):
                    raise ValueError(f"flow entry {e.path} does not fit its frames")
            self.flow_paths, self.flow_steps = [str(e.path) for e in entries], int(steps)
        self._flow_maps = OrderedDict()

    def _flows(self, src: int) -> np.ndarray:
        arr = self._flow_maps.get(src)
        if arr is None:
            arr = np.load(self.flow_paths[src], mmap_mode="r")
            self._flow_maps[src] = arr
            if len(self._flow_maps) > _MAX_OPEN_MAPS:
                self._flow_maps.popitem(last=False)
        else:
            self._flow_maps.move_to_end(src)
        return arr

    def _flow_window(self, src: int, start: int, index: int) -> np.ndarray:
        k = self.spec.skip
        flow = np.array(self._flows(src)[start:start + self.flow_steps * k:k])  # (steps, 2, H, W) float16
        return self._augment_flow(flow, index) if self.augment else flow

    def _augment_flow(self, flow: np.ndarray, index: int) -> np.ndarray:
        """The frames' augmentation (same draws) applied to their flows: the crop is cut and resized like the frames,
        with the vectors scaled by the zoom; a mirror mirrors the field and negates dx."""
        u_scale, u_y, u_x, u_flip = self.draws(index)
        if self.random_crop:
            t, _, h, w = flow.shape
            s = CROP_MIN_SCALE + (1.0 - CROP_MIN_SCALE) * u_scale
            ch, cw = max(1, round(h * s)), max(1, round(w * s))
            y0, x0 = int(u_y * (h - ch + 1)), int(u_x * (w - cw + 1))
            crop = flow[:, :, y0:y0 + ch, x0:x0 + cw].astype(np.float32)
            out = np.empty((t, 2, h, w), dtype=np.float32)
            for i in range(t):
                for j in range(2):
                    cv2.resize(crop[i, j], (w, h), dst=out[i, j], interpolation=cv2.INTER_LINEAR)
            out[:, 0] *= w / cw
            out[:, 1] *= h / ch
            flow = out.astype(flow.dtype)
        if self.flip and u_flip < 0.5:
            flow = np.ascontiguousarray(flow[..., ::-1])
            flow[:, 0] *= -1
        return flow

    def _getitems_with_flow(self, indices: list[int]) -> ClipBatch:
        c, h, w = self.shapes[int(self.table.source[int(indices[0])])]
        frames = torch.empty((len(indices), self.spec.frames, c, h, w), dtype=torch.uint8)
        flows = torch.empty((len(indices), self.flow_steps, 2, h, w), dtype=torch.float16)
        if get_worker_info() is not None:
            frames.share_memory_()
            flows.share_memory_()
        for j, index in enumerate(indices):
            frames[j], flows[j] = self[index], self.flows_of(index)
        return ClipBatch(frames, flows)

    def describe(self) -> str:
        return f"{len(self)} windows of {self.spec.frames} frames from {len(set(self.table.source.tolist()))} sources"
