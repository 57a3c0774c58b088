"""Quality runs on real footage, side by side on one GPU: several `wubugen train` configurations and the plain-VAE peer
(../shared/reference/peer/peer_vae.py) at once, or one after another, then one table of val PSNR/SSIM by step and time.

    python benchmarks/quality_sweep.py --data DIR --out OUT --seconds 480 [--sequential] [--peer CLIPS.npz] \
        --run NAME='flag flag ...' [--run NAME=...]

DIR holds train/ and val/ footage folders (e.g. made by ../shared/reference/peer/prep_gpu_data.py 64 DIR ...). Each run
gets `--video_data_path DIR/train --validation_video_path DIR/val --checkpoint_dir OUT/NAME` and its flags, and is stopped
after --seconds of wall-clock time (set-up and compilation count). Concurrent runs share the GPU, so compare them at equal
steps; `--sequential` gives each the GPU alone (equal GPU time). The peer, when given its clip file, runs for the same
--seconds. Writes OUT/table.md (every validation of every run), OUT/summary.json and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PEER = REPO.parent / "shared" / "reference" / "peer" / "peer_vae.py"
FINAL_MARGIN_S = 15  # wubugen's final validation and samples after --max_seconds
GRACE_S = 120  # past the budget, a run that has not finished is killed


def parse_runs(specs: list[str]) -> dict[str, list[str]]:
    runs = {}
    for spec in specs:
        name, _, flags = spec.partition("=")
        if not name or name in runs:
            raise SystemExit(f"--run {spec!r}: give NAME='flags', names unique")
        runs[name] = shlex.split(flags)
    return runs


def train_command(name: str, flags: list[str], data: Path, out: Path, seconds: float) -> list[str]:
    """wubugen stops itself at the budget (--max_seconds: set-up included), leaving time for its final validation and
    samples; the outer timeout is only a safety net."""
    return [sys.executable, "-m", "wubugen", "train", "--video_data_path", str(data / "train"),
            "--validation_video_path", str(data / "val"), "--checkpoint_dir", str(out / name), "--no-progress",
            "--max_seconds", str(max(1.0, seconds - FINAL_MARGIN_S)), *flags]


def read_vals(metrics: Path, t0: float) -> list[dict]:
    rows = []
    if not metrics.exists():
        return rows
    for line in metrics.read_text().splitlines():
        r = json.loads(line)
        v = r["values"]
        if "val/avg_val_psnr" in v:
            rows.append({"step": r["step"], "t": round(r["time"] - t0), "psnr": v["val/avg_val_psnr"],
                         "ssim": v["val/avg_val_ssim"]})
    return rows


def read_train(metrics: Path, t0: float) -> dict:
    """The last logged training losses (D's and the adversarial weight show whether the GAN is healthy), the training
    speed between the first and last log lines (steps/s) and when the first log line came (s since start)."""
    last: dict = {}
    rows = []
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            r = json.loads(line)
            v = r["values"]
            if "train/loss_recon" in v:
                rows.append((r["step"], r["time"]))
                last = {k.split("/", 1)[1]: v[k] for k in v if k.startswith("train/loss_") or k == "train/gan_weight"}
    if len(rows) >= 2 and rows[-1][1] > rows[0][1]:
        last["steps_per_s"] = round((rows[-1][0] - rows[0][0]) / (rows[-1][1] - rows[0][1]), 2)
        last["first_log_s"] = round(rows[0][1] - t0, 1)
    return last


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--peer", type=Path, default=None, help="the peer's clip file (make_clips.py); omit to skip it")
    ap.add_argument("--peer_kl", default="1e-6")
    ap.add_argument("--peer_script", type=Path, default=PEER, help="peer_vae.py (default: ../shared's)")
    ap.add_argument("--sequential", action="store_true", help="one run at a time (each has the GPU to itself)")
    ap.add_argument("--run", action="append", default=[], metavar="NAME='flags'")
    ap.add_argument("--prebuild", type=int, default=0, metavar="SIZE",
                    help="decode the footage into wubugen's frame cache at SIZE x SIZE before any timer starts, as the "
                         "peer's clip file is made before its own (0: each run decodes inside its budget)")
    args = ap.parse_args(argv)
    runs = parse_runs(args.run)
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"}
    env.setdefault("OMP_NUM_THREADS", "2")
    jobs: list[tuple[str, list[str], Path]] = []
    if args.peer is not None:
        jobs.append(("peer", [sys.executable, str(args.peer_script), str(args.peer), str(args.seconds), args.peer_kl],
                     args.out / "peer.jsonl"))
    for name, flags in runs.items():
        jobs.append((name, train_command(name, flags, args.data, args.out, args.seconds), args.out / f"{name}.log"))

    if args.prebuild:
        for split in ("train", "val"):
            subprocess.run([sys.executable, "-m", "wubugen", "data", "inspect", str(args.data / split), "--image_h",
                            str(args.prebuild), "--image_w", str(args.prebuild)], check=True, env=env, cwd=REPO,
                           stdout=subprocess.DEVNULL)
    starts: dict[str, float] = {}
    codes: dict[str, int] = {}

    def launch(name: str, cmd: list[str], log: Path) -> subprocess.Popen:
        starts[name] = time.time()
        with open(log, "w") as f:
            # both bound themselves; the timeout catches a run that hangs
            wrapped = ["timeout", str(int(args.seconds + GRACE_S)), *cmd]
            return subprocess.Popen(wrapped, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)

    if args.sequential:
        for name, cmd, log in jobs:
            codes[name] = launch(name, cmd, log).wait()
    else:
        procs = {name: launch(name, cmd, log) for name, cmd, log in jobs}
        for name, p in procs.items():
            codes[name] = p.wait()

    summary = {}
    lines = ["| run | step | s since start | val PSNR | val SSIM |", "|---|---|---|---|---|"]
    if args.peer is not None:
        rows = [json.loads(x) for x in (args.out / "peer.jsonl").read_text().splitlines() if x.startswith("{")]
        summary["peer"] = {"rc": codes["peer"], "vals": rows}
        for r in rows:
            lines.append(f"| peer | {r['step']} | {r.get('t', 'end')} | {r['val_psnr']:.2f} | {r['val_ssim']:.3f} |")
    for name in runs:
        vals = read_vals(args.out / name / "metrics.jsonl", starts[name])
        run_summary = args.out / name / "summary.json"  # the run's own, written at its end (final prior samples)
        samples = json.loads(run_summary.read_text()).get("samples") if run_summary.exists() else None
        summary[name] = {"rc": codes[name], "flags": runs[name], "vals": vals, "samples": samples,
                         "train": read_train(args.out / name / "metrics.jsonl", starts[name])}
        for r in vals:
            lines.append(f"| {name} | {r['step']} | {r['t']} | {r['psnr']:.2f} | {r['ssim']:.3f} |")
        if codes[name] != 0:
            lines.append(f"| {name} | failed (exit {codes[name]}) | | | |")
    table = "\n".join(lines)
    (args.out / "table.md").write_text(table + "\n")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(table)
    for name in runs:
        print(name, "last train losses:", json.dumps(summary[name]["train"]), "final samples:",
              json.dumps(summary[name]["samples"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
