"""The benchmark scripts: row names, the memory probe's trace replay, CPU runs of the step bench (one process and DDP on
gloo), and the multi-GPU report's tables."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from wubugen.config import build_config

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_memory  # noqa: E402
import ddp_report  # noqa: E402
import roofline  # noqa: E402
import bench_step  # noqa: E402
import wubu_ops  # noqa: E402


def test_row_names_parse_into_config_overrides():
    preset, over = bench_step.parse_row("launcher-fp32-b32-t4-motion-autotune-ckpt")
    assert preset == "launcher"
    assert over == {"precision": "fp32", "batch_size": 32, "num_input_frames": 4, "use_wubu_motion_branch": True,
                    "_flow": "cached", "compile": True, "compile_mode": "max-autotune-no-cudagraphs",
                    "activation_checkpointing": True}
    assert bench_step.parse_row("launcher-bf16-nocompile-eager")[1] == {"precision": "bf16", "compile": False,
                                                                        "cuda_graphs": False}
    assert bench_step.parse_row("launcher-bf16-gbv-static-bucket100")[1] == {
        "precision": "bf16", "_ddp": {"gradient_as_bucket_view": True, "static_graph": True, "bucket_cap_mb": 100}}
    assert bench_step.parse_row("launcher-fp32-notap-mb50")[1] == {"precision": "fp32", "tap_convs": False,
                                                                   "_mem_budget": 0.5}
    assert bench_step.parse_row("launcher-bf16-b4-flat")[1] == {"precision": "bf16", "batch_size": 4, "ddp_comm": "flat"}
    assert bench_step.parse_row("launcher-bf16-b4-cnorm-nocl")[1] == {"precision": "bf16", "batch_size": 4,
                                                                      "compile_norms": True, "channels_last": False}
    assert bench_step.parse_row("launcher-bf16-b4-compile-nobench")[1] == {"precision": "bf16", "batch_size": 4,
                                                                           "compile": True, "_nobench": True}
    assert bench_step.parse_row("launcher-bf16-b4-compile-lean")[1]["_lean"] is True
    assert bench_step.parse_row("launcher-bf16-b4-bl3")[1]["_bench_limit"] == 3


def test_memory_probe_finds_the_live_blocks_at_the_peak():
    trace = [
        {"action": "alloc", "addr": 1, "size": 100},
        {"action": "alloc", "addr": 2, "size": 50},
        {"action": "free_requested", "addr": 1, "size": 100},
        {"action": "free_completed", "addr": 1, "size": 100},
        {"action": "alloc", "addr": 3, "size": 120},  # live: 2, 3 = 170 > 150
        {"action": "free_completed", "addr": 2, "size": 50},
        {"action": "alloc", "addr": 4, "size": 10},
    ]
    best, live = bench_memory.live_at_peak(trace)
    assert best == 170 and sorted(live) == [2, 3]


def test_memory_probe_on_the_cpu_sorts_the_step_peak_into_classes():
    import torch

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(256, 256))  # 256 KiB
    opt = torch.optim.Adam([w])

    def step(i: int) -> None:
        x = torch.randn(64, 256)
        h = (x @ w).relu()  # saved for the backward: an activation
        h.square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    peak, by_class = bench_memory.cpu_peak_by_class(step, warmup=1)
    assert peak == sum(by_class.values())
    assert by_class["parameter"] == 256 * 256 * 4
    assert by_class["optimizer_state"] >= 2 * 256 * 256 * 4  # Adam's two moments, held from the warm-up step on
    assert by_class["gradient"] + by_class["activation"] + by_class["temporary"] + by_class["input"] > 0
    # the real step of a tiny config goes through the same path
    cfg = build_config("tiny", overrides={"precision": "fp32"})
    dev = torch.device("cpu")
    runner = bench_step.build(cfg, dev, False)[2]
    (clip, _), = bench_step.make_inputs(cfg, dev, 1, None)
    peak, by_class = bench_memory.cpu_peak_by_class(lambda i: runner.run([clip], cfg.train.lambda_kl, True), 1)
    assert by_class["parameter"] > 0 and by_class["optimizer_state"] > 0 and peak > by_class["parameter"]


def test_step_bench_runs_a_tiny_row_on_the_cpu(tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(BENCH / "bench_step.py"), "--rows", "tiny-fp32", "--steps", "5",
                           "--warmup", "1", "--json", str(out)],
                          check=True, capture_output=True, text=True, timeout=300)
    (row,) = json.loads(out.read_text())
    cfg = build_config("tiny", overrides={"precision": "fp32"})
    assert (row["row"], row["preset"], row["overrides"]) == ("tiny-fp32", "tiny", {"precision": "fp32"})
    assert row["flow"] is None and row["ddp"] is None and row["world_size"] == 1 and not row["cuda_graphs"]
    assert row["batch_per_gpu"] == cfg.train.batch_size and row["frames"] == cfg.window_frames
    assert row["size"] == f"{cfg.data.image_h}x{cfg.data.image_w}"
    # the median of the timed steps, between their 10th and 90th percentiles; the rate is clips per median step
    assert 0 < row["p10_s"] <= row["s_per_step"] <= row["p90_s"]
    assert row["clips_per_s"] == row["batch_per_gpu"] / row["s_per_step"]
    # no activation checkpointing: the hardware runs exactly the model's FLOPs; no GPU: no memory, peak or MFU figures
    assert row["tflop_per_step"] > 0 and row["hw_tflop_per_step"] == row["tflop_per_step"]
    assert row["params_g"] > 0 and row["params_d"] > 0
    assert math.isnan(row["peak_mem_gib"]) and row["card"] == "cpu" and row["bf16_matmul_tflops"] is None
    assert "mfu" not in row and "compute_s" not in row  # no DDP breakdown in one process
    # the printed line shows the same numbers
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("tiny-fp32 ")]
    assert f"{row['s_per_step'] * 1000:.2f} ms/step" in line and f"{row['clips_per_s']:.1f} clips/s" in line
    assert "card: cpu;" in proc.stdout


def test_step_bench_under_torchrun_reports_the_ddp_breakdown(tmp_path):
    out = tmp_path / "rows.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
                           str(BENCH / "bench_step.py"), "--rows", "tiny-fp32-gbv", "--steps", "2", "--warmup", "1",
                           "--json", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads(out.read_text())
    assert row["world_size"] == 2 and row["clips_per_s"] == 2 * row["batch_per_gpu"] / row["s_per_step"]
    assert row["compute_s"] > 0 and row["allreduce_s"] > 0 and row["ddp"] == {"gradient_as_bucket_view": True}
    n_params = row["params_g"] + row["params_d"]  # every parameter of the tiny preset is trainable
    assert abs(row["allreduce_mb"] - n_params * 4 / 1e6) < 1e-6
    assert "DDP x2: compute" in proc.stdout


def _bench_row(name: str, world: int, batch: int, s_per_step: float, **extra) -> dict:
    return {"row": name, "world_size": world, "batch_per_gpu": batch, "s_per_step": s_per_step,
            "clips_per_s": batch * world / s_per_step, "peak_mem_gib": 1.0, "card": "GPU X", **extra}


def test_scaling_table_divides_by_n_times_the_one_gpu_rate(tmp_path):
    one = [_bench_row("r-b4", 1, 4, 0.100), _bench_row("r-b16", 1, 16, 0.200), {"row": "r-b64", "error": "out of memory"}]
    four = [_bench_row("r-b4", 4, 4, 0.125, compute_s=0.100, allreduce_s=0.001, allreduce_busbw_gbs=300.0),
            _bench_row("r-b16", 4, 16, 0.200, compute_s=0.199, allreduce_s=0.001, allreduce_busbw_gbs=300.0)]
    (tmp_path / "n1.json").write_text(json.dumps(one))
    (tmp_path / "n4.json").write_text(json.dumps(four))
    lines = ddp_report.scaling_table([tmp_path / "n1.json", tmp_path / "n4.json"]).splitlines()
    assert lines[0] == "card: GPU X"
    b4 = [line for line in lines if line.startswith("| r-b4 | 4 | 4 |")][0].split(" | ")
    assert b4[5] == "80.0%" and b4[6] == "100.00" and b4[7] == "25.00" and b4[8] == "1.00 (300)"
    assert [line for line in lines if line.startswith("| r-b16 | 16 | 4 |")][0].split(" | ")[5] == "100.0%"
    assert not any("r-b64" in line for line in lines)


def _metrics(path: Path, rows: list[tuple[int, dict]]) -> Path:
    path.write_text("".join(json.dumps({"step": s, "time": 0.0, "values": v}) + "\n" for s, v in rows))
    return path


def test_curves_table_plot_and_the_first_schedule_difference(tmp_path):
    a = _metrics(tmp_path / "a.jsonl", [(s, {"train/loss_recon": 1.0 / s, "train/lr_gen": 1e-3}) for s in range(1, 41)])
    b = _metrics(tmp_path / "b.jsonl", [(s, {"train/loss_recon": 1.1 / s, "train/lr_gen": 1e-3 if s < 25 else 2e-3})
                                        for s in range(1, 41)])
    text = ddp_report.curves({"one": a, "four": b}, tmp_path / "c.png", block=20)
    assert "until step 25, where train/lr_gen first differs" in text
    row = [line for line in text.splitlines() if line.startswith("| 20 |")][0].split(" | ")
    assert row[-1] == "9.5% |"  # (1.1 - 1.0) / mean(1.0, 1.1) of the block means
    assert (tmp_path / "c.png").stat().st_size > 0
    assert ddp_report.block_means([(1, 2.0), (2, float("nan")), (3, 4.0)], 2) == {2: 2.0, 4: 4.0}


def test_wubu_ops_counts_launching_operators_only():
    """The op counter of benchmarks/wubu_ops.py: views are not counted, hyperbolic levels cost more than flat ones,
    and one level's count is part of the whole."""
    hyper = wubu_ops.count_codes_ops("tiny", 32, 1)
    flat = wubu_ops.count_codes_ops("tiny", 32, 1, {"wubu_euclidean": True})
    assert "view" not in hyper and ("mm" in hyper or "addmm" in hyper)
    assert sum(flat.values()) < sum(hyper.values())
    assert 0 < wubu_ops.level_ops(16, rows=8) < sum(hyper.values())


