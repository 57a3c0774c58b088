"""The training step's floors, counted on the CPU: every aten operator of one step (forward and both backwards, D
included; the optimizer step left out) with its FLOPs (torch.utils.flop_counter's formulas) and the bytes of its
tensor inputs and outputs, summed by operator. Against a card's matrix rate and memory bandwidth this gives two lower
bounds on the step's GPU time: all matrix work at the measured rate, and all memory traffic at full bandwidth, each
as if nothing else ran. A measured step far above both is held back by kernel efficiency and the count of small
kernels, not by the model's size. An estimate for planning, never a measured GPU time.

Counted in fp32 (CPU autocast in bf16 took over 20 minutes on the 2-core machine): a bf16 step on the GPU moves
less, its convolutions reading and writing 2-byte tensors, so its memory floor is lower still.

usage: python benchmarks/roofline.py [--preset launcher] [--batch 4] [--set key=value ...] [--tflops 784] [--tbps 4.0]
       [--top 25]
"""
from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from wubugen.config import build_config  # noqa: E402
from wubugen.inspect_cmd import random_clip  # noqa: E402
from wubugen.train.players import build_players  # noqa: E402
from wubugen.train.step import players_forward_backward  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from wubu_ops import METADATA  # noqa: E402  (views and metadata-only operators: no data moved)

def tensor_bytes(values) -> int:
    """Bytes of the distinct tensors among `values` (a tensor passed twice counts once)."""
    seen, total = set(), 0
    for t in values:
        if isinstance(t, torch.Tensor):
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel())
            if key not in seen:
                seen.add(key)
                total += t.numel() * t.element_size()
    return total


class OpCounter(TorchDispatchMode):
    """Per operator: [calls, FLOPs, bytes of its tensor inputs and outputs]."""

    def __init__(self):
        super().__init__()
        self.stats: dict[str, list] = collections.defaultdict(lambda: [0, 0, 0])

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name in METADATA:
            return out
        flops = 0
        if func.overloadpacket in flop_registry:
            flops = flop_registry[func.overloadpacket](*args, **kwargs, out_val=out)
        s = self.stats[name]
        s[0] += 1
        s[1] += flops
        s[2] += tensor_bytes(tree_flatten((args, kwargs))[0]) + tensor_bytes(tree_flatten(out)[0])
        return out


def count_step(players, clip: torch.Tensor) -> dict[str, list]:
    """One step's passes in fp32, the adversarial term on when lambda_gan is (as after --gan_start_step)."""
    cfg = players.cfg
    adv = cfg.train.lambda_gan > 0
    players_forward_backward(players, clip, None, cfg.train.lambda_kl, adv)  # warm (lazy state)
    for p in players.g_params + players.d_params:
        p.grad = None
    counter = OpCounter()
    with counter:
        players_forward_backward(players, clip, None, cfg.train.lambda_kl, adv)
    return counter.stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="launcher")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--tflops", type=float, default=784.0, help="matrix rate, TFLOP/s (H200's measured bf16: 784)")
    ap.add_argument("--tbps", type=float, default=4.0, help="memory bandwidth, TB/s (H200: 4.8 peak)")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args(argv)
    over: dict = {"batch_size": a.batch, "wubu_dropout": 0.0, "use_wubu_motion_branch": False}
    for kv in a.set:
        k, v = kv.split("=", 1)
        over[k] = {"true": True, "false": False}.get(v.lower(), v)
    cfg = build_config(a.preset, overrides=over)
    torch.manual_seed(0)
    players = build_players(cfg, torch.device("cpu"))
    stats = count_step(players, random_clip(cfg, a.batch, torch.Generator().manual_seed(0)))
    calls = sum(s[0] for s in stats.values())
    flops = sum(s[1] for s in stats.values())
    moved = sum(s[2] for s in stats.values())
    bw, rate = a.tbps * 1e12, a.tflops * 1e12
    print(f"{a.preset}, batch {a.batch}, fp32: {calls} operators, "
          f"{flops / 1e12:.3f} TFLOP, {moved / 1e9:.2f} GB moved")
    print(f"floors: matrix work {flops / rate * 1e3:.2f} ms at {a.tflops:g} TFLOP/s; memory traffic "
          f"{moved / bw * 1e3:.2f} ms at {a.tbps:g} TB/s")
    print(f"{'operator':34s} {'calls':>6s} {'GFLOP':>9s} {'GB':>7s} {'floor ms':>9s}")
    for name, (c, f, b) in sorted(stats.items(), key=lambda kv: -max(kv[1][1] / rate, kv[1][2] / bw))[:a.top]:
        print(f"{name:34s} {c:6d} {f / 1e9:9.1f} {b / 1e9:7.2f} {max(f / rate, b / bw) * 1e3:9.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
