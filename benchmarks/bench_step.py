"""Time full training steps (D + G forward, both backwards, both optimizer updates) of wubugen on a GPU (or the CPU).

Each row builds the model for a preset plus flags, warms up, then times `--steps` steps with CUDA events (median) on fresh
random uint8 clips (never zeros) already on the device: data loading is out of the timed region, as in the measurement of
the original script (../shared/reference/BASELINES.md). Q-control decisions run every `q_control_interval` steps, as in training.
It reports s/step, clips/s, peak memory, FLOPs per step (torch.utils.flop_counter over one whole step) and model FLOPs
utilisation against this card's measured bf16 matrix rate.

usage:
  python benchmarks/bench_step.py --rows launcher-fp32,launcher-bf16 --json out.json
  python benchmarks/bench_step.py --preset launcher --set batch_size=16 --set precision=bf16
  torchrun --nproc_per_node=2 benchmarks/bench_step.py --rows launcher-bf16     (DDP; rank 0 reports)
Rows are named `<preset>-<precision>[-b<batch>][-t<input frames>][-s<size>][-motion|-motionraw][-compile|-autotune|-nocompile][-eager][-nocl][-ckpt][-maps][-noside][-eagercodes][-clmaps][-splitgn][-notap][-mb<percent>][-flat][-gbv][-static][-bucket<MB>]`
(`-compile`: torch.compile the players; `-nocompile`: eager kernels (the launcher's default now); `-maps`: only the WuBu
 levels' hyperbolic maps compiled; `-noside`: WuBu codes on the current stream; `-eager`: no CUDA-graph capture of the step; `-nocl`: no channels-last frames; `-ckpt`: activation checkpointing;
 `-notap`: fp32 output conv by cuDNN; `-mb50`: torch.compile's activation memory budget 0.5;
 under torchrun, `-gbv`, `-static`, `-bucket<MB>`: DDP's gradient_as_bucket_view, static_graph, bucket_cap_mb).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from wubugen.config import build_config  # noqa: E402
from wubugen.data.batch import ClipBatch  # noqa: E402
from wubugen.train.optim import apply_lr_momentum_scales  # noqa: E402
from wubugen.train.players import build_players  # noqa: E402
from wubugen.train.qcontrol import LRMomentumController  # noqa: E402
from wubugen.train.step import LOSS_KEYS, StepRunner  # noqa: E402


# -lean: inductor settings that cost set-up (a cold compile) and may not pay in the step: timing several launch
# configurations of every pointwise kernel (the 10 s of "Triton config benchmarking" in a 92 s cold set-up on an H100,
# session 10), and a second pass of the scheduler that reorders loops to fuse more
LEAN_INDUCTOR = {"triton.autotune_pointwise": False, "loop_ordering_after_fusion": False}


def _inductor_setting(key: str) -> tuple[object, str]:
    """A dotted inductor setting ("triton.autotune_pointwise") -> (the config object that holds it, its name)."""
    import torch._inductor.config as c

    return (c.triton, key[len("triton."):]) if key.startswith("triton.") else (c, key)


INDUCTOR_DEFAULTS = {k: getattr(*_inductor_setting(k)) for k in LEAN_INDUCTOR}


def parse_row(name: str) -> tuple[str, dict]:
    parts = name.split("-")
    preset, over = parts[0], {}
    for p in parts[1:]:
        if p in ("fp32", "bf16", "fp16"):
            over["precision"] = p
        elif p.startswith("b") and p[1:].isdigit():
            over["batch_size"] = int(p[1:])
        elif p.startswith("t") and p[1:].isdigit():
            over["num_input_frames"] = int(p[1:])
        elif p.startswith("s") and p[1:].isdigit():
            over["image_h"] = over["image_w"] = int(p[1:])
        elif p == "motion":  # flow cached: precomputed flow is fed to the model
            over["use_wubu_motion_branch"] = True
            over["_flow"] = "cached"
        elif p == "motionraw":  # flow computed by the frozen RAFT inside the step
            over["use_wubu_motion_branch"] = True
            over["_flow"] = "uncached"
        elif p == "compile":
            over["compile"] = True
        elif p == "autotune":  # inductor times its Triton conv/matmul kernels against cuDNN/cuBLAS (long compilation)
            over["compile"] = True
            over["compile_mode"] = "max-autotune-no-cudagraphs"
        elif p == "nocompile":  # the launcher preset compiles; this row does not
            over["compile"] = False
        elif p == "eager":  # no CUDA graph capture of the step (it is on by default for one GPU)
            over["cuda_graphs"] = False
        elif p == "ckpt":  # activation checkpointing of the full-resolution stages
            over["activation_checkpointing"] = True
        elif p == "nocl":  # frames stay in the default (contiguous) layout
            over["channels_last"] = False
        elif p == "flat":  # several GPUs: no DDP wrapper, one flat-buffer all-reduce after the (graphed) backward
            over["ddp_comm"] = "flat"
        elif p == "gbv":  # DDP: gradients are views into the all-reduce buckets (no copy into and out of them)
            over.setdefault("_ddp", {})["gradient_as_bucket_view"] = True
        elif p == "static":  # DDP: static_graph (the same parameters get gradients in every step)
            over.setdefault("_ddp", {})["static_graph"] = True
        elif p.startswith("bucket") and p[6:].isdigit():  # DDP: bucket size in MB (default 25)
            over.setdefault("_ddp", {})["bucket_cap_mb"] = int(p[6:])
        elif p == "notap":  # fp32: the generator's output conv stays cuDNN's (not taps: models/tapconv.py)
            over["tap_convs"] = False
        elif p.startswith("mb") and p[2:].isdigit():  # torch.compile's activation memory budget, in percent
            over["_mem_budget"] = int(p[2:]) / 100
        elif p == "maps":  # the WuBu levels' hyperbolic part compiled once (--compile_wubu_maps), the rest eager
            over["compile_wubu_maps"] = True
        elif p == "cnorm":  # the norm -> FiLM -> activation of the plain backbone and D compiled (--compile_norms)
            over["compile_norms"] = True
        elif p == "nocodes":  # no WuBu region codes (--region_codes none): what the codes cost
            over["region_codes"] = "none"
        elif p == "nofilm":  # no GAAD-region FiLM in the generator (--no-gen_region_film)
            over["gen_region_film"] = False
        elif p == "noside":  # the WuBu region codes on the current stream (no --wubu_side_stream)
            over["wubu_side_stream"] = False
        elif p == "clmaps":  # with -compile: the norms' outputs pinned channels-last-3d (--channels_last_maps)
            over["channels_last_maps"] = True
        elif p == "splitgn":  # GroupNorm's statistics in chunks of rows (--split_norm_stats)
            over["split_norm_stats"] = True
        elif p == "lean":  # with -compile: inductor without its set-up-heavy extras (LEAN_INDUCTOR below)
            over["_lean"] = True
        elif p.startswith("bl") and p[2:].isdigit():  # cuDNN's autotuning tries at most N algorithms per conv (10)
            over["_bench_limit"] = int(p[2:])
        elif p == "nobench":  # cuDNN picks conv algorithms by its heuristics, untimed (what its autotuning costs a set-up)
            over["_nobench"] = True
        elif p == "eagercodes":  # with -compile: the WuBu region codes uncompiled on the side stream
            over["compile_region_codes"] = False
        elif p == "cwubu":  # compile only the WuBu stacks (the many small hyperbolic ops), convs stay eager
            over["_cwubu"] = True
        else:
            raise SystemExit(f"unknown row part {p!r} in {name!r}")
    return preset, over


def random_raft_weights(preset: str, over: dict) -> str:
    """RAFT weights with random values in a local file: timing needs the architecture, not the pretrained values."""
    from torchvision.models.optical_flow import raft_large, raft_small

    kind = over.get("optical_flow_net_type") or build_config(preset).model.optical_flow_net_type
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"random_{kind}.pth"
    if not path.exists():
        torch.save((raft_small if kind == "raft_small" else raft_large)(weights=None).state_dict(), path)
    return str(path)


def matmul_peak(device: torch.device) -> float:
    """Measured bf16 matrix rate of this card (TFLOP/s), 8192^3 products on random data."""
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1000)
    return 2 * n ** 3 / statistics.median(times) / 1e12


def build(cfg, device, dist_on: bool, ddp_kw: dict | None = None):
    """The players as the trainer builds them (train/players.py) and their step runner."""
    import torch.distributed

    from wubugen.train.distributed import DistInfo

    dist = DistInfo(torch.distributed.get_rank(), device.index or 0, torch.distributed.get_world_size()) if dist_on else None
    players = build_players(cfg, device, dist, ddp_kwargs=ddp_kw, log=lambda *a: None)
    runner = StepRunner(players)
    return players.model, players.disc, runner, players.opt_g, players.opt_d


def make_inputs(cfg, device, n: int, flow_mode: str | None) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    d = cfg.data
    shape = (cfg.train.batch_size, cfg.window_frames, d.num_channels, d.image_h, d.image_w)
    out = []
    for _ in range(n):
        clip = torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
        flow = None
        if flow_mode == "cached":
            flow = (torch.randn(shape[0], cfg.encoder_frames - 1, 2, d.image_h, d.image_w, device=device) * 2).half()
        out.append((clip, flow))
    return out


def step_flops(runner: StepRunner, disc: torch.nn.Module, inp: tuple, lam: float, recompute: bool = False) -> int:
    """FLOPs of one step's forward and backwards (torch.utils.flop_counter: matmuls and convolutions), counted on
    the plain modules (`disc`: the uncompiled D) in eager mode: a replayed CUDA graph or compiled code dispatches nothing the counter can see.
    Model FLOPs: activation checkpointing's recomputation is not counted (recompute=True counts it: hardware FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    clip, flow = inp
    p = runner.players
    ckpt = [m for m in p.model.modules() if getattr(m, "checkpointing", False)]
    for m in ckpt:
        m.checkpointing = recompute
    saved = p.model_step, p.disc_step, p.frozen_disc
    p.model_step, p.disc_step, p.frozen_disc = p.model, disc, disc
    try:
        with FlopCounterMode(display=False) as fc:
            runner._forward_backward(runner.prepare(clip), runner.prepare_flow(None if flow is None else flow.float()),
                                     lam, True, 1, True)
    finally:
        p.model_step, p.disc_step, p.frozen_disc = saved
        for m in ckpt:
            m.checkpointing = True
        for x in p.g_params + p.d_params:
            x.grad = None
    return fc.get_total_flops()


