"""Which ops make the large copies of a compiled training step (no CUDA-graph replay): every aten::copy_ of at least
`--min-elements` elements over two profiled steps, grouped by shape and parent-op chain, GPU ms per step.

usage: python benchmarks/probe_copies.py [--preset launcher] [--precision bf16] [--batch 4]
"""
from __future__ import annotations

import argparse
import collections
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_step import build, make_inputs  # noqa: E402
from wubugen.config import build_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="launcher")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--min-elements", type=int, default=2_000_000)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("probe_copies.py needs a CUDA device")
    from torch.profiler import ProfilerActivity, profile

    cfg = build_config(args.preset, overrides={"precision": args.precision, "batch_size": args.batch,
                                               "cuda_graphs": False})
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    _, _, runner, _, _ = build(cfg, device, False)
    inputs = make_inputs(cfg, device, 2, None)
    for i in range(5):  # compilation and cuDNN's autotuning
        runner.run([inputs[i % 2][0]], 1e-4, True)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        for i in range(2):
            runner.run([inputs[i % 2][0]], 1e-4, True)
        torch.cuda.synchronize()
    groups: dict[tuple[str, str], list] = collections.defaultdict(lambda: [0, 0.0])
    for ev in prof.events():
        if ev.name != "aten::copy_" or not ev.input_shapes or not ev.input_shapes[0]:
            continue
        if math.prod(ev.input_shapes[0]) < args.min_elements:
            continue
        chain, parent = [], ev.cpu_parent
        while parent is not None and len(chain) < 6:
            chain.append(parent.name)
            parent = parent.cpu_parent
        g = groups[(str(ev.input_shapes[0]), " < ".join(chain))]
        g[0] += 1
        g[1] += ev.device_time_total / 1e3 / 2
    print(f"card: {torch.cuda.get_device_name()}; {args.preset} {args.precision} batch {args.batch}")
    for (shape, chain), (count, ms) in sorted(groups.items(), key=lambda kv: -kv[1][1]):
        print(f"{ms:8.3f} ms/step  x{count // 2}  {shape}\n          {chain}")


if __name__ == "__main__":
    main()
