"""`wubugen report RUN`: one self-contained HTML page (images inlined, no network) of a run or of a phased plan's root.

What it shows, in the order one reads a run:
  * the phases: state, steps, best metric, checkpoint, why each ended (or why it was skipped), health findings;
  * curves of the guide's keys on one step axis across the phases, with the guide's target bands (Rec < 0.15, D_tot in
    0.3-0.65, D_real/D_fake < 0.7, Adv > 0.7 in Phase 1, PSNR 15-18 dB in Phase 1 and 20-22 dB for Phase 3, ln 2),
    phase boundaries, lambda_kl and the Q-controllers' actions, and the health monitor's findings as red marks;
  * the health events, each with the guide's diagnosis and action;
  * reconstruction/prediction strips and fixed-noise samples over time, and the latest videos of each phase.

It reads the run directories' files only (metrics.jsonl, events.jsonl, media.jsonl, summary.json, phases.json), so it
works while a phase is still training.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from wubugen.errors import UserError  # noqa: E402
from wubugen.media import atomic_write_text  # noqa: E402
from wubugen.track.report import read_metrics  # noqa: E402
from wubugen.track.runinfo import is_plan_root, plan_rows, read_json, run_info  # noqa: E402

REPORT_FILE = "report.html"
LN2 = math.log(2)
# (title, keys, guide's bands [(lo, hi, label)], guide's lines [(y, label)], log scale, rules marked on it)
PANELS: list[tuple[str, list[str], list, list, bool, tuple[str, ...]]] = [
    ("Reconstruction loss (Rec)", ["train/loss_recon"], [(0.0, 0.15, "target < 0.15")], [(0.10, "ideal < 0.10")],
     False, ("noise_output", "nonfinite")),
    ("val PSNR (dB)", ["val/avg_val_psnr"], [(15, 18, "Phase 1 target 15-18 dB"), (20, 22, "Phase 3 entry 20-22 dB")],
     [], False, ("noise_output",)),
    ("Discriminator loss (D_tot)", ["train/loss_d_total"], [(0.3, 0.65, "Phase 1: 0.3-0.65")],
     [(LN2, "ln 2: D guessing")], False, ("d_guessing", "d_too_strong", "phase1_ranges")),
    ("D_real / D_fake", ["train/loss_d_real", "train/loss_d_fake"], [(0.0, 0.7, "< 0.7")], [(0.6, "ideal < 0.6")],
     False, ("phase1_ranges",)),
    ("G adversarial loss (Adv)", ["train/loss_g_adv"], [(0.7, None, "> 0.7 expected in Phase 1")], [], False,
     ("d_too_strong", "d_collapsed")),
    ("G total loss (G_tot)", ["train/loss_g_total"], [], [], False, ()),
    ("KL", ["train/loss_kl"], [], [], False, ()),
    ("lambda_kl", ["train/lambda_kl"], [], [], True, ("noise_output",)),
    ("learning rates", ["train/lr_gen", "train/lr_disc"], [], [], True, ("d_too_strong", "d_collapsed", "d_guessing")),
    ("Q-controller LR scales", ["q_ctrl_gen/lrscale", "q_ctrl_disc/lrscale"], [], [], False, ()),
    ("Q-controller momentum scales", ["q_ctrl_gen/momentumscale", "q_ctrl_disc/momentumscale"], [], [], False, ()),
    ("Q-controller epsilon", ["q_ctrl_gen/epsilon", "q_ctrl_disc/epsilon", "q_ctrl_lkl/epsilon"], [], [], False, ()),
    ("Q-controller lambda_kl scale", ["q_ctrl_lkl/lambdaklscale"], [], [], False, ()),
    ("val SSIM", ["val/avg_val_ssim"], [], [], False, ()),
    ("val LPIPS", ["val/avg_val_lpips"], [], [], False, ()),
    ("val colour statistics", ["val/color_mean_gap", "val/color_std_ratio"], [],
     [(0.1, "mean gap 0.1: a colour cast"), (0.5, "spread ratio 0.5: washed out")], False, ("noise_output",)),
]
MEDIA_KEYS = [("samples/val_reconstruction_samples", "validation: context | target | reconstruction"),
              ("samples/train_recon", "training: context | target | reconstruction"),
              ("samples/fixed_noise_generated", "fixed-noise samples")]
VIDEO_KEYS = ["videos/val_reconstruction_samples", "videos/train_recon", "videos/fixed_noise_generated"]
PER_KEY = 8  # images of one key shown across the whole run, evenly spaced
MAX_EVENTS = 300

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;font-size:13px} table{border-collapse:collapse;font-size:13px;background:#fff}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top} th{background:#f0f0f0}
.grid{display:grid;grid-template-columns:repeat(3,1fr);gap:10px} .grid img{width:100%;background:#fff;border:1px solid #ddd}
.gallery{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
figure{margin:0;background:#fff;border:1px solid #ddd;padding:4px} figcaption{font-size:12px;color:#555;margin-top:2px}
figure img{max-height:300px;display:block;image-rendering:pixelated}
.state-done{color:#1a7f37} .state-skipped{color:#9a6700} .state-running{color:#0969da}
.state-interrupted,.state-failed,.state-stopped{color:#cf222e} .rule{font-family:monospace;white-space:nowrap}
"""


