"""The benchmark scripts: row names, the memory probe's trace replay, and a CPU run of the step bench."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_memory  # noqa: E402
import bench_step  # noqa: E402


def test_row_names_parse_into_config_overrides():
    preset, over = bench_step.parse_row("launcher-fp32-b32-t4-motion-autotune-ckpt")
    assert preset == "launcher"
    assert over == {"precision": "fp32", "batch_size": 32, "num_input_frames": 4, "use_wubu_motion_branch": True,
                    "_flow": "cached", "compile": True, "compile_mode": "max-autotune-no-cudagraphs",
                    "activation_checkpointing": True}
    assert bench_step.parse_row("launcher-bf16-nocompile-eager")[1] == {"precision": "bf16", "compile": False,
                                                                        "cuda_graphs": False}


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


def test_step_bench_runs_a_tiny_row_on_the_cpu(tmp_path):
    out = tmp_path / "rows.json"
    subprocess.run([sys.executable, str(BENCH / "bench_step.py"), "--rows", "tiny-fp32", "--steps", "2", "--warmup", "1",
                    "--json", str(out)], check=True, capture_output=True, timeout=300)
    (row,) = json.loads(out.read_text())
    assert row["row"] == "tiny-fp32" and row["s_per_step"] > 0 and row["clips_per_s"] > 0
    assert row["tflop_per_step"] > 0 and not row["cuda_graphs"]
