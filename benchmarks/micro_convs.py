"""Convolution rewrites tried for the speed issue, timed alone (forward + backward, CUDA events, channels-last):

* the generator's output conv (64 -> 3 channels, 3x3x3, full resolution) with its weight zero-padded to 8 output
  channels for tensor-core tiles, the extra channels sliced away;
* the same conv as one matmul (a 1x1x1 conv) and a shifted sum over its 27 taps (models/tapconv.py), eager and
  compiled (with the tanh that follows it in the generator, against cuDNN's conv + tanh compiled the same way);
* the discriminator's (3, 4, 4) stride (1, 2, 2) 3-D convs on 3 frames as one 2-D conv over time-stacked channels.

The padding and the stacked 2-D convs did not help on an H100 (docs/benchmarks.md) and are not in the model; the taps
won in fp32 only, where the trainer uses them. This keeps the measurements repeatable.
usage: python benchmarks/micro_convs.py [--only-out]
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from wubugen.models.tapconv import tap_conv3d  # noqa: E402

D_SHAPES = [(8, 3, 64, 256), (8, 64, 128, 128), (8, 128, 256, 64), (8, 256, 512, 32), (8, 512, 512, 16), (8, 512, 512, 8)]


def timed(fn, x: torch.Tensor, w: torch.Tensor, dtype, iters: int = 15) -> float:
    def once():
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            y = fn(x, w)
        y.float().square().mean().backward()

    for _ in range(4):
        once()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(iters):
        once()
    e.record()
    e.synchronize()
    return s.elapsed_time(e) / iters


def out_conv(x, w):
    return F.conv3d(x, w, None, 1, 1)


def out_conv_tanh(x, w):
    return torch.tanh(F.conv3d(x, w, None, 1, 1))


def out_tap_tanh(x, w):
    return torch.tanh(tap_conv3d(x, w))


def out_conv_padded(x, w):
    w8 = torch.cat([w, w.new_zeros(-w.shape[0] % 8, *w.shape[1:])]).contiguous(memory_format=torch.channels_last_3d)
    return F.conv3d(x, w8, None, 1, 1)[:, :w.shape[0]]


def d_conv3d(x, w):
    return F.conv3d(x, w, None, (1, 2, 2), (1, 1, 1))


def d_conv_stacked(x, w):
    b, c, t, h, ww = x.shape
    xp = F.pad(x, (0, 0, 0, 0, 1, 1))
    st = torch.stack([xp[:, :, i:i + t] for i in range(3)], 1)  # (B, k, C, T, H, W)
    st = st.permute(0, 3, 1, 2, 4, 5).reshape(b * t, 3 * c, h, ww).contiguous(memory_format=torch.channels_last)
    w2 = w.permute(0, 2, 1, 3, 4).reshape(w.shape[0], 3 * c, 4, 4)
    return F.conv2d(st, w2, None, 2, 1).reshape(b, t, -1, h // 2, ww // 2).permute(0, 2, 1, 3, 4)


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("micro_convs.py needs a CUDA device")
    torch.backends.cudnn.benchmark = True
    cl3 = torch.channels_last_3d
    print(f"card: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    for dtype in (None, torch.bfloat16):
        name = "fp32" if dtype is None else "bf16"
        x = torch.randn(4, 64, 3, 256, 256, device="cuda").contiguous(memory_format=cl3).requires_grad_()
        w = torch.randn(3, 64, 3, 3, 3, device="cuda").contiguous(memory_format=cl3).requires_grad_()
        print(f"{name} output conv 64->3: plain {timed(out_conv, x, w, dtype):.3f} ms, "
              f"padded to 8 {timed(out_conv_padded, x, w, dtype):.3f} ms, "
              f"taps eager {timed(tap_conv3d, x, w, dtype):.3f} ms", flush=True)
        print(f"{name} output conv 64->3 + tanh, compiled: cuDNN {timed(torch.compile(out_conv_tanh), x, w, dtype):.3f} ms, "
              f"taps {timed(torch.compile(out_tap_tanh), x, w, dtype):.3f} ms", flush=True)
        if "--only-out" in sys.argv:
            continue
        tot = [0.0, 0.0]
        for b, cin, cout, hw in D_SHAPES:
            x = torch.randn(b, cin, 3, hw, hw, device="cuda").contiguous(memory_format=cl3).requires_grad_(cin > 3)
            w = torch.randn(cout, cin, 3, 4, 4, device="cuda").contiguous(memory_format=cl3).requires_grad_()
            a, s = timed(d_conv3d, x, w, dtype), timed(d_conv_stacked, x, w, dtype)
            tot[0] += a
            tot[1] += s
            print(f"{name} D conv b{b} {cin}->{cout} at {hw}: 3-D {a:.3f} ms, 2-D over stacked time {s:.3f} ms")
        print(f"{name} D convs in all: 3-D {tot[0]:.2f} ms, 2-D over stacked time {tot[1]:.2f} ms")


if __name__ == "__main__":
    main()