def _timed(fn, n: int, device) -> list[float]:
    """Seconds per call of fn(i), CUDA events on the GPU (wall clock on the CPU); under torchrun after a barrier, so
    the ranks start together."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
    out = []
    for i in range(n):
        if device.type == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn(i)
            e.record()
            e.synchronize()
            out.append(s.elapsed_time(e) / 1000)
        else:
            t0 = time.perf_counter()
            fn(i)
            out.append(time.perf_counter() - t0)
    return out


def ddp_breakdown(runner: StepRunner, step, n: int, device) -> dict:
    """Where a DDP step's time goes: the same step with DDP's gradient all-reduce switched off (`no_sync` on both
    players: compute alone, every rank at its own pace), and an all-reduce of every trainable gradient as one flat fp32
    buffer with nothing to overlap it (NCCL's raw cost for this model). The row's step time minus compute_s is what
    the overlap of the all-reduce with the backward pass did not hide (plus waiting for the slowest rank)."""
    import torch.distributed as dist

    p = runner.players
    model_ddp, disc_ddp = (getattr(m, "_orig_mod", m) for m in (p.model_step, p.disc_step))  # under compile

    def local_step(i: int) -> None:
        if runner.reducer is not None:  # --ddp_comm flat: the step without its one all-reduce
            reducer, runner.reducer = runner.reducer, None
            try:
                step(i)
            finally:
                runner.reducer = reducer
            return
        with model_ddp.no_sync(), disc_ddp.no_sync():
            step(i)

    for i in range(3):  # the first unsynchronised steps may rebuild DDP's buckets
        local_step(i)
    compute = statistics.median(_timed(local_step, n, device))
    n_params = sum(x.numel() for x in p.g_params + p.d_params)
    flat = torch.randn(n_params, device=device)
    for _ in range(3):
        dist.all_reduce(flat)
    ar = statistics.median(_timed(lambda i: dist.all_reduce(flat), 20, device))
    world = dist.get_world_size()
    # NCCL's "bus bandwidth" of a ring all-reduce: each byte crosses 2(N-1)/N links
    busbw = 2 * (world - 1) / world * flat.numel() * 4 / ar / 1e9
    return {"compute_s": compute, "allreduce_s": ar, "allreduce_mb": n_params * 4 / 1e6, "allreduce_busbw_gbs": busbw}


def time_row(name: str, extra: dict, args, device, dist_rank: int, world: int, peak: float | None) -> dict:
    preset, over = parse_row(name)
    over.update(extra)
    flow_mode = over.pop("_flow", None)
    cwubu = over.pop("_cwubu", False)
    mem_budget = over.pop("_mem_budget", None)
    lean = over.pop("_lean", False)
    # cuDNN times every conv algorithm once per shape and process (the trainer's setting), unless the row says -nobench
    torch.backends.cudnn.benchmark = device.type == "cuda" and not over.pop("_nobench", False)
    # -bl<N>: it times at most N of cuDNN's candidate algorithms per conv, in its heuristics' order (torch's default 10)
    torch.backends.cudnn.benchmark_limit = over.pop("_bench_limit", 10)
    ddp_kw = over.pop("_ddp", None)
    if flow_mode and "flow_weights" not in over and "optical_flow_net_type" not in over:  # RAFT is built either way
        over["flow_weights"] = random_raft_weights(preset, over)
    if flow_mode == "cached":
        over["freeze_flow_net"] = True
    cfg = build_config(preset, overrides=over)
    t = cfg.train
    if (lean or mem_budget is not None) and not (t.compile or t.compile_wubu_maps or t.compile_norms or cwubu):
        raise ValueError("-lean and -mb<N> set torch.compile's options: the row compiles nothing")
    # (a compiled row starts from a clean dynamo: build_players resets it before it compiles the players)
    import torch._functorch.config as functorch_config

    # every row sets these (its own values or the defaults), so none leaks into the rows after it in this process:
    # the min-cut partitioner recomputes cheap ops in the backward to keep saved activations under this fraction
    functorch_config.activation_memory_budget = 1.0 if mem_budget is None else mem_budget
    for key, value in LEAN_INDUCTOR.items():  # -lean's values or inductor's defaults
        setattr(*_inductor_setting(key), value if lean else INDUCTOR_DEFAULTS[key])
    from torch._dynamo.utils import compilation_time_metrics

    compilation_time_metrics.clear()  # this row's compilations only (a recompile in an earlier row's timed steps)
    t_setup = time.perf_counter()
    torch.manual_seed(0)
    model, disc, runner, opt_g, opt_d = build(cfg, device, world > 1, ddp_kw)
    if cwubu:
        from wubugen.models.wubu import WuBuStack

        for m in model.modules():
            if isinstance(m, WuBuStack):
                m.compile()
    q_g = LRMomentumController("gen", 1) if cfg.train.q_controller_enabled else None
    q_d = LRMomentumController("disc", 2) if cfg.train.q_controller_enabled else None
    inputs = make_inputs(cfg, device, 4, flow_mode)
    lam = cfg.train.lambda_kl

    def step(i: int) -> torch.Tensor:
        clip, flow = inputs[i % len(inputs)]
        losses, skip, _, _ = runner.run([ClipBatch(clip, flow.float() if flow is not None else None)], lam, True)
        if q_g is not None and (i + 1) % cfg.train.q_control_interval == 0:
            vals = dict(zip(LOSS_KEYS, losses.tolist()))
            vals["lambda_kl"] = lam
            gs = q_g.decide(vals, opt_g.param_groups[0]["lr"], opt_g.param_groups[0].get("momentum"))
            ds = q_d.decide(vals, opt_d.param_groups[0]["lr"], opt_d.param_groups[0].get("momentum"))
            apply_lr_momentum_scales(opt_g, *gs)
            apply_lr_momentum_scales(opt_d, *ds)
        return losses

    cuda = device.type == "cuda"
    # Peak memory counts from the step after cuDNN's autotuning (step 1) on: the capture of the CUDA graph (after
    # StepRunner.GRAPH_WARMUP_STEPS eager steps) allocates everything its replays use, so it is inside the window.
    reset_at = min(StepRunner.GRAPH_WARMUP_STEPS, args.warmup) - 1
    for i in range(args.warmup):
        step(i)
        if cuda and i == reset_at:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
    if cuda:
        torch.cuda.synchronize()
    setup_s = time.perf_counter() - t_setup
    # where a compiled row's set-up went: dynamo's timed phases (tracing, inductor's lowering and code generation,
    # waiting for Triton's builds, autotuning), each summed over this row's graphs; the timers nest, so they overlap
    compile_phases = {k: round(sum(v), 3) for k, v in compilation_time_metrics.items()}
    times = _timed(step, args.steps, device)
    peak_mem = torch.cuda.max_memory_allocated(device) / 2 ** 30 if cuda else float("nan")
    breakdown = ddp_breakdown(runner, step, args.steps, device) if world > 1 else {}
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts, record_shapes=True) as prof:
            for i in range(5):
                step(i)
            if cuda:
                torch.cuda.synchronize()
        key = "cuda_time_total" if cuda else "cpu_time_total"
        averages = prof.key_averages()
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        (Path(args.profile) / f"{name}.txt").write_text(averages.table(sort_by=key, row_limit=60))
        if cuda:  # every kernel's own GPU time per step, for summing by kind (convolution, fused elementwise, ...)
            lines = ["name\tcalls_per_step\tself_ms_per_step"]
            for ev in sorted(averages, key=lambda ev: -ev.self_device_time_total):
                if ev.self_device_time_total > 0:
                    lines.append(f"{ev.key[:160]}\t{ev.count / 5:g}\t{ev.self_device_time_total / 5e3:.4f}")
            (Path(args.profile) / f"{name}.kernels.tsv").write_text("\n".join(lines) + "\n")
            by_shape = prof.key_averages(group_by_input_shape=True)
            (Path(args.profile) / f"{name}.shapes.txt").write_text(by_shape.table(sort_by=key, row_limit=80,
                                                                                  max_name_column_width=40,
                                                                                  max_shapes_column_width=120))
    flops = step_flops(runner, disc, inputs[0], lam)
    hw_flops = step_flops(runner, disc, inputs[0], lam, recompute=True) if cfg.train.activation_checkpointing else flops
    med = statistics.median(times)
    b = cfg.train.batch_size * world
    row = {
        "row": name, "preset": preset, "overrides": {k: v for k, v in over.items()}, "flow": flow_mode, "ddp": ddp_kw,
        "world_size": world, "batch_per_gpu": cfg.train.batch_size, "frames": cfg.window_frames,
        "size": f"{cfg.data.image_h}x{cfg.data.image_w}", "s_per_step": med, "clips_per_s": b / med,
        "p10_s": sorted(times)[len(times) // 10], "p90_s": sorted(times)[(9 * len(times)) // 10],
        "peak_mem_gib": peak_mem, "setup_s": setup_s, "cuda_graphs": bool(runner._graphs),  # steps actually replayed (flow computed in the step stays eager)
        "reserved_gib": torch.cuda.memory_reserved(device) / 2 ** 30 if cuda else float("nan"),
        "params_g": sum(p.numel() for p in model.parameters()),
        "params_d": sum(p.numel() for p in disc.parameters()),
        "tflop_per_step": flops / 1e12 if flops else None,
        "hw_tflop_per_step": hw_flops / 1e12 if hw_flops else None,
    }
    if compile_phases:
        row["compile_phases_s"] = compile_phases
    row.update(breakdown)
    if flops and peak:
        row["achieved_tflops"] = flops / med / 1e12  # per GPU
        row["mfu"] = row["achieved_tflops"] / peak
    model = disc = runner = inputs = step = None  # free this row's GPU memory (the closure holds them too)
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="launcher-fp32,launcher-bf16", help="comma-separated row names")
    ap.add_argument("--set", action="append", default=[], help="extra option for every row: name=value")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--json", default=None, help="write all rows here")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--profile", default=None, help="write a torch.profiler table per row into this folder")
    args = ap.parse_args()
    extra = dict(kv.split("=", 1) for kv in args.set)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if args.device == "auto":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if torch.cuda.is_available() else torch.device("cpu")
    else:
        device = torch.device(args.device)
    if world > 1:
        import torch.distributed as dist

        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    peak = matmul_peak(device) if device.type == "cuda" else None
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows = []
    for name in [r for r in args.rows.split(",") if r]:
        try:
            row = time_row(name, extra, args, device, rank, world, peak)
        except torch.OutOfMemoryError:
            row = {"row": name, "error": "out of memory"}
            gc.collect()
            torch.cuda.empty_cache()
        except Exception as err:  # noqa: BLE001 - one failing row must not lose the others
            traceback.print_exc()  # the whole story on stderr; the row keeps the one-line summary
            row = {"row": name, "error": f"{type(err).__name__}: {err}"[:400]}
        row["card"] = card
        row["torch"] = torch.__version__
        row["bf16_matmul_tflops"] = peak
        rows.append(row)
        if rank == 0:
            if "error" in row:
                print(f"{name:<34} {row['error']}", flush=True)
            else:
                mfu = f"{100 * row['mfu']:.1f}%" if row.get("mfu") is not None else "-"
                tf = f"{row['tflop_per_step']:.3f}" if row.get("tflop_per_step") else "-"
                print(f"{name:<34} {row['s_per_step'] * 1000:8.2f} ms/step {row['clips_per_s']:9.1f} clips/s "
                      f"{row['peak_mem_gib']:7.2f} GiB  {tf} TFLOP/step  MFU {mfu}  set-up {row['setup_s']:.0f} s"
                      f"{'  graphs' if row['cuda_graphs'] else ''}", flush=True)
                if "compute_s" in row:
                    print(f"{'':<34} DDP x{world}: compute {row['compute_s'] * 1000:.2f} ms, exposed all-reduce "
                          f"{(row['s_per_step'] - row['compute_s']) * 1000:.2f} ms; all-reduce of {row['allreduce_mb']:.0f} MB "
                          f"alone {row['allreduce_s'] * 1000:.2f} ms ({row['allreduce_busbw_gbs']:.0f} GB/s bus)", flush=True)
        if "error" in row and device.type == "cuda" and row["error"] != "out of memory":
            break  # CUDA state may be unusable after a failed capture
    if rank == 0:
        print(f"card: {card}; torch {torch.__version__}; bf16 matmul {peak and round(peak)} TFLOP/s; world {world}")
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()


if __name__ == "__main__":
    main()
