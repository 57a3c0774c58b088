"""benchmarks/quality_sweep.py: run specs, the command it gives wubugen, and what it reads back from a run's metrics."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import quality_sweep  # noqa: E402


def test_run_specs_and_the_train_command(tmp_path):
    runs = quality_sweep.parse_runs(["a=--preset tiny --lambda_gan 0", "b="])
    assert runs == {"a": ["--preset", "tiny", "--lambda_gan", "0"], "b": []}
    with pytest.raises(SystemExit):
        quality_sweep.parse_runs(["a=x", "a=y"])
    cmd = quality_sweep.train_command("a", runs["a"], tmp_path / "d", tmp_path / "o", 150)
    assert cmd[cmd.index("--video_data_path") + 1] == str(tmp_path / "d" / "train")
    assert cmd[cmd.index("--checkpoint_dir") + 1] == str(tmp_path / "o" / "a")
    # wubugen stops itself before the budget, leaving time for its final validation and samples
    assert float(cmd[cmd.index("--max_seconds") + 1]) == 150 - quality_sweep.FINAL_MARGIN_S
    assert cmd[-4:] == runs["a"]


def test_validations_and_training_speed_are_read_from_metrics(tmp_path):
    t0 = 1000.0
    rows = [{"step": 100, "time": t0 + 10, "values": {"train/loss_recon": 0.5, "train/gan_weight": 0.1}},
            {"step": 300, "time": t0 + 14, "values": {"train/loss_recon": 0.2, "train/loss_d_total": 0.6}},
            {"step": 300, "time": t0 + 15, "values": {"val/avg_val_psnr": 21.5, "val/avg_val_ssim": 0.7}}]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert quality_sweep.read_vals(metrics, t0) == [{"step": 300, "t": 15, "psnr": 21.5, "ssim": 0.7}]
    train = quality_sweep.read_train(metrics, t0)
    assert train["loss_recon"] == 0.2 and train["loss_d_total"] == 0.6
    assert train["steps_per_s"] == 50.0 and train["first_log_s"] == 10.0
    assert quality_sweep.read_vals(tmp_path / "absent.jsonl", t0) == []
