"""GroupNorm -> SiLU at the launcher step's map shapes, compiled by inductor, forward + backward, with GroupNorm's
statistics as one reduction per (sample, group) (F.group_norm) and in chunks of rows (models/group_norm.py,
`--split_norm_stats`): whether the chunked form brings GroupNorm's kernels near their memory-traffic floor (issue 19:
4.0 ms of GroupNorm kernels in a 23.4 ms compiled step on an H100, about four times that floor).

Each map is bf16 and channels-last-3d as a conv's output under autocast there; the norm runs in fp32 and the output is
cast back to bf16 (as the next conv reads it); the gradient arrives in bf16. The floor counts one read of x and one
write of y forward, and reads of x and dy and a write of dx backward, at the copy bandwidth measured here.

usage: python benchmarks/norm_kernels.py [--check] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from conv_layers import median_ms  # noqa: E402  (the same timer)
from wubugen.models.group_norm import group_norm_split  # noqa: E402

# (name, B, C, T, H, W): the plain backbone's maps at batch 4 (8 groups), D's at batch 8 are InstanceNorm's
SHAPES = [("64 @256", 4, 64, 3, 256, 256), ("128 @128", 4, 128, 3, 128, 128), ("256 @64", 4, 256, 3, 64, 64)]


def plain(x, w, b):
    return F.silu(F.group_norm(x.float(), 8, w, b, 1e-6)).to(x.dtype)


def split(x, w, b):
    return F.silu(group_norm_split(x.float(), 8, w, b, 1e-6)).to(x.dtype)


def copy_bandwidth(n: int = 1 << 28) -> float:
    """GB/s of a device-to-device copy of n bytes (read + write counted)."""
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(20):
        b.copy_(a)
    e.record()
    e.synchronize()
    return 2 * n * 20 / (s.elapsed_time(e) / 1e3) / 1e9


def time_fn(fn, shape, iters: int = 30) -> float:
    _, b, c, t, h, w = shape
    x = torch.randn(b, c, t, h, w, device="cuda", dtype=torch.bfloat16).contiguous(
        memory_format=torch.channels_last_3d).requires_grad_()
    wt = torch.randn(c, device="cuda", requires_grad=True)
    bs = torch.randn(c, device="cuda", requires_grad=True)
    gy = torch.randn_like(x)

    def once():
        fn(x, wt, bs).backward(gy)

    return median_ms(once, iters)


def check() -> None:
    """Values and gradients of the two forms agree in float64 on the CPU."""
    torch.manual_seed(0)
    x = torch.randn(2, 32, 3, 16, 16, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last_3d).requires_grad_()
    w, b = torch.randn(32, dtype=torch.float64), torch.randn(32, dtype=torch.float64)
    ya, yb = F.silu(F.group_norm(x, 8, w, b, 1e-6)), F.silu(group_norm_split(x, 8, w, b, 1e-6))
    gy = torch.randn_like(ya)
    (ga,), (gb,) = torch.autograd.grad(ya, x, gy), torch.autograd.grad(yb, x, gy)
    err = max((ya - yb).abs().max().item(), (ga - gb).abs().max().item())
    assert err < 1e-10, err
    print(f"check: chunked GroupNorm equals F.group_norm (max abs difference {err:.1e})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.check:
        check()
        return
    bw = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}, copy bandwidth {bw:.0f} GB/s", flush=True)
    rows = []
    print("| map | F.group_norm (ms) | chunked (ms) | floor (ms) |\n|---|---|---|---|", flush=True)
    for shape in SHAPES:
        n = shape[1] * shape[2] * shape[3] * shape[4] * shape[5]
        floor = n * 2 * 5 / (bw * 1e9) * 1e3  # x, y forward; x, dy, dx backward; 2 bytes each
        r = {"map": shape[0], "floor_ms": floor}
        for name, fn in (("plain", plain), ("split", split)):
            torch._dynamo.reset()
            r[name + "_ms"] = time_fn(torch.compile(fn, dynamic=False), shape)
        rows.append(r)
        print(f"| {r['map']} | {r['plain_ms']:.3f} | {r['split_ms']:.3f} | {floor:.3f} |", flush=True)
        if args.json:  # after every row: a call cut short keeps what it measured
            Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "copy_GBps": bw,
                                                   "rows": rows}, indent=1))

if __name__ == "__main__":
    main()
