"""Optical-flow backends: torchvision RAFT with local weights, and OpenCV's DIS flow (no weights).

RAFT (`raft_small`, `raft_large`):
  * weights come from `--flow_weights PATH` or the torch hub cache (`torch.hub.get_dir()/checkpoints/<official file>`);
    nothing is downloaded, and nothing falls back: when the file is missing, or does not fit the architecture, a one-line
    UserError says where wubugen looked and how to fix it. The loaded weights are never re-initialised (the original re-initialised them);
  * inputs are float images in [-1, 1]; frames whose short side is under 128 px are upsampled by an integer factor
    (RAFT's minimum size; its feature maps are 1/8 of the input), then replicate-padded to multiples of 8 (RAFT's own size
    check is not relied on; Teed & Deng, RAFT, ECCV 2020); the flow is cropped, pooled back to the frame size and divided by the factor,
    so it is in pixels of the frame;
  * all frame pairs go through the net in one call (the original ran one pair at a time); the last refinement is the flow.
DIS (`dis`): OpenCV's dense inverse-search flow on grayscale uint8 frames, preset MEDIUM (accurate at every size; Kroeger et al.,
Fast Optical Flow using Dense Inverse Search, ECCV 2016), on the CPU. Not differentiable, so it is always frozen.

`FlowEstimator` wraps either behind one call, `estimator(a, b) -> flow`, and knows its cache identity (`key`).
A frozen estimator keeps its net in eval mode whatever its parent's mode (the original let its BatchNorm statistics drift in train mode), runs under no_grad, and leaves
its weights out of the state dict (they are the weights file's, named by the config; checkpoints never carry or override
them).
"""
from __future__ import annotations

import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wubugen.errors import UserError

RAFT_FILES = {"raft_small": "raft_small_C_T_V2-01064c6d.pth", "raft_large": "raft_large_C_T_SKHT_V2-ff5fadd5.pth"}
RAFT_MIN_SIZE = 128
RAFT_UPDATES = 12
DIS_PRESET = "medium"
FLOW_BACKEND_VERSION = 1  # bump when the flow a backend computes for the same frames and weights changes
_GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float32)


# --------------------------------------------------------------------------------------------------------------------
# RAFT weights
# --------------------------------------------------------------------------------------------------------------------
def hub_weights_path(kind: str) -> Path:
    """Where torchvision would cache the official weights of `kind` (follows $TORCH_HOME at call time)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / RAFT_FILES[kind]


def raft_weights_path(kind: str, weights: str | os.PathLike[str] | None) -> Path:
    """The weights file to load for `kind`: `weights` if given, else the hub cache file. Raises a one-line UserError
    naming the path(s) looked at and the fixes when there is none."""
    if kind not in RAFT_FILES:
        raise ValueError(f"unknown RAFT kind {kind!r}")
    if weights:
        p = Path(weights).expanduser()
        if p.is_file():
            return p
        raise UserError(f"--flow_weights {p}: no such file (the {kind} weights, e.g. {RAFT_FILES[kind]}); "
                        f"give an existing file, or use --optical_flow_net_type dis (no weights needed)")
    p = hub_weights_path(kind)
    if p.is_file():
        return p
    raise UserError(f"{kind} weights not found: looked at {p} (the torch hub cache; nothing is downloaded); copy "
                    f"{RAFT_FILES[kind]} there or pass --flow_weights PATH, or use --optical_flow_net_type dis "
                    f"(no weights needed)")


_FINGERPRINTS: dict[tuple[str, int, int], str] = {}


def weights_fingerprint(path: str | os.PathLike[str]) -> str:
    """sha256 (first 16 hex digits) of a weights file; memoised per (path, size, mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    memo = (str(p), st.st_size, st.st_mtime_ns)
    if memo not in _FINGERPRINTS:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _FINGERPRINTS[memo] = h.hexdigest()[:16]
    return _FINGERPRINTS[memo]


def load_raft(kind: str, weights: str | os.PathLike[str] | None = None) -> tuple[nn.Module, Path]:
    """(torchvision RAFT of `kind` holding the file's weights, in eval mode; the file). See module docstring."""
    from torchvision.models.optical_flow import raft_large, raft_small

    path = raft_weights_path(kind, weights)
    net = (raft_small if kind == "raft_small" else raft_large)(weights=None, progress=False)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"{path}: not a readable torch weights file for {kind} ({type(e).__name__}); give the "
                        f"{RAFT_FILES[kind]} state dict via --flow_weights, or use --optical_flow_net_type dis") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path}: holds a {type(state).__name__}, not a state dict of {kind} weights")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError:
        own = net.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        mismatched = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        other = "raft_large" if kind == "raft_small" else "raft_small"
        raise UserError(f"{path}: does not match the {kind} architecture ({len(missing)} missing, {len(unexpected)} "
                        f"unexpected, {len(mismatched)} mis-shaped tensors; {other} weights?); give {kind} weights "
                        f"via --flow_weights, or pick the matching --optical_flow_net_type") from None
    return net.eval(), path


