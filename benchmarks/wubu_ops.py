"""Count the operators that launch work in the WuBu region-code path of a preset, forward and backward.

Eager WuBu is latency-bound on a GPU: at 64x64, batch 32, its thousands of small kernels cost about a third of the
launcher's steps/s on an H200 (docs/results.md, calls 11-13), whatever their size. This counts them on the CPU, where
each dispatched compute operator is one kernel launch on CUDA (views and other metadata-only operators are left out),
so a change to the WuBu math can be judged before a GPU is at hand:

    python benchmarks/wubu_ops.py [--preset launcher] [--image 64] [--batch 2] [--top 15] [--fused]

`--fused` also compiles the hyperbolic part of a level (models/wubu.py poincare_level, what `--compile_wubu_maps`
compiles) with inductor on the CPU (about a minute of C++ compilation on a cold cache) and counts the kernels it
generates for one call, forward and backward, against that part's eager operators.
"""
from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from wubugen.config import build_config  # noqa: E402
from wubugen.models.vaegan import build_model  # noqa: E402

# operators that only make a new view or read metadata: no kernel on CUDA
METADATA = {"view", "_unsafe_view", "t", "expand", "permute", "transpose", "unsqueeze", "squeeze", "select", "slice",
            "as_strided", "alias", "detach", "reshape", "unflatten", "flatten", "split", "chunk", "unbind", "narrow",
            "split_with_sizes", "lift_fresh", "empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided",
            "is_same_size", "_to_copy_noop", "diagonal", "movedim", "expand_as", "view_as", "unfold", "_reshape_alias"}


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        if name not in METADATA:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


def count_codes_ops(preset: str, image: int, batch: int, overrides: dict | None = None) -> collections.Counter:
    """Operators of one forward and backward of the encoder's region codes (B, R, D_t) of `preset`."""
    cfg = build_config(preset, overrides={"image_h": image, "image_w": image, **(overrides or {})})
    torch.manual_seed(0)
    enc = build_model(cfg.model, cfg.geometry).encoder
    t = cfg.encoder_frames
    x = torch.randn(batch * t, cfg.data.num_channels, image, image)
    counter = OpCounter()
    with counter:
        codes = enc.region_codes_of(None, x, batch, t, None)
        codes.float().pow(2).mean().backward()
    return counter.counts


def level_ops(dim: int, rows: int = 64, points: int = 4, fused: bool = False) -> int:
    """Operators (eager) or generated kernels (fused) of one poincare_level call, forward and backward."""
    from wubugen.models.wubu import level_maps

    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(rows, dim, generator=gen), torch.tensor(1.0), torch.tensor(1.0), torch.tensor(0.8),
          torch.randn(dim, generator=gen) * 0.01, torch.randn(points, dim, generator=gen) * (0.5 / dim ** 0.5)]
    xs = [x.requires_grad_() for x in xs]
    grads = [torch.ones(rows, dim), torch.ones(rows, dim), torch.ones(dim)]  # d(out): no loss operators counted

    def run(fn):
        torch.autograd.backward(fn(*xs), grads)

    if not fused:
        counter = OpCounter()
        with counter:
            run(level_maps(False, False))
        return sum(counter.counts.values())
    import torch._inductor.metrics as metrics

    metrics.reset()
    run(level_maps(False, True))
    return metrics.generated_kernel_count


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="launcher")
    ap.add_argument("--image", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--euclidean", action="store_true", help="the --wubu_euclidean ablation")
    ap.add_argument("--fused", action="store_true", help="also compile a level's hyperbolic part and count its kernels")
    args = ap.parse_args(argv)
    over = {"wubu_euclidean": True} if args.euclidean else {}
    counts = count_codes_ops(args.preset, args.image, args.batch, over)
    print(f"{sum(counts.values())} operators (forward + backward) in the region codes of --preset {args.preset} "
          f"at {args.image}x{args.image}" + (", Euclidean" if args.euclidean else ""))
    for name, n in counts.most_common(args.top):
        print(f"  {name:<28} {n}")
    if args.fused:
        import os
        import tempfile

        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp())  # a cold cache: every kernel counted
        cfg = build_config(args.preset)
        levels = cfg.model.wubu_s.num_levels + cfg.model.wubu_t.num_levels
        eager, fused = level_ops(128), level_ops(128, fused=True)
        total = sum(counts.values())
        print(f"one level's hyperbolic part: {eager} operators eagerly, {fused} kernels compiled (forward + backward); "
              f"with {levels} levels the region codes launch about {total - levels * (eager - fused)} instead of {total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