def _data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _png_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a torn last line of a running or killed process
        if isinstance(rec, dict):
            out.append(rec)
    return out


def collect(target: Path) -> dict[str, Any]:
    """The phases of `target` (a plan root or one run), each with its series, events and media on a shared step axis."""
    if is_plan_root(target):
        rows = plan_rows(target)
        doc = read_json(target / "phases.json") or {}
        title = f"plan {doc.get('plan', target.name)}" + (f" (preset {doc['preset']})" if doc.get("preset") else "")
    elif (target / "metrics.jsonl").exists() or (target / "last.json").exists():
        rows = [{**run_info(target), "name": target.name}]
        title = f"run {target}"
    else:
        raise UserError(f"{target} is neither a run directory (metrics.jsonl) nor a plan's root (phases.json)")
    offset = 0
    phases = []
    for row in rows:
        d = Path(row["dir"])
        metrics = d / "metrics.jsonl"
        series = read_metrics(metrics) if metrics.is_file() else {}
        last = max((s for pts in series.values() for s, _ in pts), default=0)
        steps = row.get("steps") if isinstance(row.get("steps"), int) else last
        phases.append({**row, "offset": offset, "series": series, "events": _jsonl(d / "events.jsonl"),
                       "media": _jsonl(d / "media.jsonl"), "length": max(steps or 0, last)})
        offset += max(steps or 0, last)
    return {"title": title, "phases": phases, "target": str(target)}