def test_roofline_counts_the_step_s_flops_and_bytes(capsys):
    """benchmarks/roofline.py: views move nothing, the backward's convolution work exceeds the forward's, twice the
    batch is nearly twice the convolution work and traffic, and the table prints."""
    import torch

    from wubugen.inspect_cmd import random_clip
    from wubugen.train.players import build_players

    def stats(batch):
        cfg = build_config("tiny", overrides={"batch_size": batch, "wubu_dropout": 0.0, "backbone": "plain"})
        torch.manual_seed(0)
        return roofline.count_step(build_players(cfg, torch.device("cpu")), random_clip(cfg, batch))

    one, two = stats(1), stats(2)
    assert "view" not in one and "transpose" not in one
    assert one["convolution"][1] > 0 and one["convolution_backward"][1] > one["convolution"][1]
    # nearly twice: the region FiLM's small convs over the GAAD masks do not grow with the batch
    assert 1.8 < two["convolution"][1] / one["convolution"][1] <= 2
    assert one["convolution"][2] < two["convolution"][2] < 2 * one["convolution"][2]  # weights: once per call
    t = roofline.tensor_bytes([torch.zeros(4, 3), torch.zeros(2, dtype=torch.bfloat16)])
    assert t == 4 * 3 * 4 + 2 * 2
    assert roofline.main(["--preset", "tiny", "--batch", "1", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "floors: matrix work" in out and "convolution" in out
