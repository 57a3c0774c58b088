"""Tables and plots for the multi-GPU measurements (docs/multi-gpu.md, docs/benchmarks.md).

Scaling: the JSONs of `bench_step.py` run with 1, 2, 4, ... GPUs (the same rows, equal per-GPU batch) as one markdown
table with scaling efficiency (clips/s at N over N x clips/s at 1) and, for N > 1, the step's compute time alone, the
all-reduce time it did not hide, and the all-reduce alone (bench_step's DDP breakdown):

    python benchmarks/ddp_report.py scaling bench_out/ddp_n1.json bench_out/ddp_n2.json bench_out/ddp_n4.json

Curves: the `metrics.jsonl` of training runs at the same global batch (one GPU at batch 16 against four at batch 4)
as a PNG of their loss curves and a table of the mean of each loss over blocks of steps and the largest relative gap:

    python benchmarks/ddp_report.py curves --out curves.png 1xb16=runs/g1/metrics.jsonl 4xb4=runs/g4/metrics.jsonl
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from wubugen.track.report import read_metrics  # noqa: E402

CURVE_KEYS = ["train/loss_recon", "train/loss_kl", "train/loss_g_adv", "train/loss_d_total"]
SCHEDULE_KEYS = ["train/lr_gen", "train/lr_disc", "train/lambda_kl"]


def scaling_table(paths: list[Path]) -> str:
    """One line per (row, world size), rows in the order of the first file; efficiency against world size 1."""
    by_world: dict[int, dict[str, dict]] = {}
    order: list[str] = []
    for p in paths:
        for r in json.loads(p.read_text()):
            if "error" in r:
                continue
            w = int(r["world_size"])
            by_world.setdefault(w, {})[r["row"]] = r
            if r["row"] not in order:
                order.append(r["row"])
    if 1 not in by_world:
        raise SystemExit("scaling needs the one-GPU JSON (world_size 1) among the files")
    card = next(iter(by_world[1].values()))["card"]
    lines = [f"card: {card}", "",
             "| row | per-GPU batch | GPUs | ms/step | clips/s | scaling efficiency | compute alone ms | exposed all-reduce ms "
             "| all-reduce alone ms (bus GB/s) | peak GiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in order:
        one = by_world[1].get(name)
        for w in sorted(by_world):
            r = by_world[w].get(name)
            if r is None:
                continue
            eff = f"{100 * r['clips_per_s'] / (w * one['clips_per_s']):.1f}%" if one else "-"
            if "compute_s" in r:
                comp = f"{r['compute_s'] * 1000:.2f}"
                exposed = f"{(r['s_per_step'] - r['compute_s']) * 1000:.2f}"
                ar = f"{r['allreduce_s'] * 1000:.2f} ({r['allreduce_busbw_gbs']:.0f})"
            else:
                comp, exposed, ar = f"{r['s_per_step'] * 1000:.2f}", "-", "-"
            lines.append(f"| {name} | {r['batch_per_gpu']} | {w} | {r['s_per_step'] * 1000:.2f} | {r['clips_per_s']:.1f} "
                         f"| {eff} | {comp} | {exposed} | {ar} | {r['peak_mem_gib']:.2f} |")
    return "\n".join(lines)


def block_means(series: list[tuple[int, float]], block: int) -> dict[int, float]:
    """Mean of the finite values in each block of `block` steps, keyed by the block's last step."""
    out: dict[int, list[float]] = {}
    for step, v in series:
        if math.isfinite(v):
            out.setdefault(((step - 1) // block + 1) * block, []).append(v)
    return {k: sum(v) / len(v) for k, v in sorted(out.items())}


def first_difference(data: dict[str, dict[str, list[tuple[int, float]]]], keys: list[str],
                     rtol: float = 1e-6) -> tuple[int, str] | None:
    """The first logged step at which any of `keys` differs between the runs (None: never, or keys absent)."""
    best: tuple[int, str] | None = None
    for k in keys:
        if not all(k in d for d in data.values()):
            continue
        maps = [dict(d[k]) for d in data.values()]
        for step in sorted(set.intersection(*(set(m) for m in maps))):
            vals = [m[step] for m in maps]
            if max(vals) - min(vals) > rtol * max(abs(v) for v in vals):
                if best is None or step < best[0]:
                    best = (step, k)
                break
    return best


def curves(runs: dict[str, Path], out_png: Path | None, block: int) -> str:
    data = {name: read_metrics(p) for name, p in runs.items()}
    names = list(runs)
    keys = [k for k in CURVE_KEYS if all(k in d for d in data.values())]
    if not keys:
        raise SystemExit(f"no loss key common to all runs (looked for {', '.join(CURVE_KEYS)})")
    lines = []
    first = first_difference(data, SCHEDULE_KEYS)
    if first is not None:
        lines += [f"learning rates and lambda_kl: the same in every run until step {first[0]}, where {first[1]} first "
                  f"differs (the Q-controllers' decisions follow the losses; from there the runs are two trainings)"]
    for k in keys:
        means = {n: block_means(data[n][k], block) for n in names}
        steps = sorted(set.intersection(*(set(m) for m in means.values())))
        lines += ["", f"{k}, mean over blocks of {block} steps:", "",
                  "| steps to | " + " | ".join(names) + " | relative gap |", "|---|" + "---|" * (len(names) + 1)]
        for s in steps:
            vals = [means[n][s] for n in names]
            gap = (max(vals) - min(vals)) / max(abs(sum(vals) / len(vals)), 1e-12)
            lines.append(f"| {s} | " + " | ".join(f"{v:.4g}" for v in vals) + f" | {100 * gap:.1f}% |")
    if out_png is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.6), squeeze=False)
        for ax, k in zip(axes[0], keys):
            for n in names:
                xs, ys = zip(*data[n][k])
                ax.plot(xs, ys, label=n, linewidth=1.0, alpha=0.85)
            ax.set_title(k)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        axes[0][0].legend()
        fig.tight_layout()
        out_png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_png, dpi=110)
        plt.close(fig)
    return "\n".join(lines).lstrip("\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    sc = sub.add_parser("scaling", help="bench_step JSONs at several world sizes -> markdown table")
    sc.add_argument("files", nargs="+", type=Path)
    cu = sub.add_parser("curves", help="name=metrics.jsonl pairs -> loss table (and --out PNG)")
    cu.add_argument("runs", nargs="+", help="name=path/to/metrics.jsonl")
    cu.add_argument("--out", type=Path, default=None, help="write the curves here (PNG)")
    cu.add_argument("--block", type=int, default=100, help="steps per block of the table")
    args = ap.parse_args(argv)
    if args.what == "scaling":
        print(scaling_table(args.files))
    else:
        runs = {}
        for item in args.runs:
            name, sep, path = item.partition("=")
            if not sep:
                raise SystemExit(f"expected name=path/to/metrics.jsonl, got {item!r}")
            runs[name] = Path(path)
        print(curves(runs, args.out, args.block))


if __name__ == "__main__":
    main()
