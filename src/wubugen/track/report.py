"""Loss and metric curves from `metrics.jsonl` as one PNG (matplotlib, Agg: no display needed)."""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless machines and worker processes have no display
import matplotlib.pyplot as plt  # noqa: E402

from wubugen.errors import UserError  # noqa: E402
from wubugen.media import atomic_output  # noqa: E402

# (title, keys, log-scale y): the guide's keys (DESIGN §5), in the order one reads a run. Keys that are absent are
# skipped; keys not listed here are plotted afterwards, one panel per prefix ("q_ctrl_gen/...").
PANELS: list[tuple[str, list[str], bool]] = [
    ("reconstruction", ["train/loss_recon"], False),
    ("KL", ["train/loss_kl"], False),
    ("generator", ["train/loss_g_adv", "train/loss_g_total"], False),
    ("discriminator", ["train/loss_d_real", "train/loss_d_fake", "train/loss_d_total"], False),
    ("learning rates", ["train/lr_gen", "train/lr_disc"], True),
    ("lambda_kl", ["train/lambda_kl"], True),
    ("val PSNR (dB)", ["val/avg_val_psnr"], False),
    ("val SSIM", ["val/avg_val_ssim"], False),
    ("val LPIPS", ["val/avg_val_lpips"], False),
    ("val recon MSE", ["val/avg_val_recon_mse"], True),
]
NCOLS = 3


def read_metrics(metrics_jsonl: Path) -> dict[str, list[tuple[int, float]]]:
    """key -> [(step, value)] sorted by step; for a step logged twice (a resumed run) the later line wins.

    A torn last line (the process was killed mid-write) is ignored; a bad line elsewhere is a UserError.
    """
    if not metrics_jsonl.is_file():
        raise UserError(f"{metrics_jsonl} does not exist")
    lines = metrics_jsonl.read_text(encoding="utf-8").split("\n")
    by_key: dict[str, dict[int, float]] = defaultdict(dict)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # no newline after it: the write was cut short
                continue
            raise UserError(f"{metrics_jsonl}:{i + 1} is not valid JSON") from None
        for k, v in rec.get("values", {}).items():
            if v is None or isinstance(v, bool):
                continue
            if isinstance(v, str):
                v = float(v)  # "nan", "inf", "-inf"
            if isinstance(v, (int, float)):
                by_key[k][int(rec["step"])] = float(v)
    return {k: sorted(d.items()) for k, d in by_key.items()}


def _panels(keys: set[str]) -> list[tuple[str, list[str], bool]]:
    panels = []
    listed = set()
    for title, ks, log in PANELS:
        present = [k for k in ks if k in keys]
        listed.update(ks)
        if present:
            panels.append((title, present, log))
    rest: dict[str, list[str]] = defaultdict(list)
    for k in sorted(keys - listed):
        rest[k.split("/", 1)[0] if "/" in k else "other"].append(k)
    panels.extend((prefix, ks, False) for prefix, ks in rest.items())
    return panels


def plot_losses(metrics_jsonl: str | Path, out_png: str | Path) -> Path:
    """Write a grid of curves for whatever keys `metrics_jsonl` holds. Returns out_png."""
    series = read_metrics(Path(metrics_jsonl))
    panels = _panels(set(series))
    nrows = max(1, math.ceil(len(panels) / NCOLS))
    fig, axes = plt.subplots(nrows, NCOLS, figsize=(5 * NCOLS, 3.2 * nrows), squeeze=False)
    try:
        for ax in axes.flat[len(panels):]:
            ax.axis("off")
        if not panels:
            axes.flat[0].text(0.5, 0.5, "no metrics logged yet", ha="center", va="center")
        for ax, (title, keys, log) in zip(axes.flat, panels):
            for k in keys:
                steps, values = zip(*series[k])
                ax.plot(steps, values, label=k.split("/", 1)[-1], marker="." if len(steps) < 30 else None, lw=1)
            positive = all(v > 0 for k in keys for _, v in series[k] if math.isfinite(v))
            if log and positive:
                ax.set_yscale("log")
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if len(keys) > 1 or title != keys[0].split("/", 1)[-1]:
                ax.legend(fontsize=7)
        fig.tight_layout()
        out = Path(out_png)
        with atomic_output(out) as tmp:
            fig.savefig(tmp, format="png", dpi=90)
    finally:
        plt.close(fig)
    return out