def _panel(title: str, keys: list[str], bands, lines, log: bool, rules, phases) -> str | None:
    present = [k for k in keys if any(k in ph["series"] for ph in phases)]
    if not present:
        return None
    fig, ax = plt.subplots(figsize=(5.2, 3.0))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    values = []
    short = [k.split("/", 1)[-1] for k in present]  # the full key where two would read alike (gen's and disc's lrscale)
    labels = [k if short.count(sk) > 1 else sk for k, sk in zip(present, short)]
    for i, k in enumerate(present):
        first = True
        for ph in phases:
            pts = ph["series"].get(k)
            if not pts:
                continue
            xs = [s + ph["offset"] for s, _ in pts]
            ys = [v for _, v in pts]
            values += [v for v in ys if math.isfinite(v)]
            ax.plot(xs, ys, color=colours[i % len(colours)], lw=1.2, marker="." if len(xs) < 30 else None,
                    label=labels[i] if first else None)
            first = False
    for lo, hi, label in bands:
        top = hi if hi is not None else max(values + [lo]) * 1.05 + 1e-9
        ax.axhspan(lo, top, color="#2da44e", alpha=0.12, label=label)
    for y, label in lines:
        ax.axhline(y, color="#6e7781", ls=":", lw=1, label=label)
    if log and values and all(v > 0 for v in values):
        ax.set_yscale("log")
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    for ph in phases[1:] if len(phases) > 1 else []:
        ax.axvline(ph["offset"], color="#444", ls="--", lw=0.8)
    if len(phases) > 1:
        for ph in phases:
            if ph["state"] in ("skipped", "stopped") and ph["length"] == 0:  # where it would have run, and why not
                ax.axvline(ph["offset"], color="#9a6700", ls=":", lw=1)
                ax.text(ph["offset"], 0.5, f"{ph['name']} {ph['state']}", transform=trans, rotation=90, ha="right",
                        va="center", fontsize=6, color="#9a6700")
            elif ph["length"] > 0:
                ax.text(ph["offset"] + ph["length"] / 2, 1.01, ph["name"], transform=trans, ha="center", va="bottom",
                        fontsize=7, color="#444")
    marks = [e["step"] + ph["offset"] for ph in phases for e in ph["events"]
             if e.get("key", "").split("/", 1)[-1] in rules]
    if marks:
        ax.plot(marks, [0.97] * len(marks), "v", color="#cf222e", ms=6, transform=trans, label="health finding")
    ax.set_title(title, fontsize=10, pad=14 if len(phases) > 1 else 6)
    ax.set_xlabel("step (phases one after another)" if len(phases) > 1 else "step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    return _png_uri(fig)


def _esc(v: Any) -> str:
    return html.escape("-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v))


def _phase_table(phases) -> str:
    head = "<tr><th>phase</th><th>state</th><th>steps</th><th>best</th><th>checkpoint</th><th>why it ended</th>" \
           "<th>health findings</th></tr>"
    rows = []
    for ph in phases:
        end = ph.get("end_reason") or {}
        why = f"{end['kind']}: {end.get('detail', '')}" if end.get("kind") else (ph.get("reason") or "")
        fired = ((ph.get("health") or {}).get("fired") or {})
        if not fired:
            counts: dict[str, int] = {}
            for e in ph["events"]:
                counts[e.get("key", "?")] = counts.get(e.get("key", "?"), 0) + 1
            fired = {k.split("/", 1)[-1]: v for k, v in counts.items()}
        best = "-" if ph.get("best") is None else f"{ph['metric']} {ph['best']:.4g}" + (
            f" (step {ph['best_step']})" if ph.get("best_step") is not None else "")
        ckpt = ph.get("checkpoint") if ph["state"] not in ("skipped", "pending", "stopped") else None
        rows.append(f"<tr><td>{_esc(ph['name'])}</td><td class='state-{ph['state']}'>{_esc(ph['state'])}</td>"
                    f"<td>{_esc(ph.get('steps'))}</td><td>{_esc(best)}</td><td>{_esc(ckpt)}</td><td>{_esc(why)}</td>"
                    f"<td>{_esc(', '.join(f'{k} x{v}' for k, v in sorted(fired.items())) or '-')}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _events_table(phases) -> str:
    rows = [(ph["name"], e) for ph in phases for e in ph["events"]]
    if not rows:
        return "<p class='sub'>No health findings: none of the guide's troubleshooting rules fired.</p>"
    shown = rows[:MAX_EVENTS]
    body = "".join(f"<tr><td>{_esc(name)}</td><td>{_esc(e.get('step'))}</td><td class='rule'>{_esc(e.get('key'))}</td>"
                   f"<td>{_esc(e.get('text'))}</td></tr>" for name, e in shown)
    more = f"<p class='sub'>{len(rows) - len(shown)} more in the phases' events.jsonl.</p>" if len(rows) > MAX_EVENTS else ""
    return f"<table><tr><th>phase</th><th>step</th><th>rule</th><th>finding</th></tr>{body}</table>{more}"


def _evenly(items: list, n: int) -> list:
    if len(items) <= n:
        return items
    idx = sorted({round(i * (len(items) - 1) / (n - 1)) for i in range(n)})
    return [items[i] for i in idx]


def _media_sections(phases) -> str:
    out = []
    for key, title in MEDIA_KEYS:
        items = [(ph, rec) for ph in phases for rec in ph["media"] if rec.get("key") == key]
        if not items:
            continue
        figs = []
        for ph, rec in _evenly(items, PER_KEY):
            path = Path(ph["dir"]) / rec["path"]
            if path.is_file():
                figs.append(f"<figure><img src='{_data_uri(path, 'image/png')}' alt='{_esc(key)}'><figcaption>"
                            f"{_esc(ph['name'])}, step {rec['step']}</figcaption></figure>")
        out.append(f"<h3>{_esc(title)} <span class='sub'>({_esc(key)}, over time)</span></h3>"
                   f"<div class='gallery'>{''.join(figs)}</div>")
    videos = []
    for ph in phases:
        for key in VIDEO_KEYS:
            recs = [r for r in ph["media"] if r.get("key") == key]
            if recs and (Path(ph["dir"]) / recs[-1]["path"]).is_file() and recs[-1]["path"].endswith(".gif"):
                path = Path(ph["dir"]) / recs[-1]["path"]
                videos.append(f"<figure><img src='{_data_uri(path, 'image/gif')}' alt='{_esc(key)}'><figcaption>"
                              f"{_esc(ph['name'])}: {_esc(key)}, step {recs[-1]['step']}</figcaption></figure>")
    if videos:
        out.append("<h3>videos (the latest of each phase)</h3><div class='gallery'>" + "".join(videos) + "</div>")
    return "".join(out) or "<p class='sub'>No samples logged yet.</p>"


def write_report(target: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of `target` (a run directory or a plan's root) to `out` (default: `target`/report.html)."""
    target = Path(target)
    if not target.is_dir():
        raise UserError(f"{target} is not a directory: give a run directory or a phase plan's root")
    data = collect(target)
    phases = data["phases"]
    panels = [p for p in (_panel(*spec, phases) for spec in PANELS) if p]
    curves = "".join(f"<img src='{uri}' alt='curve'>" for uri in panels) or "<p class='sub'>No metrics yet.</p>"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>wubugen report: {_esc(data['title'])}</title>
<style>{CSS}</style></head><body>
<h1>wubugen report: {_esc(data['title'])}</h1>
<div class="sub">{_esc(data['target'])}; green bands and dotted lines are the training guide's targets; red marks are
health findings; dashed lines separate the phases.</div>
<h2>Phases</h2>{_phase_table(phases)}
<h2>Curves</h2><div class="grid">{curves}</div>
<h2>Health findings (the guide's troubleshooting rules)</h2>{_events_table(phases)}
<h2>Samples over time</h2>{_media_sections(phases)}
</body></html>
"""
    out = Path(out) if out is not None else target / REPORT_FILE
    atomic_write_text(out, page)
    return out
