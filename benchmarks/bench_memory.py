"""What holds the GPU memory at the peak of one training step: the live allocations at that moment, grouped by the
Python lines that made them (model code, compiled-code lines, extern kernels such as cuDNN workspaces).

The step runs without CUDA-graph replay (a replayed graph allocates nothing visible); with `compile` on, the first steps
compile. Uses torch.cuda.memory._record_memory_history over one step after `--warmup` steps.

`--device cpu` (no GPU needed, eager kernels only): the same step on the CPU under torch.profiler's memory profile,
which sorts every live tensor at the step's peak into parameters, optimizer state, gradients, inputs, saved
activations, temporaries and autograd's own; a CPU kernel's scratch is not a cuDNN workspace, so the temporaries are
the CPU's, while the other classes are the ones a GPU step holds too.

usage:
  python benchmarks/bench_memory.py --set precision=fp32
  python benchmarks/bench_memory.py --preset launcher --set precision=fp32 --set activation_checkpointing=true --top 30
  python benchmarks/bench_memory.py --device cpu --set precision=fp32 --set batch_size=4 --warmup 1
"""
from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_step import build, make_inputs  # noqa: E402
from wubugen.config import build_config  # noqa: E402


def live_at_peak(trace: list[dict]) -> tuple[int, dict[int, dict]]:
    """Replay an allocator trace: (largest total of live step-local bytes, the live blocks at that moment)."""
    live: dict[int, dict] = {}
    cur = best = 0
    best_live: dict[int, dict] = {}
    for ev in trace:
        if ev["action"] == "alloc":
            live[ev["addr"]] = ev
            cur += ev["size"]
            if cur > best:
                best, best_live = cur, dict(live)
        elif ev["action"] == "free_completed" and ev["addr"] in live:
            cur -= live.pop(ev["addr"])["size"]
    return best, best_live


def where(ev: dict, depth: int = 4) -> str:
    frames = [f for f in ev.get("frames", []) if f["filename"].endswith(".py")]
    return " < ".join(f"{Path(f['filename']).name}:{f['line']}:{f['name']}" for f in frames[:depth]) or "(no Python frame)"


def cpu_peak_by_class(run_step, warmup: int) -> tuple[int, dict[str, int]]:
    """The CPU step's peak: (live bytes at the step's highest moment, those bytes by torch.profiler's memory class).
    run_step(i) runs step i; `warmup` steps run first, so the optimizer state exists and counts as held memory."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import _CATEGORY_TO_INDEX, MemoryProfileTimeline

    for i in range(warmup):
        run_step(i)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        run_step(warmup)
    # private API: the memory profile behind torch.profiler's export_memory_timeline, read as numbers (one column per
    # class after an unused first one; class None: memory the profiler could not classify)
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline("cpu")  # (times, sizes)
    best = max(range(len(sizes)), key=lambda i: sum(sizes[i]))
    names = [c.name.lower() if c is not None else "unclassified" for c in _CATEGORY_TO_INDEX]
    return sum(sizes[best]), dict(zip(names, sizes[best][1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="launcher")
    ap.add_argument("--set", action="append", default=[], help="config option: name=value")
    ap.add_argument("--warmup", type=int, default=4, help="steps before the recorded one (compilation, cuDNN tuning)")
    ap.add_argument("--top", type=int, default=25, help="groups of live blocks to print")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                    help="cpu: the memory classes at the CPU step's peak (torch.profiler), no GPU needed")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_memory.py needs a CUDA device (it reads the CUDA caching allocator's trace); "
                         "--device cpu counts the memory classes of the CPU step instead")
    over: dict = {"cuda_graphs": False}
    for item in args.set:
        k, _, v = item.partition("=")
        over[k] = {"true": True, "false": False}.get(v.lower(), v)
    cfg = build_config(args.preset, overrides=over)
    dev = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    model, disc, runner, _, _ = build(cfg, dev, False)
    if dev.type == "cuda":
        print(f"parameters and buffers: {torch.cuda.memory_allocated() / 2 ** 30:.3f} GiB")
    inputs = make_inputs(cfg, dev, 2, None)

    def step(i: int) -> None:
        runner.run([inputs[i % 2][0]], cfg.train.lambda_kl, True)

    if dev.type == "cpu":
        peak, by_class = cpu_peak_by_class(step, args.warmup)
        print(f"CPU step peak (tensors live at the step's highest moment): {peak / 2 ** 30:.3f} GiB")
        for name, size in sorted(by_class.items(), key=lambda kv: -kv[1]):
            print(f"{size / 2 ** 20:10.1f} MiB  {name}")
        return
    for i in range(args.warmup):
        step(i)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    print(f"held between steps (+ gradients, optimizer state): {base / 2 ** 30:.3f} GiB")
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.memory._record_memory_history(max_entries=1_000_000)
    step(0)
    torch.cuda.synchronize()
    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    print(f"step peak (max_memory_allocated): {torch.cuda.max_memory_allocated() / 2 ** 30:.3f} GiB")
    best, blocks = live_at_peak(snap["device_traces"][dev.index or 0])
    print(f"step-local allocations live at the peak: {best / 2 ** 30:.3f} GiB")
    groups: collections.Counter[str] = collections.Counter()
    for ev in blocks.values():
        groups[where(ev)] += ev["size"]
    for w, size in groups.most_common(args.top):
        print(f"{size / 2 ** 20:9.1f} MiB  {w}")


if __name__ == "__main__":
    main()