# --------------------------------------------------------------------------------------------------------------------
# RAFT flow
# --------------------------------------------------------------------------------------------------------------------
def raft_scale(height: int, width: int, min_size: int = RAFT_MIN_SIZE) -> int:
    """Integer upsampling factor that brings the short side to at least `min_size`."""
    return max(1, math.ceil(min_size / min(height, width)))


def raft_flow(net: nn.Module, a: Tensor, b: Tensor, num_updates: int = RAFT_UPDATES) -> Tensor:
    """Flow from frames `a` to frames `b`: (N, C, H, W) floats in [-1, 1] (C = 1 or 3) -> (N, 2, H, W) float32 in pixels
    of the frame. One net call for all N pairs; float32 (autocast off); gradient flows if the net's weights require it."""
    n, c, h, w = a.shape
    with torch.autocast(a.device.type, enabled=False):
        x = torch.cat([a, b], 0).float()
        if c == 1:
            x = x.expand(-1, 3, -1, -1)
        s = raft_scale(h, w)
        if s > 1:
            x = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        hs, ws = h * s, w * s
        ph, pw = (-hs) % 8, (-ws) % 8
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        if ph or pw:
            x = F.pad(x, pad, mode="replicate")
        x = x.contiguous()
        flow = net(x[:n], x[n:], num_flow_updates=num_updates)[-1]
        flow = flow[:, :, pad[2]:pad[2] + hs, pad[0]:pad[0] + ws]
        if s > 1:
            flow = F.avg_pool2d(flow, s) / s
        return flow.float()


# --------------------------------------------------------------------------------------------------------------------
# DIS flow
# --------------------------------------------------------------------------------------------------------------------
def to_gray(frames: np.ndarray) -> np.ndarray:
    """uint8 (T, C, H, W) with C = 1 or 3 (RGB) -> uint8 (T, H, W) (ITU-R BT.601 luma, as OpenCV's RGB2GRAY)."""
    if frames.shape[1] == 1:
        return np.ascontiguousarray(frames[:, 0])
    y = np.tensordot(_GRAY, frames.astype(np.float32), axes=([0], [1]))  # (T, H, W)
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def _dis_instance(preset: str = DIS_PRESET):
    import cv2

    presets = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
               "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
    return cv2.DISOpticalFlow_create(presets[preset])


def dis_flow_gray(gray_a: np.ndarray, gray_b: np.ndarray, threads: int = 1, preset: str = DIS_PRESET) -> np.ndarray:
    """DIS flow from uint8 (P, H, W) frames to uint8 (P, H, W) frames -> float32 (P, 2, H, W) in pixels.
    `threads` > 1 splits the pairs over threads (OpenCV releases the GIL), one DIS instance each."""
    p, h, w = gray_a.shape
    out = np.empty((p, 2, h, w), dtype=np.float32)

    def run(lo: int, hi: int) -> None:
        inst = _dis_instance(preset)
        for i in range(lo, hi):
            f = inst.calc(np.ascontiguousarray(gray_a[i]), np.ascontiguousarray(gray_b[i]), None)  # (H, W, 2)
            out[i] = f.transpose(2, 0, 1)

    threads = max(1, min(threads, p))
    if threads == 1:
        run(0, p)
    else:
        bounds = np.linspace(0, p, threads + 1).astype(int)
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda k: run(bounds[k], bounds[k + 1]), range(threads)))
    return out


def dis_flow(frames: np.ndarray, pairs: np.ndarray, threads: int = 1, preset: str = DIS_PRESET) -> np.ndarray:
    """DIS flow for frame pairs of one clip: frames uint8 (T, C, H, W) (C = 1 or 3), pairs int (P, 2) of frame indices
    (from, to) -> float32 (P, 2, H, W)."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    used = np.unique(pairs)
    gray = np.zeros((frames.shape[0], *frames.shape[2:]), dtype=np.uint8)
    gray[used] = to_gray(np.asarray(frames[used]))
    return dis_flow_gray(gray[pairs[:, 0]], gray[pairs[:, 1]], threads=threads, preset=preset)


def _uint8_from_model_range(x: Tensor) -> np.ndarray:
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()


# --------------------------------------------------------------------------------------------------------------------
# One interface
# --------------------------------------------------------------------------------------------------------------------
class FlowEstimator(nn.Module):
    """`estimator(a, b)`: flow from frames a to frames b, (N, C, H, W) in [-1, 1] -> (N, 2, H, W) float32, on a's device.

    kind: raft_small | raft_large | dis. `key` identifies the flow it computes (backend, weights file hash, settings), for
    the flow cache. `frozen`: no gradient, eval mode always, weights out of the state dict.
    """

    def __init__(self, kind: str, weights: str | os.PathLike[str] | None = None, frozen: bool = True,
                 num_updates: int = RAFT_UPDATES, dis_threads: int | None = None):
        super().__init__()
        self.kind = kind
        self.frozen = frozen
        self.num_updates = num_updates
        self.dis_threads = dis_threads or min(8, os.cpu_count() or 1)
        if kind == "dis":
            if not frozen:
                raise UserError("--optical_flow_net_type dis is not differentiable: it needs --freeze_flow_net")
            self.net = None
            self.weights_path = None
            self.key = f"dis-{DIS_PRESET}-v{FLOW_BACKEND_VERSION}"
        elif kind in RAFT_FILES:
            self.net, self.weights_path = load_raft(kind, weights)
            self.key = (f"{kind}-{weights_fingerprint(self.weights_path)}-u{num_updates}-min{RAFT_MIN_SIZE}"
                        f"-v{FLOW_BACKEND_VERSION}")
            if frozen:
                self.net.requires_grad_(False)
        else:
            raise UserError(f"--optical_flow_net_type must be raft_small, raft_large or dis, not {kind!r}")
        if frozen:
            self.register_state_dict_post_hook(_drop_net_state)
            self.register_load_state_dict_post_hook(_ignore_missing_net)

    @property
    def differentiable(self) -> bool:
        return self.net is not None and not self.frozen

    def train(self, mode: bool = True) -> FlowEstimator:
        super().train(mode)
        if self.frozen and self.net is not None:
            self.net.eval()  # a frozen net never leaves eval mode (its BatchNorm statistics stay the pretrained ones)
        return self

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if a.shape != b.shape or a.dim() != 4:
            raise ValueError(f"frame pairs must be two (N, C, H, W) tensors of one shape, not {tuple(a.shape)} and "
                             f"{tuple(b.shape)}")
        if self.net is None:
            flow = dis_flow_gray(self._gray(a), self._gray(b), threads=self.dis_threads)
            return torch.from_numpy(flow).to(a.device, non_blocking=True)
        if self.frozen:
            with torch.no_grad():
                return raft_flow(self.net, a, b, self.num_updates)
        return raft_flow(self.net, a, b, self.num_updates)

    @staticmethod
    def _gray(x: Tensor) -> np.ndarray:
        return to_gray(_uint8_from_model_range(x))

    def extra_repr(self) -> str:
        return f"kind={self.kind}, frozen={self.frozen}, key={self.key}"


def _drop_net_state(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    for k in [k for k in state_dict if k.startswith(prefix + "net.")]:
        del state_dict[k]


def _ignore_missing_net(module: nn.Module, incompatible) -> None:
    # missing keys are full names from the root module: ours end in "net.<a RAFT state-dict key>"
    if module.net is None:
        return
    own = {"net." + k for k in module.net.state_dict()}
    incompatible.missing_keys[:] = [k for k in incompatible.missing_keys
                                    if not any(k == o or k.endswith("." + o) for o in own)]


def build_flow_estimator(model_cfg) -> FlowEstimator:
    """The configured backend: `optical_flow_net_type`, `flow_weights`, `freeze_flow_net`."""
    return FlowEstimator(model_cfg.optical_flow_net_type, model_cfg.flow_weights, frozen=model_cfg.freeze_flow_net)
